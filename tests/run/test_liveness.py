"""Crashed vs running: a run's process and heartbeat, and what readers show (aligntune/run/liveness.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import dead_pid

from aligntune import cli
from aligntune.run import liveness


def _summary(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", **fields}))


def test_a_running_run_whose_process_is_gone_reads_crashed(tmp_path):
    me = liveness.identity()
    alive, dead, reused = tmp_path / "alive", tmp_path / "dead", tmp_path / "reused"
    _summary(alive, process=me)
    _summary(dead, process={**me, "pid": dead_pid()})
    _summary(reused, process={**me, "pid_start": (me["pid_start"] or 0) + 1})  # our pid, another process's start
    (dead / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"ste')  # the last line cut by the kill
    assert liveness.read_status(alive)["status"] == "running"
    status = liveness.read_status(dead)
    assert status["status"] == "crashed" and status["step"] == 2 and status["checkpoint"] is None
    assert status["resume"] is None and "SIGKILL" in status["error"]
    assert liveness.read_status(reused)["status"] == "crashed"
    assert json.loads((dead / "summary.json").read_text())["status"] == "running", "readers do not rewrite it"
    assert liveness.mark_crashed(dead) and json.loads((dead / "summary.json").read_text())["status"] == "crashed"
    assert not liveness.mark_crashed(alive)


def test_a_run_on_another_host_is_judged_by_its_heartbeat(tmp_path):
    run = tmp_path / "run"
    _summary(run, process={"host": "elsewhere", "pid": 1, "pid_start": 1})
    assert liveness.read_status(run)["status"] == "running"  # no heartbeat at all: nothing says it died
    (run / liveness.HEARTBEAT).write_text(f"{time.time() - 10}\n")
    assert liveness.read_status(run)["status"] == "running"
    (run / liveness.HEARTBEAT).write_text(f"{time.time() - liveness.STALE_S - 1}\n")
    assert liveness.read_status(run)["status"] == "crashed"


def test_the_heartbeat_beats_until_stopped(tmp_path):
    beat = liveness.Heartbeat(tmp_path, period=0.05)
    beat.start()
    first = float((tmp_path / liveness.HEARTBEAT).read_text())
    time.sleep(0.3)
    assert float((tmp_path / liveness.HEARTBEAT).read_text()) > first
    beat.stop()
    last = (tmp_path / liveness.HEARTBEAT).read_text()
    time.sleep(0.15)
    assert (tmp_path / liveness.HEARTBEAT).read_text() == last


def test_a_live_run_is_not_resumed_twice(tmp_path, monkeypatch, capsys):
    from aligntune.run import resume

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-12-01" / "10-00-00_live"
    _summary(run, process=liveness.identity())
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(Exception, match="no unfinished run"):
        resume.find_run("latest", tmp_path / "outputs")  # the only candidate is alive
    assert cli.main(["train", f"resume={run}"]) == 2
    assert "is still running (pid" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow  # ~25 s idle: a fresh aligntune process, then 28 resumed steps
def test_kill_9_mid_run_reads_crashed_and_resume_latest_completes_without_losing_a_step(tmp_path, monkeypatch, capsys):
    """A real SIGKILL of the aligntune command after its first checkpoint: summary.json still says running, every
    reader shows crashed with the resume command, and resume=latest ends with each step logged exactly once."""
    from aligntune.run import report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "write_run_report_or_warn", lambda run_dir: None)
    run = tmp_path / "outputs" / "2026-12-01" / "10-00-00_kill"
    args = ["experiment=smoke", "train.batch_size=2", "group_size=4", "algorithm.max_completion_length=6",
            "train.max_steps=30", "train.save_steps=2", "train.log_samples=0"]
    env = {**os.environ, "ALIGNTUNE_TRACEBACK": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "aligntune.cli", "train", *args, f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "checkpoint-2").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    status = report.read_summary(run)
    assert status["status"] == "crashed" and status["resume"] == f"aligntune train resume={run}"
    assert cli.main(["report", str(run)]) == 0
    assert "crashed" in capsys.readouterr().out
    assert cli.main(["train", "resume=latest"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 31)), "a step was lost or repeated"
