"""All aligntune benchmarks in one run: CLI latency (bench/cli_latency.py) and GRPO overhead against
plain TRL (bench/grpo_overhead.py), then one combined table. Takes about 4 minutes on 2 CPU cores.

Run: .venv/bin/python bench/run_all.py [--runs 5] [--steps 30] [--reps 10]
Writes bench/results/cli_latency.json and bench/results/grpo_overhead.json.
"""

from __future__ import annotations

import argparse

import cli_latency
import grpo_overhead
from common import machine, table, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per CLI command (median)")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per repetition")
    parser.add_argument("--reps", type=int, default=10, help="repetitions per side (alternating)")
    args = parser.parse_args()
    cli = cli_latency.measure(args.runs)
    write_json("cli_latency", cli)
    grpo = grpo_overhead.measure(args.steps, args.reps)
    write_json("grpo_overhead", grpo)
    rows = cli_latency.rows(cli) + grpo_overhead.rows(grpo)
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}; CLI medians of {args.runs} runs, "
          f"GRPO {args.reps} repetitions x {args.steps} steps per side")
    print(table(rows))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
