"""SmolLM2-135M training speed: aligntune's `model.dtype=auto` against TRL's defaults, and the roofline.

Rows 4-6 of the benchmark suite (issue #11), measured side by side in one run:

4. GRPO on SmolLM2-135M-Instruct (the shipped arith task, correctness reward; full weights, no LoRA, so
   the plain TRL sides train the identical model): step time,
   generated tokens/s and peak RSS of
   - aligntune (`create_rl_trainer(model=smollm2_135m, dataset=arith, ...)`, `model.dtype=auto`),
   - plain TRL with its defaults: the same `GRPOConfig` kwargs minus the precision and checkpointing
     fields, so TRL's own defaults apply (1.16: `bf16=True` autocast whenever fp16 is off, and
     `gradient_checkpointing=True`),
   - plain TRL with `bf16=False` (fp32; TRL's default gradient checkpointing kept).
5. DPO on SmolLM2-135M (the shipped prefs_chat pairs): the same three sides.
6. Roofline: this machine's matmul GFLOP/s in fp32 and bf16 (1024x1024, fastest of 20), and the share of the
   peak *of the dtype the aligntune step computes in* (bf16 weights or bf16 autocast: the bf16 peak; else fp32)
   that one aligntune GRPO / DPO step achieves (FLOPs counted as 2 x parameters per generated token
   and 6 x parameters per trained token).

Every side runs in a fresh process forked after the heavy imports, the sides alternate (A B C A B C), and the
first step of each run is warm-up (not timed). Step time = median of the timed steps over all repetitions. The
second step still pays one-time costs (a full-weight optimizer phase 0.70 s against 0.17-0.32 s from the third on,
on a Zen 5), so the default is 6 steps: with 3 the median is the mean of steps 2 and 3 (bench/run_all.py keeps 3
for its 15-minute budget).

`--variant NAME:KEY=VALUE[,KEY=VALUE]` adds an aligntune side with those overrides (e.g.
`off:train.keep_freed_memory=false`), run in the same alternation, with its step time against aligntune's own: a
switch measured side by side with its default.

Run: .venv/bin/python bench/precision_speed.py [--steps 6] [--reps 2] [--model smollm2_135m] [--variant ...]
Writes bench/results/precision_speed.json. Target: aligntune >= 1.8x the throughput of TRL's defaults.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time

from common import Interference, finish, interference_row

TARGET = 1.8
SIDES = ("aligntune", "trl_default", "trl_fp32")
JOBS = {
    "grpo": ["dataset=arith", "batch_size=2", "group_size=4", "algorithm.max_completion_length=32",
             "algorithm.beta=0.01", "algorithm.temperature=0.7", "model.lora.enabled=false"],
    "dpo": ["dataset=prefs_chat", "algorithm=dpo", "batch_size=4", "algorithm.max_length=256", "model.lora.enabled=false"],
}
PRECISION_FIELDS = ("bf16", "fp16", "gradient_checkpointing", "activation_checkpointing")


def step_clock():
    """A TrainerCallback recording each optimizer step's wall time and the trainer's token counter."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.t0 = [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.tokens.append(logs["num_tokens"])

    return StepClock()


def job_overrides(algorithm: str, steps: int, model: str) -> list[str]:
    return [*JOBS[algorithm], f"max_steps={steps}", f"model={model}"]


def build(algorithm: str, side: str, steps: int, out_dir: str, model: str, extra: tuple[str, ...] = ()):
    """The trainer of one side (`extra`: a variant's overrides of the aligntune side)."""
    from aligntune import preflight

    overrides = [*job_overrides(algorithm, steps, model), *extra]
    run = preflight.load(overrides)[0]
    if side.startswith("aligntune"):
        from aligntune.core.backend_factory import create_rl_trainer

        job = create_rl_trainer(overrides=overrides, output_dir=out_dir)
        return job.trainer
    import trl

    from aligntune.backends.trl.dpo import dpo_args
    from aligntune.backends.trl.grpo import grpo_args
    from aligntune.data.loading import load
    from aligntune.models.loading import load_model, load_tokenizer
    from aligntune.rewards.registry import bind

    # The plain side reads the same rows and rewards (aligntune's loaders) and builds TRL's trainer by hand with the
    # same config kwargs, minus the precision/checkpointing fields (TRL's defaults apply) or with bf16=False.
    kwargs = (grpo_args if algorithm == "grpo" else dpo_args)(run, out_dir, has_eval=False)
    for name in PRECISION_FIELDS:
        kwargs.pop(name, None)
    if side == "trl_fp32":
        kwargs["bf16"] = False

    tokenizer, model = load_tokenizer(run.model), load_model(run.model)
    if algorithm == "grpo":
        train, _ = load(run.dataset, run.seed, "prompts")
        rewards = [bind(name, spec.fn or name, spec.args) for name, spec in run.rewards.items()]
        return trl.GRPOTrainer(model=model, reward_funcs=rewards, args=trl.GRPOConfig(**kwargs), train_dataset=train,
                               processing_class=tokenizer)
    train, _ = load(run.dataset, run.seed, "preferences")
    return trl.DPOTrainer(model=model, args=trl.DPOConfig(**kwargs), train_dataset=train, processing_class=tokenizer)


