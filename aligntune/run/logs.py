"""Logging: everything to <run dir>/train.log; the console shows aligntune's rich output only,
unless `verbose=true`. Under the CLI, Hydra's job_logging config installs the file handler."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(run_dir: Path, verbose: bool) -> None:
    root = logging.getLogger()
    log_file = str((run_dir / "train.log").resolve())
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == log_file for h in root.handlers):
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings from transformers/TRL land in train.log
    warnings.simplefilter("default")

    import datasets
    import transformers

    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.set_verbosity_info()
    datasets.utils.logging.set_verbosity_warning()
    engine_logger = logging.getLogger("datasets")  # its errors go to train.log; aligntune reports them itself
    for h in [h for h in engine_logger.handlers if type(h) is logging.StreamHandler]:
        engine_logger.removeHandler(h)
    datasets.utils.logging.enable_propagation()
    datasets.disable_progress_bars()
    if verbose:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(FORMAT))
        console.setLevel(logging.INFO)
        root.addHandler(console)
        transformers.utils.logging.enable_progress_bar()
    else:
        transformers.utils.logging.disable_progress_bar()


def quiet_engines() -> None:
    """No progress bars or info logs from transformers/datasets on the console (commands outside a run)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
