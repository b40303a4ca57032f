"""What `model.dtype=auto` should pick on this CPU: fp32 against bf16 weights, per model, side by side.

For each shipped model (the tiny test model and SmolLM2-135M-Instruct) and each precision, in one process
with the sides alternating (fp32 bf16 fp32 bf16 ...), it times the two phases of a GRPO step:
- generation: 16 sequences x 32 new tokens (sampling, KV cache), from a 40-token prompt;
- training: forward + backward of 16 sequences x 72 tokens (the loss is the mean log-prob, as in a policy step).
The first repetition is warm-up. Reported: the median seconds per phase and bf16's speed-up over fp32
(> 1: bf16 faster). `model.dtype=auto` takes bf16 on a CPU only where it is measured faster for that model
(aligntune/models/precision.py states the rule; README's Precision section the numbers).

Run: .venv/bin/python bench/dtype_choice.py [--reps 3] [--models tiny smollm2_135m]
Writes bench/results/dtype_choice_<cpu kind>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Interference, interference_row, table, write_json

MODELS = {"tiny": "aligntune:tiny", "smollm2_135m": "aligntune:smollm2-135m-instruct"}


def cpu_kind() -> str:
    from aligntune.models.precision import cpu_flags, cpu_has_native_bf16

    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
    return ("bf16-native" if cpu_has_native_bf16() else "avx2-only"), flags


def load(name: str, dtype):
    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=MODELS[name])
    return load_model(cfg, dtype), load_tokenizer(cfg)


def time_phases(model, tok) -> dict[str, float]:
    import torch

    torch.manual_seed(0)
    vocab = min(len(tok), model.config.vocab_size)
    prompt = torch.randint(10, vocab, (16, 40))
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=32,
                       min_new_tokens=32, pad_token_id=tok.pad_token_id, top_k=0)
    generation = time.perf_counter() - t0
    ids = torch.randint(10, vocab, (16, 72))
    t0 = time.perf_counter()
    logits = model(input_ids=ids).logits[:, :-1].float()
    loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    training = time.perf_counter() - t0
    return {"generation_s": generation, "train_fwd_bwd_s": training}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per side (after one warm-up)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    kind, flags = cpu_kind()
    print(f"CPU: {kind} (flags: {' '.join(flags)}), torch threads {torch.get_num_threads()}")
    interference = Interference()
    results, rows = {}, []
    for name in args.models:
        sides = {"fp32": load(name, torch.float32), "bf16": load(name, torch.bfloat16)}
        times = {side: [] for side in sides}
        for rep in range(args.reps + 1):
            for side, (model, tok) in sides.items():
                measured = time_phases(model, tok)
                if rep:
                    times[side].append(measured)
        medians = {side: {phase: statistics.median(t[phase] for t in ts) for phase in ts[0]} for side, ts in times.items()}
        results[name] = medians
        for phase in ("generation_s", "train_fwd_bwd_s"):
            fp32, bf16 = medians["fp32"][phase], medians["bf16"][phase]
            rows.append({"name": f"{name} {phase[:-2]}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s",
                         "value": f"bf16 {fp32 / bf16:.2f}x", "target": "info", "ok": None})
        step = {side: sum(m.values()) for side, m in medians.items()}
        results[name]["bf16_speedup_step"] = step["fp32"] / step["bf16"]
        rows.append({"name": f"{name} generation + training", "value": f"bf16 {step['fp32'] / step['bf16']:.2f}x",
                     "target": "info", "ok": None})
        del sides
    rows.append(interference_row("dtype choice", interference.cores()))
    print(table(rows))
    path = write_json(f"dtype_choice_{kind}", {"cpu_kind": kind, "flags": flags, "reps": args.reps, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
