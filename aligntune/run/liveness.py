"""Is a "running" run alive? Its process identity, a heartbeat, and the status readers show.

A run killed by SIGKILL or the OOM killer never writes its own end: summary.json stays "running". So a run records
its process in summary.json (`process`: host, pid, and the pid's start time, which tells a reused pid apart) and a
daemon thread refreshes `<run>/heartbeat` every `BEAT_S` seconds while it lives. Whatever reads a run's status
(`aligntune report`, `compare`, sweep tables, `resume=latest`, `eval`) calls `read_status`, which shows a
"running" run as "crashed" when
- on this host: its process is gone (no such pid, or the pid now belongs to a process started at another time);
- on another host (a shared file system): its heartbeat is older than `STALE_S` (several missed beats);
with its last logged step, its latest checkpoint and the resume command. The run's own summary.json is not
rewritten by readers; `aligntune report --mark-crashed` writes the crashed status into it (`mark_crashed`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from aligntune.run.rundir import HEARTBEAT as HEARTBEAT  # where tests and callers have found it
from aligntune.run.rundir import RunDir, RunFiles

BEAT_S = 30.0  # heartbeat period
STALE_S = 180.0  # a heartbeat this old (6 missed beats) means the process on another host is gone


def _start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot, /proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # fields after the command name; 22nd overall
    except (IndexError, ValueError):
        return None


def identity() -> dict:
    """This process, as summary.json records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_ticks(os.getpid())}


def process_alive(process: dict) -> bool | None:
    """True/False for a process of this host; None when it ran on another host (only its heartbeat can tell)."""
    if process.get("host") != socket.gethostname():
        return None
    pid = process.get("pid")
    if not isinstance(pid, int):
        return None
    ticks = _start_ticks(pid)
    if ticks is None:
        return False
    recorded = process.get("pid_start")
    return recorded is None or ticks == recorded


class Heartbeat:
    """Touches <run>/heartbeat every `period` seconds from a daemon thread until stopped."""

    def __init__(self, run_dir: Path, period: float = BEAT_S):
        self.path = RunFiles(run_dir).heartbeat_file
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            self.path.write_text(f"{time.time():.3f}\n", encoding="utf-8")
        except OSError:
            pass  # the run directory went away: nothing to keep alive

    def start(self) -> None:
        self.beat()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aligntune-heartbeat", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def heartbeat_age(run_dir: Path) -> float | None:
    try:
        return time.time() - float(RunFiles(run_dir).heartbeat_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _last_step(run_dir: Path) -> int:
    steps = [r.get("step") for r in RunFiles(run_dir).metrics()]  # a line the kill cut short is skipped
    return max((s for s in steps if isinstance(s, int)), default=0)


def read_summary(run_dir: str | Path) -> dict:
    """summary.json as written ({} when missing or unreadable)."""
    return RunFiles(run_dir).summary()


def crashed(run_dir: str | Path, summary: dict) -> bool:
    if summary.get("status") != "running" or not isinstance(summary.get("process"), dict):
        return False
    alive = process_alive(summary["process"])
    if alive is not None:
        return not alive
    age = heartbeat_age(Path(run_dir))
    return age is not None and age > STALE_S


def read_status(run_dir: str | Path) -> dict:
    """The run's summary as readers should show it: a "running" run whose process is gone reads "crashed", with
    its last logged step, latest checkpoint and the resume command (None without a checkpoint)."""
    from aligntune.run.checkpoints import latest

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if not crashed(run_dir, summary):
        return summary
    checkpoint = latest(RunFiles(run_dir).checkpoints)
    return {**summary, "status": "crashed", "step": _last_step(run_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "resume": f"aligntune train resume={run_dir}" if checkpoint else None,
            "error": "the process ended without recording why (killed: SIGKILL, the OOM killer, a lost machine)"}


def mark_crashed(run_dir: str | Path) -> bool:
    """Write a crashed run's status into its summary.json; False when the run is not crashed."""
    status = read_status(run_dir)
    if status.get("status") != "crashed":
        return False
    RunDir(run_dir).write_summary(status)
    return True
