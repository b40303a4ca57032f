"""GRPO scoring with each distinct prompt run once (`train.shared_prefix`, backends/trl/shared_prefix.py), side by
side with TRL's own `_get_per_token_logps_and_entropies`.

The default job's trainer (`aligntune train`: SmolLM2-135M-Instruct with a LoRA adapter, bf16 where the CPU has it)
scores a batch shaped like its steps: 4 arith prompts x 4 completions of 32 tokens (a third of them ending after 25),
rows shuffled as TRL shuffles them. Timed, alternating in one process, median of `--reps` after a warm-up:
- the policy's forward+backward (log-probs and entropies, a GRPO-like loss on them), the loss's phase;
- a no-grad scoring pass, as the reference's or old policy's log-probs are.
Also printed: how far the two sides' log-probs and gradients are apart (they compute the same function and round
differently in bf16; fp32 equality is tests/backends/trl/test_shared_prefix.py's).

Run: .venv/bin/python bench/shared_prefix.py [--reps 5] [-- extra overrides, e.g. model.dtype=fp32]
Writes bench/results/shared_prefix.json. Target: the shared form no slower than TRL's on either pass.
"""

from __future__ import annotations

import argparse
import functools
import statistics
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


def measure(reps: int, extra: list[str]) -> dict:
    import torch

    from aligntune.backends.trl.shared_prefix import shared_logps
    from aligntune.core.backend_factory import create_rl_trainer

    watch = Interference()
    job = create_rl_trainer(overrides=["max_steps=1", "eval.after_training=false", "train.shared_prefix=false",
                                       *extra], output_dir=tempfile.mkdtemp(prefix="aligntune-bench-"))
    trainer, model = job.trainer, job.trainer.model
    own = trainer._get_per_token_logps_and_entropies
    sides = {"trl": own, "shared": functools.partial(shared_logps, trainer, own)}
    ids, mask = batch(job)
    keep = mask[:, -TOKENS:]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def train_pass(score):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        logps, entropies, _ = score(model, ids, mask, TOKENS, compute_entropy=True)
        ((logps * keep).sum() / keep.sum() + 0.01 * (entropies * keep).sum() / keep.sum()).backward()
        return time.perf_counter() - t0, logps.detach(), torch.cat([p.grad.flatten().float() for p in params])

    def scoring_pass(score):
        t0 = time.perf_counter()
        with torch.no_grad():
            logps = score(model, ids, mask, TOKENS)[0]
        return time.perf_counter() - t0, logps

    times = {f"{side}_{kind}": [] for side in sides for kind in ("train", "score")}
    out = {}
    for rep in range(reps + 1):
        for side, score in sides.items():
            t, logps, grad = train_pass(score)
            s, scored = scoring_pass(score)
            if rep:
                times[f"{side}_train"].append(t)
                times[f"{side}_score"].append(s)
            out[side] = (logps, grad, scored)
    scored = keep.bool()
    (a, ga, sa), (b, gb, sb) = out["trl"], out["shared"]
    return {"reps": reps, "overrides": extra, "precision": job.precision, "rows": list(ids.shape),
            "prompt_tokens": int(ids.shape[1] - TOKENS), "lora": bool(job.config.model.lora.enabled),
            **{f"{k}_s": statistics.median(v) for k, v in times.items()},
            "logp_max_abs_diff": float((a - b)[scored].abs().max()), "logp_max_abs": float(a[scored].abs().max()),
            "scoring_logp_max_abs_diff": float((sa - sb)[scored].abs().max()),
            "grad_rel_diff": float((ga - gb).norm() / ga.norm()), "other_cpu_cores": round(watch.cores(), 3)}


def rows(r: dict) -> list[dict]:
    shape = f"{r['rows'][0]} rows x ({r['prompt_tokens']} + {TOKENS}) tokens, {r['precision']}{', LoRA' if r['lora'] else ''}"
    out = []
    for kind, what in (("train", "forward+backward"), ("score", "no-grad scoring")):
        ratio = r[f"trl_{kind}_s"] / r[f"shared_{kind}_s"]
        out.append({"name": f"{shape}: {what} TRL / shared", "target": ">= 1", "ok": ratio >= 0.97,
                    "value": f"{r[f'trl_{kind}_s']:.3f} / {r[f'shared_{kind}_s']:.3f} s = {ratio:.2f}x"})
    out.append({"name": "log-probs, max |TRL - shared| (forward+backward / scoring)", "target": "", "ok": None,
                "value": f"{r['logp_max_abs_diff']:.2e} / {r['scoring_logp_max_abs_diff']:.2e} of {r['logp_max_abs']:.1f}"})
    out.append({"name": "gradient, |TRL - shared| / |TRL|", "target": "", "ok": None, "value": f"{r['grad_rel_diff']:.2e}"})
    return out + [interference_row("scoring runs", r["other_cpu_cores"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="config overrides for the trainer (after --)")
    args = parser.parse_args()
    return finish("shared_prefix", measure(args.reps, args.extra), rows)


if __name__ == "__main__":
    raise SystemExit(main())
