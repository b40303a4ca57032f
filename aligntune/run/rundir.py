"""The run directory: what a run leaves behind, and its state at any moment.

    config.yaml      the resolved config (real keys, after shortcuts)   overrides.yaml  what the user typed
    train.log        everything logged                                  metrics.jsonl   one line per logging step
    samples.jsonl    sample completions with their rewards              model/          final model + tokenizer (HF format)
    summary.json     status (running | completed | interrupted | failed), final metrics, wall time, the process,
                     exit_code when a sweep job failed (the sweep exits with it)
    heartbeat        refreshed while the run lives (aligntune.run.liveness: readers show a dead "running" run as crashed)
    checkpoints/     checkpoint-<step>/ (aligntune.run.checkpoints), when written

summary.json is written atomically and says "completed" only after the final model is saved.
In a multi-process run only global rank 0 writes (`main=False` elsewhere: every write is skipped).
A resumed run keeps its directory: metrics and samples after the checkpoint's step are dropped, then
appended to again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from aligntune.config.schema import RunConfig


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self.metrics = self.path / "metrics.jsonl"
        self.samples = self.path / "samples.jsonl"
        self.summary = self.path / "summary.json"
        self.model = self.path / "model"
        self.checkpoints = self.path / "checkpoints"
        self.started = time.time()
        self.facts: dict = {}  # what every summary.json of this run states (process, device, compute_dtype)
        self.heartbeat = None

    def record(self, **facts) -> None:
        """Facts of the run (e.g. device, compute_dtype) written into summary.json now and in every later state."""
        self.facts.update(facts)
        if self.main and self.summary.is_file():
            write_json_atomic(self.summary, {**json.loads(self.summary.read_text(encoding="utf-8")), **facts})

    def _write_summary(self, summary: dict) -> None:
        if self.main:
            write_json_atomic(self.summary, {**summary, **self.facts})

    def _alive(self) -> None:
        """Record this process and start the heartbeat (aligntune.run.liveness)."""
        from aligntune.run import liveness

        self.facts["process"] = liveness.identity()
        if self.heartbeat is None:
            self.heartbeat = liveness.Heartbeat(self.path)
            self.heartbeat.start()

    def _ended(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    def start(self, run: RunConfig, overrides: list[str] | None) -> None:
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        (self.path / "config.yaml").write_text(yaml.safe_dump(asdict(run), sort_keys=False), encoding="utf-8")
        (self.path / "overrides.yaml").write_text(yaml.safe_dump(list(overrides or [])), encoding="utf-8")
        for f in (self.metrics, self.samples):
            f.write_text("", encoding="utf-8")
        self._alive()
        self._write_summary({"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def resume(self, run: RunConfig, overrides: list[str] | None, step: int) -> list[dict]:
        """Continue in this directory from a checkpoint at `step`: lines logged after it are dropped (the resumed
        run logs them again). Returns the metric records kept, for the run's final summary."""
        self.started = time.time()
        kept: list[dict] = []
        for f in (self.metrics, self.samples):
            lines = f.read_text(encoding="utf-8").splitlines() if f.is_file() else []
            records = [json.loads(line) for line in lines if line.strip()]
            records = [r for r in records if r.get("step", 0) <= step]
            if f == self.metrics:
                kept = records
            if not self.main:  # other processes of a distributed run only read
                continue
            f.write_text("".join(json.dumps(r, default=float) + "\n" for r in records), encoding="utf-8")
        if not self.main:
            return kept
        (self.path / "config.yaml").write_text(yaml.safe_dump(asdict(run), sort_keys=False), encoding="utf-8")
        self._alive()
        self._write_summary({"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "resumed_from_step": step})
        return kept

    def interrupt(self, step: int, signal_name: str, checkpoint: Path | None) -> dict:
        summary = {"status": "interrupted", "signal": signal_name, "step": step,
                   "checkpoint": str(checkpoint) if checkpoint else None,
                   "resume": f"aligntune train resume={self.path}" if checkpoint else None,
                   "wall_time_s": round(time.time() - self.started, 3)}
        self._ended()
        self._write_summary(summary)
        return {**summary, **self.facts}

    def finish(self, metrics: dict) -> dict:
        summary = {"status": "completed", "wall_time_s": round(time.time() - self.started, 3), **metrics}
        self._ended()
        self._write_summary(summary)
        return {**summary, **self.facts}

    def fail(self, error: BaseException) -> None:
        self._ended()
        self._write_summary({"status": "failed", "error": f"{type(error).__name__}: {error}",
                             "wall_time_s": round(time.time() - self.started, 3)})

    def exit_code(self) -> int:
        """The exit code this run stands for, from its summary.json: the `exit_code` recorded there (a sweep job's,
        cli._job_failed), else 0 when completed, 130 when interrupted, 1 otherwise (failed, or no summary at all)."""
        from aligntune.errors import EXIT_FAILURE, EXIT_INTERRUPTED

        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return EXIT_FAILURE
        if isinstance(summary.get("exit_code"), int):
            return summary["exit_code"]
        return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(summary.get("status"), EXIT_FAILURE)

    def append(self, path: Path, record: dict) -> None:
        if not self.main:
            return
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
