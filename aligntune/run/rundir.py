"""The run directory: what a run leaves behind, and its state at any moment. This module is its one owner: every
other module reads and writes these files through `RunFiles` (read-only, for any run: finished, crashed,
half-written, or one written by an older aligntune) and `RunDir` (the writer a live run holds).

    config.yaml      the resolved config (real keys, after shortcuts)   overrides.yaml  what config.yaml was composed from
    train.log        everything logged                                  metrics.jsonl   one line per logging step
    samples.jsonl    sample completions with their rewards              model/          final model + tokenizer (HF format)
    summary.json     status (running | completed | interrupted | failed), final metrics, wall time, the process,
                     exit_code when a sweep job failed (the sweep exits with it)
    heartbeat        refreshed while the run lives (aligntune.run.liveness: readers show a dead "running" run as crashed)
    checkpoints/     checkpoint-<step>/ (aligntune.run.checkpoints), when written; each holds a copy of config.yaml
    model_merged/    a LoRA run's adapter merged into its fp32 base, when asked for
    .hydra/          Hydra's own record of a CLI run (config.yaml, hydra.yaml, overrides.yaml)

summary.json is written atomically and says "completed" only after the final model is saved.
In a multi-process run only global rank 0 writes (`main=False` elsewhere: every write is skipped).
A resumed run keeps its directory: metrics and samples after the checkpoint's step are dropped, then
appended to again; config.yaml and overrides.yaml are rewritten with what the resumed run was composed from.

Reading the overrides (one order, for eval/generate, resume, reports and sweep tables): overrides.yaml first,
aligntune's record: the job's overrides plus its config search path (`hydra.searchpath=[...]`), which Hydra's
record lacks; then .hydra/overrides.yaml, only where overrides.yaml is missing or unreadable (a directory not
written by RunDir). Before this order, `resume=` read .hydra/overrides.yaml first (it holds a resumed run's
changes); so that one order serves resume too, RunDir.resume now rewrites overrides.yaml with the resumed run's
overrides (less `resume=` and `resume_force=`). A run resumed by an older aligntune and resumed again reads its
first overrides; only keys a resume may change (or resume_force=true) can differ there.

Readers are tolerant: a missing or unreadable summary.json reads {}, overrides [], config.yaml None, and a
metrics/samples line cut short by a kill is skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from aligntune.config.schema import RunConfig

SUMMARY = "summary.json"
CONFIG = "config.yaml"
OVERRIDES = "overrides.yaml"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOG = "train.log"
HEARTBEAT = "heartbeat"
MODEL = "model"
MODEL_MERGED = "model_merged"
CHECKPOINTS = "checkpoints"
HYDRA = ".hydra"
# The files a run's report.md links to, in that order.
LINKED_FILES = [SUMMARY, CONFIG, OVERRIDES, METRICS, SAMPLES, LOG]
_RESUME_KEYS = ("resume=", "resume_force=")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a .jsonl file ([] when missing); a line that does not parse (the last one, cut by a kill) is
    skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _yaml_list(path: Path) -> list[str] | None:
    """A YAML list of strings; None when the file is missing or is not one."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if loaded is None:
        return []
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def find(root: str | Path, pattern: str = "**") -> list[Path]:
    """The run directories (those with a summary.json) matching `pattern` under `root` ("**": at any depth;
    "*/*": outputs/<date>/<time>), Hydra's .hydra folders left out; in no particular order."""
    return [p.parent for p in Path(root).glob(f"{pattern}/{SUMMARY}") if HYDRA not in p.relative_to(root).parts]


