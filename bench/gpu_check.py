"""GPU check: aligntune's training, evaluation and saved-weight exactness on one CUDA device, plus a throughput table.

Meant for one GPU machine that has torch, transformers, peft and accelerate but no network (the rest arrives as
carried wheels; see BENCHMARKS.md, "GPU check"). In about 9 minutes on one GPU it runs:

1. tiny-model runs on CUDA in bf16 (`device=cuda model.dtype=bf16`: fp32 weights under the trainer's bf16
   autocast): GRPO (experiment=smoke), DPO (dpo_smoke), PPO (ppo_smoke, native engine), SFT and a reward model;
   each must complete with summary.json saying device=cuda, compute_dtype=bf16, and parameters that changed;
2. `aligntune eval` of the GRPO run on the GPU (eval.json says device=cuda);
3. saved-weight exactness: a full-weight bf16 step with zero gradient (every group's rewards equal) leaves every
   saved tensor bit-identical to the starting checkpoint; a LoRA DPO run's model_merged/ keeps every weight the
   adapter does not touch bit-identical;
4. rollout engines: the same GRPO steps with rollout.engine=hf and rollout.engine=vllm (colocate mode), with each
   one's mean generation seconds per step and their ratio; and a 4-bit QLoRA step (model.quantization=4bit with
   LoRA), which must complete with a trained adapter. These need vllm and bitsandbytes: where a package is
   missing, its row says SKIP and why (it is not a failure);
5. throughput of random-init models built from SmolLM2-135M's and Qwen3-0.6B's configurations (no download):
   one GRPO-shaped step (16 sequences: generate 128 tokens, then forward+backward of 16 x 256 tokens and an AdamW
   step, bf16 autocast on fp32 weights), reporting step time, generated tokens/s and peak GPU memory.

Run: python bench/gpu_check.py [--out DIR]     (on a CUDA machine)
     python bench/gpu_check.py --dry-run       (anywhere: prints the plan and composes every run's config)
Writes bench/results/gpu_check.json (or DIR/gpu_check.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

CUDA_BF16 = ["device=cuda", "model.dtype=bf16", "train.log_samples=0"]
RUNS = {
    "grpo": ["experiment=smoke", "train.max_steps=4", "dataset.eval_fraction=0.1"],
    "dpo": ["experiment=dpo_smoke", "train.max_steps=4"],
    "ppo": ["experiment=ppo_smoke", "train.max_steps=2"],
    "sft": ["model=tiny", "algorithm=sft", "dataset=letters_sft", "train.max_steps=4"],
    "reward": ["model=tiny", "algorithm=reward", "dataset=prefs", "train.max_steps=4"],
}
CONST_REWARD = "def constant(completions, **kwargs):\n    return [1.0] * len(completions)\n"
ZERO_GRADIENT = ["model=tiny", "dataset=letters", "algorithm=dapo", "~rewards.letter_match",
                 "+rewards.const.fn=const.py:constant", "algorithm.overlong_buffer=null",
                 "algorithm.dynamic_sampling_max_retries=0", "group_size=4", "batch_size=2",
                 "algorithm.num_mini_batches=1", "train.max_steps=1", "model.lora.enabled=false"]
LORA_MERGED = ["experiment=dpo_smoke", "train.max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
               "model.lora.save_merged=true", "train.eval_steps=null"]
# GRPO steps on the tiny model through each rollout engine (vLLM in colocate mode shares the GPU with training).
ROLLOUT = ["experiment=smoke", "train.max_steps=3"]
ENGINES = {"hf": [], "vllm": ["rollout.engine=vllm", "rollout.vllm.mode=colocate",
                              "rollout.vllm.gpu_memory_utilization=0.3"]}
QLORA = ["experiment=dpo_smoke", "train.max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
         "model.quantization=4bit", "train.eval_steps=null"]
NEEDS = {"vllm": "vllm", "qlora_4bit": "bitsandbytes"}  # row -> the package it needs (absent: the row is skipped)
# Architectures of the two real models, random-init (the weights are not needed to time a step).
SHAPES = {
    "smollm2_135m": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                         tie_word_embeddings=True)),
    "qwen3_0_6b": ("Qwen3Config", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                       max_position_embeddings=40960, tie_word_embeddings=True)),
}


def plan() -> list[str]:
    lines = [f"train {name}: aligntune train {' '.join(RUNS[name] + CUDA_BF16)}" for name in RUNS]
    lines.append("eval: aligntune eval run=<the grpo run> eval.num_prompts=8 (on the GPU)")
    lines.append(f"exact, full weights: aligntune train {' '.join(ZERO_GRADIENT + CUDA_BF16)} -> saved == starting weights")
    lines.append(f"exact, LoRA merge: aligntune train {' '.join(LORA_MERGED + CUDA_BF16)} -> untouched weights == base")
    lines += [f"rollout {name}: aligntune train {' '.join(ROLLOUT + extra + CUDA_BF16)} -> generation s/step"
              + (" (needs vllm)" if name == "vllm" else "") for name, extra in ENGINES.items()]
    lines.append(f"QLoRA 4-bit: aligntune train {' '.join(QLORA + CUDA_BF16)} -> adapter trained (needs bitsandbytes)")
    lines += [f"throughput {name}: random-init {cls}, 16 x (generate 128 + train 256 tokens), bf16 autocast"
              for name, (cls, _) in SHAPES.items()]
    return lines


def compose_all() -> None:
    """Every run's config composes and validates (no torch, no GPU): what --dry-run checks."""
    import os

    from aligntune import preflight
    from aligntune.config import compose

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="aligntune-gpu-") as tmp:
        (Path(tmp) / "const.py").write_text(CONST_REWARD)
        os.chdir(tmp)
        try:
            for overrides in [*RUNS.values(), ZERO_GRADIENT, LORA_MERGED, ROLLOUT]:
                preflight.load([*overrides, *CUDA_BF16])
            # Rows whose package may be missing here: the schema checks always; the package checks where installed.
            for row, overrides in (("vllm", ROLLOUT + ENGINES["vllm"]), ("qlora_4bit", QLORA)):
                run = compose.load([*overrides, *CUDA_BF16])[0]
                if missing(row) is None:
                    preflight.check(run)
        finally:
            os.chdir(here)


