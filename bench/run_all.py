"""The benchmark suite in one run: CLI latency and smoke wall time (bench/cli_latency.py), GRPO wrapper
overhead against plain TRL (bench/grpo_overhead.py), and SmolLM2-135M GRPO/DPO speed against TRL's
defaults plus the roofline (bench/precision_speed.py), then one combined table. About 13 minutes on
2 CPU cores (target: 15).

Run: .venv/bin/python bench/run_all.py [--runs 5] [--steps 30] [--reps 10] [--speed-steps 3] [--speed-reps 1]
Writes bench/results/{cli_latency,grpo_overhead,precision_speed}.json. The default job (bench/default_job.py,
about 4 minutes per seed) is separate.
"""

from __future__ import annotations

import argparse

import cli_latency
import grpo_overhead
import precision_speed
from common import machine, table, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per CLI command (median)")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per overhead repetition")
    parser.add_argument("--reps", type=int, default=10, help="overhead repetitions per side (alternating)")
    parser.add_argument("--speed-steps", type=int, default=3, help="SmolLM2 steps per run (the first is warm-up)")
    parser.add_argument("--speed-reps", type=int, default=1, help="SmolLM2 runs per side")
    parser.add_argument("--speed-timeout", type=float, default=150, help="seconds per SmolLM2 run before it is stopped")
    args = parser.parse_args()
    cli = cli_latency.measure(args.runs)
    write_json("cli_latency", cli)
    grpo = grpo_overhead.measure(args.steps, args.reps)
    write_json("grpo_overhead", grpo)
    speed = precision_speed.measure(args.speed_steps, args.speed_reps, timeout=args.speed_timeout)
    write_json("precision_speed", speed)
    rows = cli_latency.rows(cli) + grpo_overhead.rows(grpo) + precision_speed.rows(speed)
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}; CLI medians of {args.runs} runs, "
          f"GRPO overhead {args.reps} repetitions x {args.steps} steps per side, SmolLM2 {args.speed_reps} run(s) x "
          f"{args.speed_steps} steps per side")
    print(table(rows))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
