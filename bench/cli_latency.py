"""CLI latency: wall time of the `aligntune` console script, median of N runs each (subprocesses).

    aligntune --help                     target <= 0.3 s
    aligntune train --cfg job            target <= 1.5 s
    aligntune train group_size=1         a config error: must exit 2 (<= 1.5 s) without importing torch
    aligntune train experiment=smoke     target <= 20 s (run in a fresh temporary directory)

Run: .venv/bin/python bench/cli_latency.py [--runs 5]
Writes bench/results/cli_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Interference, interference_row, table, write_json

ALIGNTUNE = str(Path(sys.executable).parent / "aligntune")

# name, argv after `aligntune`, target seconds, expected exit code
CASES = [
    ("aligntune --help", ["--help"], 0.3, 0),
    ("aligntune train --cfg job", ["train", "--cfg", "job"], 1.5, 0),
    ("aligntune train group_size=1", ["train", "group_size=1"], 1.5, 2),
    ("aligntune train experiment=smoke", ["train", "experiment=smoke"], 20.0, 0),
]

TORCH_CHECK = ("import sys; from aligntune.cli import main; code = main(['train', 'group_size=1']); "
               "print(code, 'torch' in sys.modules)")


def time_command(argv: list[str], runs: int) -> tuple[list[float], list[int]]:
    times, codes = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="aligntune-bench-") as cwd:
            t0 = time.perf_counter()
            proc = subprocess.run([ALIGNTUNE, *argv], cwd=cwd, capture_output=True)
            times.append(time.perf_counter() - t0)
        codes.append(proc.returncode)
    return times, codes


def torch_imported_on_config_error() -> tuple[int, bool]:
    with tempfile.TemporaryDirectory(prefix="aligntune-bench-") as cwd:
        out = subprocess.run([sys.executable, "-c", TORCH_CHECK], cwd=cwd, capture_output=True, text=True, check=True)
    code, imported = out.stdout.split()
    return int(code), imported == "True"


def measure(runs: int = 5) -> dict:
    watch, cases = Interference(), []
    for name, argv, target, expected in CASES:
        times, codes = time_command(argv, runs)
        median = statistics.median(times)
        cases.append({"name": name, "median_s": round(median, 3), "target_s": target, "times_s": [round(t, 3) for t in times],
                      "exit_codes": codes, "expected_exit": expected,
                      "ok": median <= target and all(c == expected for c in codes)})
    code, imported = torch_imported_on_config_error()
    torch_check = {"name": "config error imports torch (in-process main())", "exit_code": code, "torch_imported": imported,
                   "ok": code == 2 and not imported}
    return {"runs": runs, "cases": cases, "torch_check": torch_check, "other_cpu_cores": round(watch.cores(), 3)}


def rows(result: dict) -> list[dict]:
    out = [{"name": c["name"], "value": f"{c['median_s']:.3f} s (exit {','.join(map(str, sorted(set(c['exit_codes']))))})",
            "target": f"<= {c['target_s']} s, exit {c['expected_exit']}", "ok": c["ok"]} for c in result["cases"]]
    t = result["torch_check"]
    out.append({"name": t["name"], "value": f"exit {t['exit_code']}, torch {'imported' if t['torch_imported'] else 'not imported'}",
                "target": "exit 2, not imported", "ok": t["ok"]})
    return out + [interference_row("CLI runs", result["other_cpu_cores"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    result = measure(parser.parse_args().runs)
    print(table(rows(result)))
    print(f"wrote {write_json('cli_latency', result)}")
    return 0 if all(r["ok"] for r in rows(result)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
