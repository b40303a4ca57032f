"""The attention kernel per phase on CPU: `model.attn_implementation=sdpa` (transformers' choice, SDPA's flash
kernel) against `auto` (models/attention.py: the model's eager attention for short 16-bit calls that train),
side by side.

For each (dtype, sequences x length): SmolLM2-135M forward+backward of a GRPO-shaped loss (log-probs of the last
32 positions), and its no-grad forward (reference/old log-probs), both implementations alternating A B A B in one
process, median of `--reps` after a warm-up. Also the largest gradient difference between the two (they compute the
same function and round differently) and the process's peak RSS so far (eager keeps each layer's attention
probabilities for the backward).

Decoding (`--decode-rows`, each a batch size): greedy generation of `--decode-tokens` new tokens from the shipped
arith prompts on prepared weights, as a rollout (16 = the default job's 4 prompts x 4) and the held-out evaluation
(100) decode, `sdpa` against `auto` (decode_attention for each one-query step), and how many sequences come out
token for token the same.

Run: .venv/bin/python bench/attention.py [--reps 3] [--lengths 80,128,256] [--dtypes bf16] [--decode-rows 16,100]
Writes bench/results/attention.json. Target: `auto` no slower than `sdpa` at every length up to MATH_MAX_KEYS, and
in decoding.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Interference, finish, interference_row


def load(dtype_name: str, implementation: str):
    import torch

    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import load_model

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    model = load_model(ModelConfig(name_or_path="aligntune:smollm2-135m-instruct", attn_implementation=implementation),
                       dtype, device="cpu")
    model.train()
    return model


def batch(seqs: int, length: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49000, (seqs, length), generator=g)
    mask = torch.ones(seqs, length, dtype=torch.long)
    mask[: seqs // 2, : length // 8] = 0  # left padding on half the rows, as in a batch of mixed prompt lengths
    return ids, mask


def loss(model, ids, mask, completion: int = 32):
    import torch

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -completion - 1:-1]
    logps = torch.log_softmax(model.lm_head(hidden).float(), -1).gather(-1, ids[:, -completion:, None])
    return logps.mean()


def measure(reps: int, lengths: list[int], dtypes: list[str], seqs: int) -> dict:
    import resource

    import torch

    from aligntune.models import attention

    watch, result = Interference(), {"reps": reps, "seqs": seqs, "math_max_keys": attention.MATH_MAX_KEYS, "rows": []}
    for dtype_name in dtypes:
        models = {"sdpa": load(dtype_name, "sdpa"), "auto": load(dtype_name, "auto")}
        assert models["auto"].config._attn_implementation == attention.NAME
        for length in lengths:
            ids, mask = batch(seqs, length)
            times = {(impl, phase): [] for impl in models for phase in ("fwd_bwd", "fwd")}
            grads = {}
            for rep in range(reps + 1):
                for impl, model in models.items():
                    model.zero_grad(set_to_none=True)
                    t0 = time.perf_counter()
                    loss(model, ids, mask).backward()
                    t1 = time.perf_counter()
                    with torch.no_grad():
                        loss(model, ids, mask)
                    t2 = time.perf_counter()
                    if rep:  # the first round is warm-up
                        times[impl, "fwd_bwd"].append(t1 - t0)
                        times[impl, "fwd"].append(t2 - t1)
                    grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.float()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row = {"dtype": dtype_name, "length": length,
                   **{f"{impl}_{phase}_s": statistics.median(v) for (impl, phase), v in times.items()},
                   **{f"{impl}_{phase}_min_s": min(v) for (impl, phase), v in times.items()},
                   "grad_max_abs_diff": (grads["sdpa"] - grads["auto"]).abs().max().item(),
                   "grad_max_abs": grads["sdpa"].abs().max().item(), "peak_rss_mb": before / 1024}
            row["fwd_bwd_speedup"] = row["sdpa_fwd_bwd_s"] / row["auto_fwd_bwd_s"]
            row["fwd_speedup"] = row["sdpa_fwd_s"] / row["auto_fwd_s"]
            result["rows"].append(row)
            print(row, flush=True)
        del models
    result["other_cpu_cores"] = round(watch.cores(), 3)
    return result


def decoding(reps: int, batch_rows: list[int], dtypes: list[str], tokens: int) -> list[dict]:
    import torch

    from aligntune import preflight
    from aligntune.data.loading import load as load_rows
    from aligntune.evaluation import format_prompt
    from aligntune.models.decoding import fast_decoding
    from aligntune.models.loading import load_tokenizer

    run = preflight.load(["dataset=arith"])[0]
    tok = load_tokenizer(run.model)
    train, _ = load_rows(run.dataset, run.seed, "prompts")
    out = []
    for dtype_name in dtypes:
        models = {"sdpa": load(dtype_name, "sdpa").eval(), "auto": load(dtype_name, "auto").eval()}
        for n in batch_rows:
            enc = tok([format_prompt(tok, train[i]["prompt"]) for i in range(n)], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            times, ids = {impl: [] for impl in models}, {}
            for rep in range(reps + 1):
                for impl, model in models.items():
                    t0 = time.perf_counter()
                    with torch.no_grad(), fast_decoding(model, n, True, False):
                        ids[impl] = model.generate(**enc, max_new_tokens=tokens, do_sample=False,
                                                   pad_token_id=tok.pad_token_id)
                    if rep:
                        times[impl].append(time.perf_counter() - t0)
            row = {"dtype": dtype_name, "rows": n, "tokens": tokens,
                   **{f"{impl}_s": statistics.median(v) for impl, v in times.items()},
                   "same_sequences": int((ids["sdpa"] == ids["auto"]).all(-1).sum())}
            row["speedup"] = row["sdpa_s"] / row["auto_s"]
            out.append(row)
            print(row, flush=True)
        del models
    return out


def rows(result: dict) -> list[dict]:
    out = []
    for r in result.get("decoding", []):
        out.append({"name": f"{r['dtype']} greedy decoding, {r['rows']} x {r['tokens']} tokens: sdpa / auto",
                    "target": ">= 1 (auto no slower)", "ok": r["speedup"] >= 0.97,
                    "value": f"{r['sdpa_s']:.2f} / {r['auto_s']:.2f} s = {r['speedup']:.2f}x"})
        out.append({"name": f"{r['dtype']} greedy decoding, {r['rows']} sequences: token for token the same",
                    "target": "", "ok": None, "value": f"{r['same_sequences']} of {r['rows']}"})
    for r in result["rows"]:
        name = f"{r['dtype']} {result['seqs']} x {r['length']}"
        within = r["length"] <= result["math_max_keys"]
        out.append({"name": f"{name}: fwd+bwd sdpa / auto, median", "target": ">= 1 (auto no slower)" if within else "",
                    "value": f"{r['sdpa_fwd_bwd_s']:.3f} / {r['auto_fwd_bwd_s']:.3f} s = {r['fwd_bwd_speedup']:.2f}x",
                    "ok": r["fwd_bwd_speedup"] >= 0.97 if within else None})
        out.append({"name": f"{name}: fwd+bwd sdpa / auto, fastest", "target": "", "ok": None,
                    "value": f"{r['sdpa_fwd_bwd_min_s']:.3f} / {r['auto_fwd_bwd_min_s']:.3f} s = "
                             f"{r['sdpa_fwd_bwd_min_s'] / r['auto_fwd_bwd_min_s']:.2f}x"})
        out.append({"name": f"{name}: no-grad forward sdpa / auto", "target": "", "ok": None,
                    "value": f"{r['sdpa_fwd_s']:.3f} / {r['auto_fwd_s']:.3f} s = {r['fwd_speedup']:.2f}x"})
        out.append({"name": f"{name}: q_proj grad, max |sdpa - auto| / max |g|", "target": "", "ok": None,
                    "value": f"{r['grad_max_abs_diff']:.2e} / {r['grad_max_abs']:.2e}"})
    out.append(interference_row("attention runs", result["other_cpu_cores"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seqs", type=int, default=8, help="sequences per batch (GRPO: prompts x group_size)")
    parser.add_argument("--lengths", default="80,128,256")
    parser.add_argument("--dtypes", default="bf16")
    parser.add_argument("--decode-rows", default="16,100", help="batch sizes of the decoding rows ('' to skip)")
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    result = measure(args.reps, lengths, args.dtypes.split(","), args.seqs)
    batch_rows = [int(x) for x in args.decode_rows.split(",") if x]
    result["decoding"] = decoding(args.reps, batch_rows, args.dtypes.split(","), args.decode_tokens)
    return finish('attention', result, rows)


if __name__ == "__main__":
    raise SystemExit(main())
