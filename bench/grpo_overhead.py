"""GRPO overhead: aligntune's training step vs a plain TRL script doing the identical job.

Both sides train the tiny model (`aligntune:tiny`) on the shipped letters data with the
`letter_match` reward, the same seed and the SAME `trl.GRPOConfig` kwargs (taken from
`aligntune.backends.trl.grpo.grpo_args` for `experiment=smoke`); the benchmark checks that both
produce the identical reward trajectory. The aligntune side is
`create_rl_trainer(experiment="smoke", ...).train()`; the plain side builds `trl.GRPOTrainer` by hand.

Every repetition runs in a fresh process, forked from this one after torch/transformers/TRL are
imported (so a repetition costs its training, not 8 s of imports), and the sides alternate
A B A B ... to cancel drift. Per side: the median of TRL's per-step `step_time` (generation, reward,
loss, backward) over all steps of all repetitions, and the median wall time of `trainer.train()`
(which also runs the trainer callbacks).

Two more rows make the ratio interpretable. The noise floor compares each side with itself (odd vs
even repetitions): when it exceeds the target, this machine is too noisy to judge 2% in this run. And
the time inside the loop spent in the code where the sides differ (trainer callbacks and reward
functions, timed directly), aligntune minus plain, as a share of the step: an estimate of the
overhead that does not drown in the noise.

Run: .venv/bin/python bench/grpo_overhead.py [--steps 30] [--reps 10] [--threads 1]
Writes bench/results/grpo_overhead.json. Target: aligntune/plain step time <= 1.02.
"""

from __future__ import annotations

import argparse
import collections
import functools
import multiprocessing
import os
import statistics
import tempfile
import time

from common import Interference, finish, interference_row

TARGET = 1.02
SIDES = ("aligntune", "plain")


# Both sides compute in this precision (the plain side loads fp32 weights and TRL runs no autocast: grpo_args maps
# model.dtype=fp32 to bf16=False), whatever `model.dtype=auto` would pick on this CPU; printed with the results.
DTYPE = "fp32"


def build_aligntune(steps: int, out_dir: str):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(experiment="smoke", max_steps=steps, output_dir=out_dir, **{"model.dtype": DTYPE})
    assert job.precision == DTYPE, job.precision
    return job.trainer, job.train