def worker(algorithm: str, side: str, steps: int, model: str, extra: tuple[str, ...] = ()) -> dict:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aligntune-bench-") as out_dir:
        trainer = build(algorithm, side, steps, out_dir, model, extra)
        setup_s = time.perf_counter() - start
        clock = step_clock()
        trainer.add_callback(clock)
        trainer.train()
        history = trainer.state.log_history
        params = sum(p.numel() for p in {id(p): p for p in trainer.model.parameters()}.values())
        dtype = str(next(trainer.model.parameters()).dtype)
    lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
    # aligntune's phase timings (aligntune.run.phases), the first logged step (warm-up) left out
    timings = [{k: v for k, v in h.items() if k.startswith("timing/")} for h in history if "timing/other" in h][1:]
    return {"side": side, "timings": timings, "setup_s": setup_s, "step_s": clock.times[1:], "num_tokens": clock.tokens, "completion_lengths": lengths,
            "params": params, "weights": dtype, "bf16_autocast": bool(trainer.args.bf16),
            "checkpointing": bool(getattr(trainer.args, "gradient_checkpointing", False)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_gflops(dtype_name: str, n: int = 1024, repeats: int = 20) -> float:
    """The machine's matmul peak for `dtype_name`: the fastest of `repeats` 1024^2 products after three warm-ups (a
    peak is a best case; the median of a few short products read 35-50% low on this VM)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def run_side(algorithm: str, side: str, steps: int, model: str, timeout: float, extra: tuple[str, ...] = ()) -> dict:
    """One run of one side in a forked process; a run still going after `timeout` s is stopped and recorded."""
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        return pool.apply_async(worker, (algorithm, side, steps, model, extra)).get(timeout)
    except multiprocessing.TimeoutError:
        return {"side": side, "timed_out": timeout}
    finally:
        pool.terminate()


def measure(steps: int = 3, reps: int = 2, model: str = "smollm2_135m", timeout: float = 240,
            sides: tuple[str, ...] = SIDES, algorithms: tuple[str, ...] = tuple(JOBS),
            variants: dict[str, tuple[str, ...]] | None = None) -> dict:
    """`variants`: {name: overrides}, each an extra aligntune side `aligntune[name]` run after aligntune's."""
    import trl  # noqa: F401  # the heavy imports, once; every run forks from here

    from aligntune import preflight
    from aligntune.models.loading import compute_precision, resolve_device

    watch, result = Interference(), {"steps": steps, "reps": reps, "target": TARGET, "model": model}
    composed = preflight.load(job_overrides(algorithms[0], steps, model))[0]
    result["auto_resolves_to"] = compute_precision(composed.model, resolve_device("auto"))
    variants = variants or {}
    extras = {f"aligntune[{name}]": tuple(overrides) for name, overrides in variants.items()}
    sides = (*sides[:sides.index("aligntune") + 1], *extras, *sides[sides.index("aligntune") + 1:]) \
        if "aligntune" in sides else (*sides, *extras)
    result["sides_run"], result["algorithms"], result["variants"] = list(sides), list(algorithms), variants
    for algorithm in algorithms:
        runs = []
        for _ in range(reps):
            for side in sides:
                runs.append(run_side(algorithm, side, steps, model, timeout, extras.get(side, ())))
        measured = {}
        for side in sides:
            mine = [r for r in runs if r["side"] == side and "timed_out" not in r]
            if not mine:  # no run finished: a lower bound, (timeout - aligntune's set-up time) / steps per step
                setup = max(r.get("setup_s", 0) for r in runs if r["side"] == "aligntune")
                measured[side] = {"step_s": (timeout - setup) / steps, "lower_bound": True, "timeout_s": timeout}
                continue
            step = statistics.median(t for r in mine for t in r["step_s"])
            per_step_tokens = statistics.median((r["num_tokens"][-1] - r["num_tokens"][0]) / max(1, len(r["num_tokens"]) - 1)
                                                for r in mine) if all(len(r["num_tokens"]) > 1 for r in mine) else None
            info = {"step_s": step, "peak_rss_mb": max(r["peak_rss_mb"] for r in mine), "weights": mine[0]["weights"],
                    "bf16_autocast": mine[0]["bf16_autocast"], "checkpointing": mine[0]["checkpointing"],
                    "trained_tokens_per_step": per_step_tokens, "params": mine[0]["params"]}
            if algorithm == "grpo" and "timed_out" not in mine[0]:
                run = preflight.load(job_overrides(algorithm, steps, model))[0]
                completions = run.train.batch_size * run.algorithm.group_size
                generated = completions * statistics.median(x for r in mine for x in r["completion_lengths"])
                info["generated_tokens_per_step"] = generated
                info["generated_tokens_per_s"] = generated / step
            measured[side] = info
        result[algorithm] = {"sides": measured, "runs": runs,
                             **{f"speedup_vs_{s}": measured[s]["step_s"] / measured["aligntune"]["step_s"]
                                for s in ("trl_default", "trl_fp32", *extras) if s in measured and "aligntune" in measured}}
    result["matmul_gflops"] = {name: matmul_gflops(name) for name in ("float32", "bfloat16")}
    for algorithm in algorithms:
        result[algorithm]["phases"] = phase_table(result[algorithm], result["matmul_gflops"])
    for algorithm in algorithms:
        a = result[algorithm]["sides"]["aligntune"]
        flops = 6 * a["params"] * (a["trained_tokens_per_step"] or 0) + 2 * a["params"] * a.get("generated_tokens_per_step", 0)
        if algorithm == "grpo":  # the reference model's forward for the KL term
            flops += 2 * a["params"] * (a["trained_tokens_per_step"] or 0)
        result[algorithm]["achieved_gflops"] = flops / a["step_s"] / 1e9
        dtype = "bfloat16" if "bfloat16" in a["weights"] or a["bf16_autocast"] else "float32"
        result[algorithm]["compute_dtype"] = dtype
        result[algorithm]["fraction_of_peak"] = result[algorithm]["achieved_gflops"] / result["matmul_gflops"][dtype]
    result["other_cpu_cores"] = round(watch.cores(), 3)
    return result


def phase_table(r: dict, peaks: dict) -> list[dict]:
    """aligntune's step split into its phases: median seconds, share of the step, and the phase's compute rate
    against the matmul peak of the dtype it runs in (FLOPs: 2 x params per token forward, 6 x forward+backward;
    generation also as weight bytes read per second, since decoding one token reads every weight once)."""
    runs = [x for x in r["runs"] if x["side"] == "aligntune" and x.get("timings")]
    a = r["sides"].get("aligntune", {})
    if not runs or "params" not in a:
        return []
    steps = [t for x in runs for t in x["timings"]]
    phases = {k.removeprefix("timing/"): statistics.median(t.get(k, 0.0) for t in steps) for k in steps[0]}
    total = sum(phases.values())
    dtype = "bfloat16" if "bfloat16" in a["weights"] or a["bf16_autocast"] else "float32"
    params, trained = a["params"], a["trained_tokens_per_step"] or 0
    flops = {"forward_backward": 6 * params * trained, "logprobs": 2 * params * trained,
             "generation": 2 * params * a.get("generated_tokens_per_step", 0)}
    out = []
    for phase, seconds in phases.items():
        row = {"phase": phase, "seconds": seconds, "share": seconds / total if total else 0.0}
        if flops.get(phase) and seconds > 0:
            row["gflops"] = flops[phase] / seconds / 1e9
            row["of_peak"] = row["gflops"] / peaks[dtype]
        if phase == "generation" and seconds > 0 and a.get("generated_tokens_per_step"):
            bytes_per = 2 if dtype == "bfloat16" else 4
            completions = a["generated_tokens_per_step"] / max(1, statistics.median(
                x for y in runs for x in y["completion_lengths"]))
            decode_steps = a["generated_tokens_per_step"] / completions  # tokens per completion: one weight read each
            row["weight_gb_per_s"] = params * bytes_per * decode_steps / seconds / 1e9
        out.append(row)
    return out


def rows(result: dict) -> list[dict]:
    out = [{"name": "model.dtype=auto on this machine", "value": result["auto_resolves_to"], "target": "", "ok": None}]
    for algorithm in result["algorithms"]:
        r = result[algorithm]
        for side in result["sides_run"]:
            s = r["sides"][side]
            if s.get("lower_bound"):
                out.append({"name": f"{algorithm.upper()} {side}", "target": "", "ok": None,
                            "value": f"no run finished in {s['timeout_s']:.0f} s: >= {s['step_s']:.0f} s/step"})
                continue
            setting = f"{s['weights'].replace('torch.', '')} weights{', bf16 autocast' if s['bf16_autocast'] else ''}" \
                      f"{', grad ckpt' if s['checkpointing'] else ''}"
            extra = f", {s['generated_tokens_per_s']:.0f} gen tok/s" if "generated_tokens_per_s" in s else ""
            out.append({"name": f"{algorithm.upper()} {side} ({setting})", "target": "", "ok": None,
                        "value": f"{s['step_s']:.2f} s/step{extra}, {s['peak_rss_mb'] / 1024:.2f} GiB"})
        variants = [(side, f"{side} ({','.join(result['variants'][side.removeprefix('aligntune[').removesuffix(']')])})", None)
                    for side in result["sides_run"] if side.startswith("aligntune[")]
        for other, label, target in (("trl_default", "TRL defaults", TARGET), ("trl_fp32", "TRL fp32", None), *variants):
            if f"speedup_vs_{other}" not in r:
                continue
            bound = ">= " if r["sides"][other].get("lower_bound") else ""
            ratio = r[f"speedup_vs_{other}"]
            out.append({"name": f"{algorithm.upper()} speed-up vs {label}", "value": f"{bound}{ratio:.2f}x",
                        "target": f">= {target}x" if target else "", "ok": ratio >= target if target else None})
    g = result["matmul_gflops"]
    out.append({"name": "matmul 1024^2 fp32 / bf16", "value": f"{g['float32']:.0f} / {g['bfloat16']:.0f} GFLOP/s",
                "target": "", "ok": None})
    for algorithm in result["algorithms"]:
        dtype = result[algorithm]["compute_dtype"]
        short = {"bfloat16": "bf16", "float32": "fp32"}[dtype]
        out.append({"name": f"{algorithm.upper()} step ({short}), share of the {short} matmul peak", "target": "",
                    "ok": None, "value": f"{result[algorithm]['fraction_of_peak']:.1%} "
                                         f"({result[algorithm]['achieved_gflops']:.1f} of {g[dtype]:.0f} GFLOP/s)"})
    for algorithm in result["algorithms"]:
        for p in result[algorithm].get("phases", []):
            rate = f", {p['gflops']:.0f} GFLOP/s = {p['of_peak']:.0%} of peak" if "gflops" in p else ""
            rate += f", weights read {p['weight_gb_per_s']:.1f} GB/s" if "weight_gb_per_s" in p else ""
            out.append({"name": f"  {algorithm.upper()} aligntune phase {p['phase']}", "target": "", "ok": None,
                        "value": f"{p['seconds']:.3f} s ({p['share']:.0%}){rate}"})
    out.append(interference_row(f"{result['model']} runs", result["other_cpu_cores"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is warm-up; the "
                        "second still carries one-time costs, so 3 steps understate the steady state)")
    parser.add_argument("--reps", type=int, default=2, help="runs per side (alternating)")
    parser.add_argument("--model", default="smollm2_135m", help="model preset (tiny: a quick check of the script)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per run before it is stopped")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    parser.add_argument("--algorithms", default=",".join(JOBS), help="comma-separated subset of " + ",".join(JOBS))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="an extra aligntune side with these overrides, against aligntune's own (repeatable)")
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        if not name or not overrides or "=" not in overrides:
            parser.error(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        variants[name] = tuple(overrides.split(","))
    result = measure(args.steps, args.reps, args.model, args.timeout, tuple(args.sides.split(",")),
                     tuple(args.algorithms.split(",")), variants)
    return finish('precision_speed', result, rows)


if __name__ == "__main__":
    raise SystemExit(main())
