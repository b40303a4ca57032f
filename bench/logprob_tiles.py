"""TRL's chunked log-prob kernel (its fused LM head) on CPU: TRL's vocabulary tiles of 32,768 columns against
aligntune's CPU size (patches.CPU_LOGPROB_CHUNK), side by side.

SmolLM2's head (49,152 x 576, bf16) over N completion tokens, log-probs and entropy at temperature 0.7, forward +
backward of the log-probs; fastest of `--reps` after a warm-up, both sizes alternating, and the largest differences
between their log-probs and hidden-state gradients (the online log-sum-exp runs in another order).

Run: .venv/bin/python bench/logprob_tiles.py [--tokens 128,512,2048] [--reps 4]
Writes bench/results/logprob_tiles.json. Target: the CPU size no slower at any N.
"""

from __future__ import annotations

import argparse
import time

from common import Interference, finish, interference_row


def run(hidden, weight, targets, chunk: int):
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    h = hidden.clone().requires_grad_(True)
    logps, entropy, *_ = ChunkedLogProbFunction.apply(h, weight, None, targets, 0.7, chunk, None, 1.0, ("entropy",))
    logps.sum().backward()
    return logps.detach(), h.grad


def measure(tokens: list[int], reps: int) -> dict:
    import torch

    from aligntune.patches import CPU_LOGPROB_CHUNK

    watch, rows = Interference(), []
    torch.manual_seed(0)
    weight = torch.randn(49152, 576, dtype=torch.bfloat16) * 0.05
    for n in tokens:
        hidden, targets = torch.randn(n, 576, dtype=torch.bfloat16) * 0.5, torch.randint(0, 49152, (n,))
        times = {32768: [], CPU_LOGPROB_CHUNK: []}
        out = {}
        for rep in range(reps + 1):
            for chunk in times:
                t0 = time.perf_counter()
                out[chunk] = run(hidden, weight, targets, chunk)
                if rep:
                    times[chunk].append(time.perf_counter() - t0)
        (a, ga), (b, gb) = out[32768], out[CPU_LOGPROB_CHUNK]
        rows.append({"tokens": n, "trl_s": min(times[32768]), "cpu_s": min(times[CPU_LOGPROB_CHUNK]),
                     "logp_max_diff": (a - b).abs().max().item(), "grad_max_diff": (ga.float() - gb.float()).abs().max().item(),
                     "grad_max": ga.float().abs().max().item()})
        print(rows[-1], flush=True)
    return {"chunk": CPU_LOGPROB_CHUNK, "rows": rows, "other_cpu_cores": round(watch.cores(), 3)}


def rows(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        ratio = r["trl_s"] / r["cpu_s"]
        out.append({"name": f"{r['tokens']} tokens: tiles of 32768 / {result['chunk']}", "target": ">= 1",
                    "value": f"{r['trl_s']:.3f} / {r['cpu_s']:.3f} s = {ratio:.2f}x", "ok": ratio >= 0.97})
        out.append({"name": f"{r['tokens']} tokens: max |log-prob diff|, max |grad diff| / max |grad|", "target": "",
                    "ok": None, "value": f"{r['logp_max_diff']:.1e}, {r['grad_max_diff']:.1e} / {r['grad_max']:.1e}"})
    out.append(interference_row("log-prob runs", result["other_cpu_cores"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="128,512,2048")
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    result = measure([int(x) for x in args.tokens.split(",")], args.reps)
    return finish('logprob_tiles', result, rows)


if __name__ == "__main__":
    raise SystemExit(main())
