"""Experiment trackers (`logger=tensorboard`, `logger=[tensorboard,wandb]`), through transformers' own
reporting integrations: TRL trainers get them from `TrainingArguments.report_to` like any Trainer, and
the native PPO engine builds the same callbacks from its own `TrainingArguments` (`integration_callbacks`),
so every tracker sees the same metric names, whichever engine ran.

Where they write: TensorBoard event files go to `<run dir>/tensorboard/`; wandb, MLflow and Trackio
follow their own settings (WANDB_MODE=offline, WANDB_DIR, WANDB_PROJECT, MLFLOW_TRACKING_URI, ...).
Each tracker run is named after the run directory; Trackio's project is "aligntune".

Nothing here imports torch or the trackers: the preflight only checks that the packages are installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aligntune.errors import ConfigError

# logger name (schema.TRACKERS, which checks the names) -> (the modules transformers' integration can use, the
# pyproject extra that installs one)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
}
PROJECT = "aligntune"


def check_installed(names: list[str]) -> None:
    """Each chosen tracker's package is importable, or one paragraph says what to install."""
    for name in names:
        modules, extra = TRACKERS[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise ConfigError(f"logger={name} needs the {modules[0]} package, which is not installed.",
                              f"Install it with: pip install 'aligntune[{extra}]' (or drop {name} from logger).")


def report_args(names: list[str], run_name: str) -> dict:
    """TrainingArguments fields that switch the trackers on: report_to, run_name, project."""
    return {"report_to": list(names) or "none", "run_name": run_name, "project": PROJECT}


def integration_callbacks(args) -> list:
    """Instances of transformers' tracker callbacks for `args.report_to`, as transformers' Trainer makes
    them; for engines that are not a Trainer (the native PPO engine)."""
    from transformers.integrations import get_reporting_integration_callbacks

    return [cls() for cls in get_reporting_integration_callbacks(args.report_to)]


def place(callbacks, run_dir: str | Path) -> None:
    """Point TensorBoard at <run dir>/tensorboard (transformers' default is inside the engine's output_dir)."""
    import os

    from transformers.integrations import TensorBoardCallback

    if os.environ.get("TENSORBOARD_LOGGING_DIR"):  # the user's own choice wins
        return
    for cb in callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(Path(run_dir) / "tensorboard")


def finish(names: list[str], failed: bool = False) -> None:
    """End the tracker runs a job opened. transformers ends MLflow's and Trackio's runs at on_train_end but leaves
    wandb's open (and its next `wandb.init` would reuse it): without this, the jobs of a sweep run in one process
    would all log into the first job's wandb run, and a failed run would not be marked failed."""
    import sys

    wandb = sys.modules.get("wandb") if "wandb" in names else None
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
