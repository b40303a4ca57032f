"""Helpers shared by the benchmark scripts: the results directory, JSON output and the table printer."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


class Interference:
    """CPU other processes used while a benchmark ran, in cores (0.0 = the machine was ours alone).

    All busy CPU time of the machine (/proc/stat, including time the hypervisor stole) minus this
    process's and its waited-for children's. Timings taken with more than ~0.1 cores of it are suspect.
    """

    def __init__(self):
        from aligntune.run.threads import busy_seconds, own_seconds  # the counters a run's other-load warning reads

        self.busy, self.own = busy_seconds, own_seconds
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_seconds(), own_seconds()

    def cores(self) -> float:
        return ((self.busy() - self.busy0) - (self.own() - self.own0)) / (time.perf_counter() - self.t0)


def interference_row(what: str, cores: float, limit: float = 0.1) -> dict:
    return {"name": f"{what}: CPU used by other processes", "value": f"{cores:.2f} cores", "target": f"<= {limit}",
            "ok": cores <= limit}


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def table(rows: list[dict]) -> str:
    """rows: {name, value, target, ok}; value and target are strings, ok is True, False or None (information only)."""
    head = ("benchmark", "measured", "target", "result")
    cells = [head] + [(r["name"], r["value"], r["target"], {True: "PASS", False: "FAIL", None: ""}[r["ok"]]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = lambda c: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(c) for c in cells[1:]])


def finish(name: str, result: dict, rows) -> int:
    """The end of a benchmark's main(): print `rows(result)` as a table, write bench/results/<name>.json, and return
    the exit code (1 if any row failed; rows with ok=None are information only)."""
    checked = rows(result)
    print(table(checked))
    print(f"wrote {write_json(name, result)}")
    return 0 if all(r["ok"] is not False for r in checked) else 1
