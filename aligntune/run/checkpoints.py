"""Checkpoints: transformers' own (model or adapter, optimizer, scheduler, RNG states, trainer state with the
global step and data position), made atomic, plus the run's config; and clean interruption.

    <run dir>/checkpoints/checkpoint-<step>/   what Trainer._save_checkpoint writes, + config.yaml
    <run dir>/checkpoints/.staging/            where it is written first; renamed into place when complete

A crash mid-write leaves only .staging/, which nothing reads (transformers' get_last_checkpoint and
`latest` below match checkpoint-<n> only), so no checkpoint ever looks valid without being complete.
Resuming is transformers' `Trainer.train(resume_from_checkpoint=...)`: it restores all of the above and
skips the batches already seen, so a resumed run continues the same data order, LR schedule and RNG stream.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

from aligntune.run.rundir import CONFIG

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest(checkpoints: Path) -> Path | None:
    """The complete checkpoint with the highest step in `checkpoints`, or None."""
    if not checkpoints.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def step_of(checkpoint: Path) -> int:
    return int(CHECKPOINT.match(checkpoint.name).group(1))


def make_atomic(trainer, config_file: Path) -> None:
    """Route `trainer`'s checkpoint writes through a staging directory and rename each into place when done."""
    from transformers.trainer_utils import rotate_checkpoints

    from aligntune import patches

    def atomic_save(save, model, trial):
        final_root = Path(trainer.args.output_dir)
        staging_root = final_root / ".staging"
        shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a crash mid-write
        staging_root.mkdir(parents=True)
        with patches.output_dir(trainer, staging_root):
            save(model, trial)
        written = staging_root / f"checkpoint-{trainer.state.global_step}"
        if config_file.is_file():
            shutil.copy(config_file, written / CONFIG)
        target = final_root / written.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(written, target)  # the checkpoint appears complete, or not at all
        shutil.rmtree(staging_root, ignore_errors=True)
        if trainer.args.should_save:
            rotate_checkpoints(output_dir=str(final_root), save_total_limit=trainer.args.save_total_limit,
                               best_model_checkpoint=None, use_mtime=False)

    patches.wrap_save_checkpoint(trainer, atomic_save)


class InterruptGuard(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the current step (GRPO/RLOO: rollout), write a checkpoint, stop. A second Ctrl-C
    exits at once.

    Installed for the duration of `train()` (`with guard:`); signal handlers only work in the main thread,
    elsewhere the guard does nothing and the default behaviour stays.
    """

    def __init__(self, can_checkpoint: bool, rollout_steps: int = 1):
        self.can_checkpoint = can_checkpoint
        self.rollout_steps = rollout_steps  # GRPO/RLOO learn one rollout in several steps: stop between rollouts
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._first)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _first(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        what = "saving a checkpoint" if self.can_checkpoint else "stopping"
        current = "step" if self.rollout_steps == 1 else f"rollout ({self.rollout_steps} optimizer steps each)"
        print(f"\n{self.signal_name} received: finishing the current {current}, then {what}. "
              "Press Ctrl-C again to exit at once.", file=sys.stderr, flush=True)
        for sig in self._previous:
            signal.signal(sig, self._second)

    def _second(self, signum, frame):
        raise KeyboardInterrupt

    @property
    def interrupted(self) -> bool:
        return self.signal_name is not None

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted and (state.global_step % self.rollout_steps == 0 or state.global_step >= state.max_steps):
            control.should_training_stop = True
            control.should_save = self.can_checkpoint
        return control
