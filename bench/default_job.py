"""The default main job, as a user first runs it: `aligntune train` with no arguments, in a fresh
directory (GRPO on SmolLM2-135M-Instruct and the shipped `arith` task, ending with the held-out
evaluation of the base and the trained model side by side).

    wall time of the whole command        target <= 300 s (5 minutes) on 2 CPU cores
    peak resident memory (RSS)            target <= 6 GiB
    held-out reward, base -> trained      target: trained > base (the margin is printed)

Peak RSS is the kernel's high-water mark of the command's process (its rusage from wait4); the rewards
come from the run directory's summary.json (eval/base/*, eval/trained/*).

Run: .venv/bin/python bench/default_job.py [--seeds 42] [-- extra overrides]
Writes bench/results/default_job.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Interference, interference_row, table, write_json

ALIGNTUNE = str(Path(sys.executable).parent / "aligntune")
WALL_TARGET_S = 300.0
RSS_TARGET_GIB = 6.0


def run_once(seed: int, extra: list[str]) -> dict:
    """One `aligntune train` in a fresh directory: wall time, peak RSS, and the evaluation it printed."""
    with tempfile.TemporaryDirectory(prefix="aligntune-bench-") as cwd:
        argv = [ALIGNTUNE, "train", f"seed={seed}", "hydra.run.dir=run", *extra]
        log = Path(cwd, "output.txt")
        with log.open("w") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS (KiB on Linux)
            wall = time.perf_counter() - t0
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        peak_gib = usage.ru_maxrss / 2**20
        summary_path = Path(cwd, "run", "summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if code != 0:
            sys.stderr.write(log.read_text()[-4000:])
    side = {s: {k.split("/", 2)[2]: v for k, v in summary.items() if k.startswith(f"eval/{s}/")} for s in ("base", "trained")}
    phases = {k: round(v, 3) for k, v in summary.items() if k.startswith("timing/") or k == "train_runtime"}
    return {"seed": seed, "exit_code": code, "wall_s": round(wall, 1), "peak_rss_gib": round(peak_gib, 2),
            "status": summary.get("status"), "steps": summary.get("steps"), "eval": side, "phases": phases}


def rows(result: dict) -> list[dict]:
    out = []
    for r in result["runs"]:
        base, trained = r["eval"]["base"].get("reward"), r["eval"]["trained"].get("reward")
        n = r["eval"]["base"].get("prompts")
        tag = f"seed {r['seed']}"
        out.append({"name": f"aligntune train ({tag}): wall time", "value": f"{r['wall_s']:.1f} s (exit {r['exit_code']})",
                    "target": f"<= {WALL_TARGET_S:.0f} s, exit 0", "ok": r["wall_s"] <= WALL_TARGET_S and r["exit_code"] == 0})
        out.append({"name": f"aligntune train ({tag}): peak RSS", "value": f"{r['peak_rss_gib']:.2f} GiB",
                    "target": f"<= {RSS_TARGET_GIB:.0f} GiB", "ok": r["peak_rss_gib"] <= RSS_TARGET_GIB})
        if base is None or trained is None:
            out.append({"name": f"held-out reward ({tag})", "value": "not reported", "target": "trained > base", "ok": False})
            continue
        # binomial standard error of the difference of two means over the same n prompts (an upper bound:
        # the two are positively correlated on shared prompts)
        se = math.sqrt(base * (1 - base) / n + trained * (1 - trained) / n) if 0 <= base <= 1 and 0 <= trained <= 1 else float("nan")
        out.append({"name": f"held-out reward, base -> trained ({tag}, {n} prompts)",
                    "value": f"{base:.3f} -> {trained:.3f} ({trained - base:+.3f}, {(trained - base) / se:.1f} SE)",
                    "target": "trained > base", "ok": trained > base})
        phases = r.get("phases", {})
        if phases:
            steps = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in phases.items() if k.startswith("timing/") and v >= 0.05)
            out.append({"name": f"  training ({tag}): s per step by phase", "target": "", "ok": None,
                        "value": f"{steps}; {phases.get('train_runtime', 0):.1f} s in all"})
        length = (r["eval"]["base"].get("completions/mean_length"), r["eval"]["trained"].get("completions/mean_length"))
        if None not in length:
            out.append({"name": f"  mean completion length ({tag})", "value": f"{length[0]:.1f} -> {length[1]:.1f} tokens",
                        "target": "", "ok": None})
    return out + [interference_row("default job", result["other_cpu_cores"])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed (each about 4 minutes)")
    parser.add_argument("overrides", nargs="*", help="extra `aligntune train` overrides (after --)")
    args = parser.parse_args()
    watch = Interference()
    result = {"command": "aligntune train", "overrides": args.overrides, "runs": []}
    for seed in args.seeds:
        result["runs"].append(run_once(seed, args.overrides))
        print(json.dumps(result["runs"][-1]), flush=True)
    result["other_cpu_cores"] = round(watch.cores(), 3)
    measured = rows(result)
    print(table(measured))
    print(f"wrote {write_json('default_job', result)}")
    return 0 if all(r["ok"] is not False for r in measured) else 1


if __name__ == "__main__":
    raise SystemExit(main())