class RunFiles:
    """A read-only view of a run directory: nothing is written, nothing started."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.summary_file = self.path / SUMMARY
        self.config_file = self.path / CONFIG
        self.overrides_file = self.path / OVERRIDES
        self.hydra_overrides_file = self.path / HYDRA / OVERRIDES
        self.metrics_file = self.path / METRICS
        self.samples_file = self.path / SAMPLES
        self.log_file = self.path / LOG
        self.heartbeat_file = self.path / HEARTBEAT
        self.model = self.path / MODEL
        self.model_merged = self.path / MODEL_MERGED
        self.checkpoints = self.path / CHECKPOINTS

    def is_run(self) -> bool:
        """A run directory: one with a summary.json."""
        return self.summary_file.is_file()

    def summary(self) -> dict:
        """summary.json as written ({} when missing or unreadable). Readers that show a run want `status()`."""
        try:
            loaded = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def status(self) -> dict:
        """summary.json as readers should show it: a "running" run whose process is gone reads "crashed"."""
        from aligntune.run.liveness import read_status

        return read_status(self.path)

    def exit_code(self) -> int:
        """The exit code this run stands for, from its summary.json: the `exit_code` recorded there (a sweep job's,
        cli._job_failed), else 0 when completed, 130 when interrupted, 1 otherwise (failed, or no summary at all)."""
        from aligntune.errors import EXIT_FAILURE, EXIT_INTERRUPTED

        summary = self.summary()
        if isinstance(summary.get("exit_code"), int):
            return summary["exit_code"]
        return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(summary.get("status"), EXIT_FAILURE)

    def overrides(self) -> list[str]:
        """The overrides config.yaml was composed from (the reading order is in the module docstring)."""
        for path in (self.overrides_file, self.hydra_overrides_file):
            found = _yaml_list(path)
            if found is not None:
                return found
        return []

    def config(self) -> dict | None:
        """The resolved config the run ran (config.yaml) as a dict; None when missing or unreadable."""
        try:
            loaded = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def metrics(self) -> list[dict]:
        """metrics.jsonl's records, in order (a torn last line skipped)."""
        return read_jsonl(self.metrics_file)

    def samples(self) -> list[dict]:
        """samples.jsonl's records, in order (a torn last line skipped)."""
        return read_jsonl(self.samples_file)

    def weights(self) -> Path:
        """The folder that holds the model: the run's model/, else the path itself (a model directory given as is)."""
        return self.model if self.model.is_dir() else self.path

    def merged_weights(self) -> Path | None:
        """A LoRA run's model_merged/ (its adapter merged into the fp32 base), for a run directory or its model/
        folder; None where there is none."""
        run = self.path.parent if self.path.name == MODEL and not self.model.is_dir() else self.path
        merged = run / MODEL_MERGED
        return merged if (merged / "config.json").is_file() else None

    def linked_files(self) -> list[str]:
        """The LINKED_FILES this run has."""
        return [name for name in LINKED_FILES if (self.path / name).is_file()]


class RunDir(RunFiles):
    """The writer a run holds (its reads are RunFiles')."""

    def __init__(self, path: str | Path, main: bool = True):
        super().__init__(path)
        self.main = main
        self.started = time.time()
        self.facts: dict = {}  # what every summary.json of this run states (process, device, compute_dtype)
        self.heartbeat = None

    def record(self, **facts) -> None:
        """Facts of the run (e.g. device, compute_dtype) written into summary.json now and in every later state."""
        self.facts.update(facts)
        if self.main and self.summary_file.is_file():
            write_json_atomic(self.summary_file, {**json.loads(self.summary_file.read_text(encoding="utf-8")), **facts})

    def _write_summary(self, summary: dict) -> None:
        if self.main:
            write_json_atomic(self.summary_file, {**summary, **self.facts})

    def write_summary(self, summary: dict) -> None:
        """Replace summary.json with `summary` as given (e.g. liveness.mark_crashed); rank 0 only."""
        if self.main:
            write_json_atomic(self.summary_file, summary)

    def _write_config(self, run: RunConfig, overrides: list[str] | None) -> None:
        self.config_file.write_text(yaml.safe_dump(asdict(run), sort_keys=False), encoding="utf-8")
        self.overrides_file.write_text(yaml.safe_dump(list(overrides or [])), encoding="utf-8")

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
        self._write_config(run, overrides)
        for f in (self.metrics_file, self.samples_file):
            f.write_text("", encoding="utf-8")
        self._alive()
        self._write_summary({"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def resume(self, run: RunConfig, overrides: list[str] | None, step: int) -> list[dict]:
        """Continue in this directory from a checkpoint at `step`: lines logged after it are dropped (the resumed
        run logs them again). Returns the metric records kept, for the run's final summary."""
        self.started = time.time()
        kept: list[dict] = []
        for f in (self.metrics_file, self.samples_file):
            lines = f.read_text(encoding="utf-8").splitlines() if f.is_file() else []
            records = [json.loads(line) for line in lines if line.strip()]
            records = [r for r in records if r.get("step", 0) <= step]
            if f == self.metrics_file:
                kept = records
            if not self.main:  # other processes of a distributed run only read
                continue
            f.write_text("".join(json.dumps(r, default=float) + "\n" for r in records), encoding="utf-8")
        if not self.main:
            return kept
        self._write_config(run, [o for o in overrides or [] if not o.startswith(_RESUME_KEYS)])
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

    def fail_unless_failed(self, error: BaseException) -> None:
        """Mark the run failed unless its summary.json already says so (a failure before the run directory was set
        up, or processes that died without writing why)."""
        if self.summary().get("status") != "failed":
            self.path.mkdir(parents=True, exist_ok=True)
            self.fail(error)

    def append(self, path: Path, record: dict) -> None:
        if not self.main:
            return
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def log_metrics(self, record: dict) -> None:
        """One line of metrics.jsonl."""
        self.append(self.metrics_file, record)

    def log_sample(self, record: dict) -> None:
        """One line of samples.jsonl."""
        self.append(self.samples_file, record)