def build_plain(steps: int, out_dir: str):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from aligntune import preflight
    from aligntune.backends.trl.grpo import grpo_args
    from aligntune.data.sources import SHIPPED_DIR
    from aligntune.models import tiny
    from aligntune.rewards.letters import letter_match

    run = preflight.load(["experiment=smoke", f"max_steps={steps}", f"model.dtype={DTYPE}"])[0]
    model_dir = tiny.resolve("aligntune:tiny")
    dataset = load_dataset("json", data_files=str(SHIPPED_DIR / "letters.jsonl"), split="train").shuffle(seed=run.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert not grpo_args(run, out_dir)["bf16"]
    trainer = GRPOTrainer(model=model, reward_funcs=[letter_match],
                          args=GRPOConfig(**grpo_args(run, out_dir)), train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    return trainer, lambda: trainer.train()  # looked up at call time, so the timing wrapper below applies


def stopwatch(fn, totals: dict, key: str, clock=time.perf_counter):
    """`fn`, adding its time on `clock` (wall by default) to totals[key] on every call."""

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = clock()
        output = fn(*args, **kwargs)
        totals[key] += clock() - t0
        return output

    return timed


def worker(side: str, steps: int, threads: int | None) -> dict:
    """One side, one repetition (in a forked child, its console output discarded)."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # aligntune leaves an explicit thread count alone
        torch.set_num_threads(threads)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    totals = collections.defaultdict(float)
    with tempfile.TemporaryDirectory(prefix="aligntune-bench-") as out_dir:
        trainer, entry = (build_aligntune if side == "aligntune" else build_plain)(steps, out_dir)
        # trainer.train() only (aligntune's job.train() also saves the model); within it, the time spent in the
        # trainer callbacks and the reward functions: the code in the loop where the two sides differ
        trainer.train = stopwatch(stopwatch(trainer.train, totals, "train_s"), totals, "train_cpu_s", time.process_time)
        trainer.callback_handler.call_event = stopwatch(trainer.callback_handler.call_event, totals, "callbacks_s")
        trainer.reward_funcs = [stopwatch(f, totals, "rewards_s") for f in trainer.reward_funcs]
        entry()
    history = trainer.state.log_history
    return {"side": side, **totals, "step_times": [h["step_time"] for h in history if "step_time" in h],
            "rewards": [h["reward"] for h in history if "reward" in h]}


def measure(steps: int = 30, reps: int = 10, threads: int | None = None) -> dict:
    import trl  # noqa: F401  # the heavy imports, once; every repetition forks from here

    watch, runs = Interference(), []
    for _ in range(reps):
        for side in SIDES:  # A B A B ...
            with multiprocessing.get_context("fork").Pool(1) as pool:
                runs.append(pool.apply(worker, (side, steps, threads)))
    sides = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        sides[side] = {"median_step_s": statistics.median(t for r in mine for t in r["step_times"]),
                       "median_train_s": statistics.median(r["train_s"] for r in mine),
                       "median_train_cpu_s": statistics.median(r["train_cpu_s"] for r in mine),
                       "rep_median_step_s": [round(statistics.median(r["step_times"]), 4) for r in mine],
                       "median_hooks_per_step_s": statistics.median((r["callbacks_s"] + r["rewards_s"]) / len(r["step_times"])
                                                                    for r in mine),
                       "train_s": [round(r["train_s"], 3) for r in mine]}
    a, p = sides["aligntune"], sides["plain"]
    pooled = lambda rs: statistics.median(t for r in rs for t in r["step_times"])
    # the same code against itself (odd vs even repetitions): ratios this far from 1 are noise on this machine
    same_side = [pooled(mine[0::2]) / pooled(mine[1::2]) if reps > 1 else float("nan")
                 for mine in ([r for r in runs if r["side"] == s] for s in SIDES)]
    return {"steps": steps, "reps": reps, "target": TARGET, "dtype": DTYPE, "sides": sides,
            "step_ratio": a["median_step_s"] / p["median_step_s"],
            "train_ratio": a["median_train_s"] / p["median_train_s"],
            "train_cpu_ratio": a["median_train_cpu_s"] / p["median_train_cpu_s"], "threads": threads,
            "noise_floor": 1 + max(abs(x - 1) for x in same_side),
            "hooks_extra_fraction": (a["median_hooks_per_step_s"] - p["median_hooks_per_step_s"]) / p["median_step_s"],
            "paired_train": paired(runs),
            "same_rewards": all(r["rewards"] == runs[0]["rewards"] for r in runs),
            "other_cpu_cores": round(watch.cores(), 3),
            "runs": [{"side": r["side"], "median_step_s": round(statistics.median(r["step_times"]), 4),
                      **{k: round(r[k], 4) for k in ("train_s", "train_cpu_s", "callbacks_s", "rewards_s")}} for r in runs]}


def paired(runs: list[dict], key: str = "train_s", draws: int = 10000) -> dict:
    """Per-pair ratios aligntune/plain of `key` (repetition i of each side ran back to back, so slow drift of the
    machine cancels within a pair), their median and a 90% bootstrap interval of that median (fixed seed)."""
    import random

    a = [r[key] for r in runs if r["side"] == "aligntune"]
    p = [r[key] for r in runs if r["side"] == "plain"]
    ratios = [x / y for x, y in zip(a, p, strict=True)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return {"ratios": [round(r, 4) for r in ratios], "median": statistics.median(ratios),
            "low": boot[int(0.05 * draws)], "high": boot[int(0.95 * draws) - 1]}


def rows(result: dict) -> list[dict]:
    a, p, target = result["sides"]["aligntune"], result["sides"]["plain"], f"<= {TARGET}"
    hooks = result["hooks_extra_fraction"]
    return [
        {"name": "compute dtype, both sides", "value": DTYPE, "target": "", "ok": None},
        {"name": "GRPO step time, aligntune / plain TRL (median)", "target": "", "ok": None,
         "value": f"{a['median_step_s'] * 1000:.1f} / {p['median_step_s'] * 1000:.1f} ms"},
        {"name": "step time ratio aligntune/plain", "value": f"{result['step_ratio']:.3f}", "target": target,
         "ok": result["step_ratio"] <= TARGET},
        {"name": "  noise floor: same side, odd/even reps", "value": f"{result['noise_floor']:.3f}", "target": target,
         "ok": result["noise_floor"] <= TARGET},
        {"name": "trainer.train() ratio aligntune/plain", "value": f"{result['train_ratio']:.3f} "
         f"({a['median_train_s']:.2f} / {p['median_train_s']:.2f} s)", "target": target, "ok": result["train_ratio"] <= TARGET},
        {"name": "trainer.train() CPU time ratio aligntune/plain", "value": f"{result['train_cpu_ratio']:.3f} "
         f"({a['median_train_cpu_s']:.2f} / {p['median_train_cpu_s']:.2f} s)", "target": target,
         "ok": result["train_cpu_ratio"] <= TARGET},
        {"name": "paired train() ratio, median [90% CI]", "target": f"CI high {target}",
         "ok": result["paired_train"]["high"] <= TARGET,
         "value": "{median:.3f} [{low:.3f}, {high:.3f}]".format(**result["paired_train"])},
        {"name": "aligntune callbacks + reward wrapper, extra", "target": f"<= {TARGET - 1:.0%} of step", "ok": hooks <= TARGET - 1,
         "value": f"{(a['median_hooks_per_step_s'] - p['median_hooks_per_step_s']) * 1000:.2f} ms = {hooks:.2%} of step"},
        {"name": "identical reward trajectory on both sides", "value": str(result["same_rewards"]), "target": "True",
         "ok": result["same_rewards"]},
        interference_row("GRPO runs", result["other_cpu_cores"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per side (1 removes the 2-thread scheduling jitter; default: torch's)")
    args = parser.parse_args()
    result = measure(args.steps, args.reps, args.threads)
    return finish('grpo_overhead', result, rows)


if __name__ == "__main__":
    raise SystemExit(main())