def train(root: Path, name: str, overrides: list[str]) -> tuple[Path, dict]:
    from aligntune import cli

    run_dir = root / name
    code = cli.main(["train", *overrides, f"hydra.run.dir={run_dir}"])
    summary = json.loads((run_dir / "summary.json").read_text())
    if code != 0:
        raise AssertionError(f"{name}: exit {code}, summary {summary}")
    return run_dir, summary


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def check_runs(root: Path) -> list[dict]:
    from aligntune.models import tiny

    base = tensors(tiny.resolve("aligntune:tiny") / "model.safetensors")
    out = []
    for name, overrides in RUNS.items():
        t0 = time.perf_counter()
        run_dir, summary = train(root, name, overrides + CUDA_BF16)
        placed = (summary.get("device"), summary.get("compute_dtype")) == ("cuda", "bf16")
        saved = run_dir / "model" / "model.safetensors"
        changed = None
        if saved.is_file() and name != "reward":
            after = tensors(saved)
            changed = sum(not after[k].cpu().equal(base[k]) for k in base if k in after)
        out.append({"check": f"train {name}", "ok": summary["status"] == "completed" and placed and changed != 0,
                    "detail": f"{summary['status']}, {summary.get('device')}/{summary.get('compute_dtype')}, "
                              f"{changed if changed is not None else 'n/a'} tensors changed",
                    "seconds": round(time.perf_counter() - t0, 1)})
    return out


def check_eval(root: Path) -> dict:
    from aligntune import cli

    t0 = time.perf_counter()
    code = cli.main(["eval", f"run={root / 'grpo'}", "eval.num_prompts=8", "eval.samples=2"])
    result = json.loads((root / "grpo" / "eval.json").read_text())
    return {"check": "eval on the GPU", "ok": code == 0 and result.get("device") == "cuda",
            "detail": f"exit {code}, device {result.get('device')}, dtype {result.get('compute_dtype')}",
            "seconds": round(time.perf_counter() - t0, 1)}


def check_exactness(root: Path) -> list[dict]:
    import os

    from aligntune.models import tiny

    base = tensors(tiny.resolve("aligntune:tiny") / "model.safetensors")
    (root / "const.py").write_text(CONST_REWARD)
    here = os.getcwd()
    os.chdir(root)
    try:
        run_dir, _ = train(root, "zero_gradient", ZERO_GRADIENT + CUDA_BF16)
    finally:
        os.chdir(here)
    saved = tensors(run_dir / "model" / "model.safetensors")
    differ = [k for k in base if not saved[k].equal(base[k])]
    out = [{"check": "full weights, zero gradient: saved == start", "ok": not differ,
            "detail": f"{len(differ)} of {len(base)} tensors differ", "seconds": None}]
    run_dir, _ = train(root, "lora_merged", LORA_MERGED + CUDA_BF16)
    merged = tensors(run_dir / "model_merged" / "model.safetensors")
    targeted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    untouched = [k for k in base if not any(t in k for t in targeted)]
    differ = [k for k in untouched if not merged[k].equal(base[k])]
    out.append({"check": "LoRA model_merged/: untouched weights == base", "ok": bool(untouched) and not differ,
                "detail": f"{len(differ)} of {len(untouched)} untouched tensors differ", "seconds": None})
    return out


def missing(row: str) -> str | None:
    """Why `row` cannot run on this machine (its package is not installed), or None."""
    import importlib.util

    package = NEEDS.get(row)
    return f"{package} is not installed" if package and importlib.util.find_spec(package) is None else None


