"""Trainer callbacks: metrics.jsonl and samples.jsonl, and the rich progress bar.

Both rely only on transformers' TrainerCallback protocol, so every TRL trainer can use them.
"""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from aligntune.run import console as out
from aligntune.run.rundir import RunDir
from aligntune.run.samples import SampleBook

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


class RunRecorder(TrainerCallback):
    """Appends every log to metrics.jsonl (with step and wall time) and sample completions to samples.jsonl."""

    def __init__(self, run_dir: RunDir, book: SampleBook | None, log_samples: int, weights: dict[str, float]):
        self.run_dir, self.book, self.log_samples, self.weights = run_dir, book, log_samples, weights
        self.history: list[dict] = []
        self.first_samples: list[dict] = []
        self.last_samples: list[dict] = []
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.t0, 3), **logs}
        if any(k in logs for k in SUMMARY_KEYS):
            self.history.append(record)  # the trainer's end-of-run summary: kept for summary.json, not a step
            return
        self.history.append(record)
        self.run_dir.log_metrics(record)
        if self.book is not None and self.log_samples:
            rows = self.book.rows(self.log_samples, self.weights)
            for row in rows:
                self.run_dir.log_sample({"step": state.global_step, **row})
            if rows:
                self.first_samples = self.first_samples or rows
                self.last_samples = rows


class RichProgress(TrainerCallback):
    """A progress bar with live metrics; replaces transformers' tqdm and log printer."""

    def __init__(self):
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                 console=out.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, metrics="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs:
            live = out.format_live(logs)
            if live:
                self.progress.update(self.task, metrics=live)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
