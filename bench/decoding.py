"""Rollout decoding on CPU, side by side (models/decoding.py): transformers' generate as it is, on prepared weights
(`rollout.prepared_weights`), on prepared weights with inverse-CDF sampling (`rollout.sampler`), and with each
prompt's prefill run once for its 4 rows as well (`rollout.shared_prefill`).

SmolLM2-135M-Instruct in bf16 (where the CPU has native bf16; fp32 elsewhere), the shipped arith prompts, sampled at
temperature 0.7 for exactly `--tokens` new tokens, for each model form: full weights (a GRPO rollout of 2 prompts x 4)
and a LoRA adapter with a non-zero delta (the default job's 4 prompts x 4). The variants alternate in one process,
median of `--reps` after a warm-up. Also checks that full-weight decoding on prepared weights gives the identical
tokens (same seed, multinomial sampling), and the per-call cost of the two samplers on a 16 x 49,152 distribution.

With --eval instead: the held-out evaluation's generation as the default job runs it (`evaluation.score_prompts`: the
base model, 100 held-out arith prompts, greedy, 32 new tokens, one batch), with `rollout.shared_prefill` off and on
alternating. Distinct prompts: what is shared is the tokens all prompts start with (the chat template's system turn).

Run: .venv/bin/python bench/decoding.py [--reps 3] [--tokens 32] [--dtype auto|fp32|bf16] [--eval]
Writes bench/results/decoding.json (decoding_eval.json with --eval). Target: each switch no slower than without it;
full weights bit-identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Interference, finish, interference_row

VARIANTS = {"plain": (False, False, False), "prepared": (True, False, False), "prepared+inverse_cdf": (True, True, False),
            "prepared+inverse_cdf+shared_prefill": (True, True, True)}


def model_and_prompts(lora: bool, rows: int, dtype: str = "auto"):
    import torch

    from aligntune import preflight
    from aligntune.data.loading import load
    from aligntune.evaluation import format_prompt
    from aligntune.models.loading import compute_precision, load_model, load_tokenizer
    from aligntune.models.precision import weight_dtype

    run = preflight.load(["dataset=arith", f"model.dtype={dtype}"])[0]
    precision = compute_precision(run.model, "cpu")
    model = load_model(run.model, weight_dtype(precision, "cpu"), device="cpu").eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()  # aligntune keeps adapters in fp32
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.01)  # a trained adapter's delta, not peft's zero init
    tok = load_tokenizer(run.model)
    train, _ = load(run.dataset, run.seed, "prompts")
    prompts = [format_prompt(tok, train[i]["prompt"]) for i in range(rows // 4)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(4, 0), enc["attention_mask"].repeat_interleave(4, 0)
    return model, tok, ids, mask, precision


def generate(model, tok, ids, mask, tokens: int, prepared: bool, sampler: bool, shared: bool = False, seed: int = 0):
    import torch

    from aligntune.models.decoding import fast_decoding

    torch.manual_seed(seed)
    with torch.no_grad(), fast_decoding(model, ids.shape[0], prepared, sampler, shared):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                              do_sample=True, temperature=0.7, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id)


def sampler_ms(reps: int = 50) -> dict:
    import torch

    from aligntune.models.decoding import inverse_cdf_sampling

    probs = torch.softmax(torch.randn(16, 49152) / 0.7, -1)
    out = {}
    for name in ("multinomial", "inverse_cdf"):
        times = []
        for _ in range(reps):
            if name == "inverse_cdf":
                with inverse_cdf_sampling():
                    t0 = time.perf_counter()
                    torch.multinomial(probs, num_samples=1)
            else:
                t0 = time.perf_counter()
                torch.multinomial(probs, num_samples=1)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e3
    return out


def measure(reps: int, tokens: int, dtype: str = "auto") -> dict:
    watch, result = Interference(), {"reps": reps, "tokens": tokens, "dtype": dtype, "forms": {}}
    for form, lora, rows in (("full weights, 8 sequences", False, 8), ("LoRA, 16 sequences", True, 16)):
        model, tok, ids, mask, precision = model_and_prompts(lora, rows, dtype)
        times = {v: [] for v in VARIANTS}
        for rep in range(reps + 1):
            for name, (prepared, sampler, shared) in VARIANTS.items():
                t0 = time.perf_counter()
                generate(model, tok, ids, mask, tokens, prepared, sampler, shared, seed=rep)
                if rep:
                    times[name].append(time.perf_counter() - t0)
        entry = {"precision": precision, "sequences": rows, **{f"{v}_s": statistics.median(t) for v, t in times.items()}}
        if not lora:
            entry["bit_identical"] = bool((generate(model, tok, ids, mask, tokens, False, False) ==
                                           generate(model, tok, ids, mask, tokens, True, False)).all())
        result["forms"][form] = entry
        print(form, entry, flush=True)
        del model
    result["sampler_ms"] = sampler_ms()
    result["other_cpu_cores"] = round(watch.cores(), 3)
    return result


def measure_eval(reps: int, tokens: int) -> dict:
    from aligntune import evaluation as ev
    from aligntune import preflight
    from aligntune.config.schema import RolloutConfig
    from aligntune.models import decoding
    from aligntune.models.loading import model_location
    from aligntune.rewards.registry import bind

    watch = Interference()
    run = preflight.load(["dataset=arith"])[0]
    base = model_location(run.model)
    device, precision = ev.inference_placement(base, "cpu", run.model.dtype)
    model, tok = ev.load_for_inference(base, device, precision, ev.inference_attention(run.model.attn_implementation,
                                                                                          device))
    rows_ = ev.held_out_rows(run, "prompts", run.eval.num_prompts)
    enc = tok([ev.format_prompt(tok, r["prompt"]) for r in rows_], return_tensors="pt", padding=True,
              add_special_tokens=False)
    common = decoding._common_prefix(enc["input_ids"][:, :-1], enc["attention_mask"][:, :-1])
    funcs = {name: bind(name, spec.fn or name, spec.args) for name, spec in run.rewards.items()}
    weights = {name: spec.weight for name, spec in run.rewards.items()}
    times, scored = {"off": [], "on": []}, {}
    for rep in range(reps + 1):
        for side in times:
            t0 = time.perf_counter()
            scored[side] = ev.score_prompts(model, tok, rows_, funcs, weights, 1, 0.0, tokens, run.seed,
                                            rollout=RolloutConfig(shared_prefill=side == "on"))
            if rep:
                times[side].append(time.perf_counter() - t0)
    return {"reps": reps, "tokens": tokens, "precision": precision, "prompts": len(rows_),
            "prompt_tokens": int(enc["attention_mask"].sum(-1).float().mean()), "common_prefix": common,
            **{f"{side}_s": statistics.median(t) for side, t in times.items()},
            **{f"{side}_reward": scored[side]["reward"] for side in times},
            "other_cpu_cores": round(watch.cores(), 3)}


def eval_rows(result: dict) -> list[dict]:
    ratio = result["off_s"] / result["on_s"]
    name = (f"evaluation, {result['prompts']} greedy answers x {result['tokens']} tokens ({result['precision']}; "
            f"prompts ~{result['prompt_tokens']} tokens, {result['common_prefix']} shared)")
    return [{"name": f"{name}: shared_prefill off / on", "target": ">= 1", "ok": ratio >= 0.97,
             "value": f"{result['off_s']:.2f} / {result['on_s']:.2f} s = {ratio:.2f}x"},
            {"name": "held-out reward off / on (bf16 rounds the matmuls' other shapes differently)", "target": "",
             "ok": None, "value": f"{result['off_reward']:.2f} / {result['on_reward']:.2f}"},
            interference_row("evaluation runs", result["other_cpu_cores"])]


def rows(result: dict) -> list[dict]:
    out = []
    for form, e in result["forms"].items():
        name = f"{form} x {result['tokens']} tokens ({e['precision']})"
        for variant in [v for v in VARIANTS if v != "plain"]:
            ratio = e["plain_s"] / e[f"{variant}_s"]
            out.append({"name": f"{name}: plain / {variant}", "target": ">= 1", "ok": ratio >= 0.97,
                        "value": f"{e['plain_s']:.2f} / {e[f'{variant}_s']:.2f} s = {ratio:.2f}x"})
        if "bit_identical" in e:
            out.append({"name": f"{form}: prepared weights give the identical tokens", "target": "True",
                        "value": str(e["bit_identical"]), "ok": e["bit_identical"]})
    s = result["sampler_ms"]
    out.append({"name": "one draw from 16 x 49,152 probabilities: multinomial / inverse CDF", "target": "", "ok": None,
                "value": f"{s['multinomial']:.2f} / {s['inverse_cdf']:.2f} ms"})
    out.append(interference_row("decoding runs", result["other_cpu_cores"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="model.dtype (fp32: the path AVX2-only CPUs take)")
    parser.add_argument("--eval", action="store_true", help="the held-out evaluation's generation instead")
    args = parser.parse_args()
    if args.eval:
        return finish("decoding_eval", measure_eval(args.reps, args.tokens), eval_rows)
    result = measure(args.reps, args.tokens, args.dtype)
    return finish('decoding' if args.dtype == 'auto' else f'decoding_{args.dtype}', result, rows)


if __name__ == "__main__":
    raise SystemExit(main())