def skipped(check: str, why: str) -> dict:
    return {"check": check, "ok": None, "detail": f"skipped: {why}", "seconds": None}


def check_rollout_engines(root: Path) -> list[dict]:
    """GRPO with transformers' generate and with vLLM colocated: both complete on the GPU; generation s/step each."""
    out, generation = [], {}
    for name, extra in ENGINES.items():
        check = f"GRPO rollouts, rollout.engine={name}"
        if missing(name):
            out.append(skipped(check, missing(name)))
            continue
        t0 = time.perf_counter()
        _, summary = train(root, f"rollout_{name}", ROLLOUT + extra + CUDA_BF16)
        generation[name] = summary.get("timing/generation")
        out.append({"check": check, "ok": summary["status"] == "completed" and summary.get("device") == "cuda",
                    "detail": f"{summary['status']}, generation {generation[name]:.3f} s/step" if generation[name]
                              else summary["status"], "seconds": round(time.perf_counter() - t0, 1)})
    if generation.get("hf") and generation.get("vllm"):
        out.append({"check": "vLLM colocate vs HF generation", "ok": True, "seconds": None,
                    "detail": f"hf {generation['hf']:.3f} s/step, vllm {generation['vllm']:.3f} s/step: "
                              f"{generation['hf'] / generation['vllm']:.2f}x"})
    return out


def check_qlora(root: Path) -> dict:
    """A 4-bit QLoRA DPO run completes on the GPU and trains its adapter (LoRA's B matrices start at zero)."""
    check = "QLoRA 4-bit DPO step (model.quantization=4bit)"
    if missing("qlora_4bit"):
        return skipped(check, missing("qlora_4bit"))
    t0 = time.perf_counter()
    run_dir, summary = train(root, "qlora_4bit", QLORA + CUDA_BF16)
    adapter = tensors(run_dir / "model" / "adapter_model.safetensors")
    trained = sum(bool(t.abs().sum() > 0) for k, t in adapter.items() if "lora_B" in k)
    return {"check": check, "ok": summary["status"] == "completed" and trained > 0,
            "detail": f"{summary['status']}, {trained} of {sum('lora_B' in k for k in adapter)} LoRA B matrices "
                      "moved from zero", "seconds": round(time.perf_counter() - t0, 1)}


def throughput(name: str, cls: str, kwargs: dict, sequences: int = 16, generate: int = 128, train_len: int = 256) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, cls)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).to("cuda", torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    prompt = torch.randint(100, config.vocab_size, (sequences, 64), device="cuda")
    ids = torch.randint(100, config.vocab_size, (sequences, train_len), device="cuda")

    def step() -> tuple[float, float]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                           max_new_tokens=generate, min_new_tokens=generate, pad_token_id=0)
        torch.cuda.synchronize()
        gen = time.perf_counter() - t0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits[:, :-1].float()
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, gen

    step()  # warm-up
    torch.cuda.reset_peak_memory_stats()
    timed = [step() for _ in range(3)]
    total = sorted(t for t, _ in timed)[1]
    gen = sorted(g for _, g in timed)[1]
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": params, "step_s": round(total, 3), "generation_s": round(gen, 3),
            "generated_tokens_per_s": round(sequences * generate / gen, 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and compose every config; no GPU")
    parser.add_argument("--out", default=None, help="directory for gpu_check.json (default bench/results)")
    args = parser.parse_args()
    print("\n".join(plan()))
    if args.dry_run:
        compose_all()
        print("dry run: every run's config composes; nothing was trained.")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device, and torch sees none. Run it on a GPU machine, or use --dry-run.",
              file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="aligntune-gpu-") as tmp:
        root = Path(tmp)
        checks = (check_runs(root) + [check_eval(root)] + check_exactness(root) + check_rollout_engines(root)
                  + [check_qlora(root)])
    rates = []
    for name, (cls, kw) in SHAPES.items():
        rates.append(throughput(name, cls, kw))  # its model and optimizer are freed when it returns
        torch.cuda.empty_cache()
    for c in checks:
        print(f"{ {True: 'PASS', False: 'FAIL', None: 'SKIP'}[c['ok']]}  {c['check']}: {c['detail']}"
              + (f" ({c['seconds']} s)" if c["seconds"] is not None else ""))
    print(f"{'model':<14}{'params':>12}{'step s':>9}{'gen s':>8}{'gen tok/s':>11}{'peak GiB':>10}")
    for r in rates:
        print(f"{r['model']:<14}{r['parameters']:>12,}{r['step_s']:>9}{r['generation_s']:>8}"
              f"{r['generated_tokens_per_s']:>11}{r['peak_gpu_memory_gib']:>10}")
    out = Path(args.out) if args.out else Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "checks": checks,
                                                    "throughput": rates}, indent=2) + "\n")
    return 0 if all(c["ok"] is not False for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
