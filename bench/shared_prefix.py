"""GRPO and DPO scoring with each distinct prompt run once (`train.shared_prefix`, backends/trl/shared_prefix.py),
side by side with TRL's own (the same trainer with `shared_prefix.unshared`).

GRPO: the default job's trainer (`aligntune train`: SmolLM2-135M-Instruct with a LoRA adapter, bf16 where the CPU
has it)
scores a batch shaped like its steps: 4 arith prompts x 4 completions of 32 tokens (a third of them ending after 25),
rows shuffled as TRL shuffles them. Timed, alternating in one process, median of `--reps` after a warm-up:
- the policy's forward+backward (log-probs and entropies, a GRPO-like loss on them), the loss's phase;
- a no-grad scoring pass, as the reference's or old policy's log-probs are.
Also printed: how far the two sides' log-probs and gradients are apart (they compute the same function and round
differently in bf16; fp32 equality is tests/backends/trl/test_shared_prefix.py's).
DPO: bench/precision_speed.py's DPO job (SmolLM2 full weights, the shipped prefs_chat pairs, batch 4): one batch's
loss, the policy's forward with its backward and the reference model's no-grad forward.

Run: .venv/bin/python bench/shared_prefix.py [--reps 5] [-- extra overrides, e.g. model.dtype=fp32]
Writes bench/results/shared_prefix.json. Target: the shared form no slower than TRL's on either pass.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

from common import Interference, finish, interference_row

PROMPTS, GROUP, TOKENS = 4, 4, 32


def batch(job):
    import torch

    from aligntune.data.loading import load
    from aligntune.evaluation import format_prompt

    tok = job.trainer.processing_class
    train, _ = load(job.config.dataset, job.config.seed, "prompts")
    tok.padding_side = "left"
    enc = tok([format_prompt(tok, train[i]["prompt"]) for i in range(PROMPTS)], return_tensors="pt", padding=True,
              add_special_tokens=False)
    g = torch.Generator().manual_seed(0)
    completions = torch.randint(100, 5000, (PROMPTS * GROUP, TOKENS), generator=g)
    ends = torch.ones_like(completions)
    ends[::3, 25:] = 0
    order = torch.randperm(PROMPTS * GROUP, generator=g)
    ids = torch.cat([enc["input_ids"].repeat_interleave(GROUP, 0), completions], 1)[order]
    mask = torch.cat([enc["attention_mask"].repeat_interleave(GROUP, 0), ends], 1)[order]
    return ids, mask


def _timed(sides: dict, reps: int, passes: dict) -> tuple[dict, dict]:
    """Each pass of `passes` ({name: fn() -> (seconds, result)}) under each side's context, alternating sides, median
    of `reps` after a warm-up; and each side's last results."""
    import statistics

    times = {f"{side}_{name}": [] for side in sides for name in passes}
    last = {}
    for rep in range(reps + 1):
        for side, context in sides.items():
            with context():
                for name, run in passes.items():
                    seconds, result = run()
                    if rep:
                        times[f"{side}_{name}"].append(seconds)
                    last[(side, name)] = result
    return {f"{k}_s": statistics.median(v) for k, v in times.items()}, last


def _train_pass(params, loss):
    """A timed forward+backward: `loss()` -> (the loss, what to keep of the forward); the pass returns (seconds,
    (what was kept, the flattened gradient))."""
    import torch

    def run():
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        value, kept = loss()
        value.backward()
        return time.perf_counter() - t0, (kept, torch.cat([p.grad.flatten().float() for p in params]))

    return run


def _rel(a, b) -> float:
    return float((a - b).norm() / a.norm())


def grpo(reps: int, extra: list[str]) -> dict:
    """The default job's trainer scoring a batch shaped like its steps (policy with backward; no-grad scoring)."""
    import torch

    from aligntune.backends.trl.shared_prefix import unshared
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(overrides=["max_steps=1", "eval.after_training=false", *extra],
                            output_dir=tempfile.mkdtemp(prefix="aligntune-bench-"))
    trainer, model = job.trainer, job.trainer.model
    score = trainer._get_per_token_logps_and_entropies
    ids, mask = batch(job)
    keep = mask[:, -TOKENS:]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def loss():
        logps, entropies, _ = score(model, ids, mask, TOKENS, compute_entropy=True)
        return (logps * keep).sum() / keep.sum() + 0.01 * (entropies * keep).sum() / keep.sum(), logps.detach()

    train_pass = _train_pass(params, loss)

    def no_grad_pass():
        t0 = time.perf_counter()
        with torch.no_grad():
            logps = score(model, ids, mask, TOKENS)[0]
        return time.perf_counter() - t0, logps

    medians, last = _timed({"trl": lambda: unshared(trainer), "shared": contextlib.nullcontext}, reps,
                           {"train": train_pass, "score": no_grad_pass})
    scored = keep.bool()
    (a, ga), (b, gb) = last[("trl", "train")], last[("shared", "train")]
    sa, sb = last[("trl", "score")], last[("shared", "score")]
    return {"shape": f"{ids.shape[0]} rows x ({ids.shape[1] - TOKENS} + {TOKENS}) tokens", "precision": job.precision,
            "lora": bool(job.config.model.lora.enabled), **medians,
            "logp_max_abs_diff": float((a - b)[scored].abs().max()), "logp_max_abs": float(a[scored].abs().max()),
            "scoring_logp_max_abs_diff": float((sa - sb)[scored].abs().max()), "grad_rel_diff": _rel(ga, gb)}


