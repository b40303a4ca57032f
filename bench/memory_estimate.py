"""The memory pre-flight against the measured peak: estimate + the process's resident memory when the estimate is
made (the libraries), side by side with the peak RSS of the same run (the kernel's high-water mark, from wait4).

Rows (issue #20): experiment=smoke, experiment=dpo_smoke, DPO on SmolLM2-135M (full weights, 3 steps), and with
--default-job the default `aligntune train` (about 3 minutes). Target: the estimate within +-25% of the peak.
Peak RSS does not depend on the machine's load, so this benchmark may run beside others (only slower).

Run: .venv/bin/python bench/memory_estimate.py [--default-job]
Writes bench/results/memory_estimate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table, write_json

ALIGNTUNE = str(Path(sys.executable).parent / "aligntune")
TOLERANCE = 0.25
CASES = {
    "experiment=smoke": ["experiment=smoke"],
    "experiment=dpo_smoke": ["experiment=dpo_smoke"],
    "DPO SmolLM2-135M, full weights": ["model=smollm2_135m", "algorithm=dpo", "dataset=prefs_chat", "batch_size=4",
                                       "algorithm.max_length=256", "model.lora.enabled=false", "max_steps=3",
                                       "eval.after_training=false"],
}
DEFAULT_JOB = {"the default job": []}


def measure(name: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="aligntune-mem-") as cwd:
        t0 = time.perf_counter()
        with open(Path(cwd, "output.txt"), "w") as out:
            proc = subprocess.Popen([ALIGNTUNE, "train", "hydra.run.dir=run", *overrides], cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        summary_path = Path(cwd, "run", "summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if code != 0:
            sys.stderr.write(Path(cwd, "output.txt").read_text()[-3000:])
    peak = usage.ru_maxrss / 2**20  # KiB -> GiB
    estimate, baseline = summary.get("memory_estimate_gib"), summary.get("memory_baseline_gib")
    predicted = None if estimate is None or baseline is None else estimate + baseline
    return {"case": name, "exit_code": code, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(peak, 3),
            "estimate_gib": estimate, "baseline_gib": baseline,
            "predicted_gib": None if predicted is None else round(predicted, 3),
            "ratio": None if predicted is None else round(predicted / peak, 3)}


def rows(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        ok = r["exit_code"] == 0 and r["ratio"] is not None and abs(r["ratio"] - 1) <= TOLERANCE
        value = (f"{r['predicted_gib']:.2f} GiB ({r['estimate_gib']:.2f} + libraries {r['baseline_gib']:.2f}) vs "
                 f"{r['peak_rss_gib']:.2f} GiB: {r['ratio']:.2f}x" if r["ratio"] is not None else f"exit {r['exit_code']}")
        out.append({"name": f"{r['case']}: estimate vs peak RSS", "value": value,
                    "target": f"{1 - TOLERANCE:.2f}x-{1 + TOLERANCE:.2f}x", "ok": ok})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-job", action="store_true", help="also the default job (about 3 minutes)")
    args = parser.parse_args()
    cases = {**CASES, **(DEFAULT_JOB if args.default_job else {})}
    results = [measure(name, overrides) for name, overrides in cases.items()]
    out = rows(results)
    print(table(out))
    write_json("memory_estimate", {"runs": results, "rows": out})
    return 0 if all(r["ok"] for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
