"""The divergence guard's per-step gradient check (train.on_nonfinite), old against new, side by side.

`NonFiniteGuard` checks every gradient before each optimizer step. It used `torch.isfinite(g).all()` per tensor
(four passes and a boolean copy of each); `run.guards.all_finite` takes one sum per tensor and re-checks
element-wise only when a sum is not finite. Gradients shaped like SmolLM2-135M's (tied 49152x576 embedding,
30 layers), in bf16 as a bf16 run on a CPU holds them; the two checks alternate, median of `--reps`.

Run: .venv/bin/python bench/finite_check.py [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from common import table, write_json

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536), (576,), (576,)]
SHAPES = [(49152, 576), *[s for _ in range(30) for s in LAYER], (576,)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    import torch

    from aligntune.run.guards import all_finite

    torch.manual_seed(0)
    grads = [torch.randn(s).to(torch.bfloat16) for s in SHAPES]
    sides = {"isfinite().all() per tensor": lambda: bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()),
             "all_finite (one sum per tensor)": lambda: all_finite(grads)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.reps):
        for name, check in sides.items():
            t0 = time.perf_counter()
            assert check()
            times[name].append(time.perf_counter() - t0)
    old, new = (statistics.median(times[name]) for name in sides)
    rows = [{"name": f"{name}, {sum(g.numel() for g in grads) / 1e6:.0f}M bf16 values", "value": f"{t * 1e3:.1f} ms",
             "target": "", "ok": None} for name, t in zip(sides, (old, new))]
    rows.append({"name": "speed-up, old / new", "value": f"{old / new:.1f}x", "target": "> 1", "ok": old > new})
    print(table(rows))
    write_json("finite_check", {"rows": rows, "ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()}})
    return 0 if old > new else 1


if __name__ == "__main__":
    sys.exit(main())