def dpo(reps: int, extra: list[str]) -> dict:
    """precision_speed's DPO job (SmolLM2 full weights, prefs_chat pairs, batch 4): one batch's loss (policy with
    backward, the reference model's no-grad forward) and backward."""
    from aligntune.backends.trl.shared_prefix import unshared
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(overrides=["algorithm=dpo", "dataset=prefs_chat", "batch_size=4", "algorithm.max_length=256",
                                       "model.lora.enabled=false", "max_steps=1", "eval.after_training=false",
                                       "train.shared_prefix=true", *extra],
                            output_dir=tempfile.mkdtemp(prefix="aligntune-bench-"))
    trainer, model = job.trainer, job.trainer.model
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def loss():
        value = trainer.compute_loss(model, inputs)
        return value, value.detach()

    train_pass = _train_pass(params, loss)

    medians, last = _timed({"trl": lambda: unshared(trainer), "shared": contextlib.nullcontext}, reps,
                           {"train": train_pass})
    (la, ga), (lb, gb) = last[("trl", "train")], last[("shared", "train")]
    rows, length = inputs["input_ids"].shape
    prompt = int(inputs["completion_mask"].float().argmax(1).min())
    return {"shape": f"{rows} rows x {length} tokens, shortest prompt {prompt}", "precision": job.precision,
            "lora": bool(job.config.model.lora.enabled), **medians, "loss": float(la),
            "loss_abs_diff": float((la - lb).abs()), "grad_rel_diff": _rel(ga, gb)}


def measure(reps: int, extra: list[str]) -> dict:
    watch = Interference()
    result = {"reps": reps, "overrides": extra, "grpo": grpo(reps, extra), "dpo": dpo(reps, extra)}
    result["other_cpu_cores"] = round(watch.cores(), 3)
    return result


def rows(result: dict) -> list[dict]:
    out = []
    for algo, passes in (("grpo", (("train", "forward+backward"), ("score", "no-grad scoring"))),
                         ("dpo", (("train", "loss forward+backward (policy and reference)"),))):
        r = result[algo]
        shape = f"{algo.upper()} {r['shape']}, {r['precision']}{', LoRA' if r['lora'] else ''}"
        for kind, what in passes:
            ratio = r[f"trl_{kind}_s"] / r[f"shared_{kind}_s"]
            out.append({"name": f"{shape}: {what} TRL / shared", "target": ">= 1", "ok": ratio >= 0.97,
                        "value": f"{r[f'trl_{kind}_s']:.3f} / {r[f'shared_{kind}_s']:.3f} s = {ratio:.2f}x"})
    g, d = result["grpo"], result["dpo"]
    out.append({"name": "GRPO log-probs, max |TRL - shared| (forward+backward / scoring)", "target": "", "ok": None,
                "value": f"{g['logp_max_abs_diff']:.2e} / {g['scoring_logp_max_abs_diff']:.2e} of {g['logp_max_abs']:.1f}"})
    out.append({"name": "gradient, |TRL - shared| / |TRL| (GRPO / DPO)", "target": "", "ok": None,
                "value": f"{g['grad_rel_diff']:.2e} / {d['grad_rel_diff']:.2e}"})
    out.append({"name": "DPO loss, |TRL - shared|", "target": "", "ok": None,
                "value": f"{d['loss_abs_diff']:.2e} of {d['loss']:.3f}"})
    return out + [interference_row("scoring runs", result["other_cpu_cores"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="config overrides for the trainer (after --)")
    args = parser.parse_args()
    return finish("shared_prefix", measure(args.reps, args.extra), rows)


if __name__ == "__main__":
    raise SystemExit(main())
