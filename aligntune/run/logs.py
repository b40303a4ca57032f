"""Logging: everything to <run dir>/train.log; the console shows aligntune's rich output only,
unless `verbose=true`. Under the CLI, Hydra's job_logging config installs the file handler."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(run_dir: Path, verbose: bool) -> None:
    root = logging.getLogger()
    from aligntune.run.rundir import RunFiles

    log_file = str(RunFiles(run_dir).log_file.resolve())
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
    from aligntune.run import console as shown

    shown.engine_bars = verbose  # one-time steps (aligntune.run.console.one_time_step) keep the bars with -v only
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

    from aligntune.run import console

    console.engine_bars = False

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


@contextlib.contextmanager
def progress_bars_off():
    """No progress bar from transformers, datasets or huggingface_hub while inside (their switches are restored
    after), and stderr goes nowhere: transformers' GGUF loader draws a tqdm bar of its own that none of their
    switches turns off. Errors still propagate as exceptions; logged warnings still reach train.log."""
    import io

    import datasets
    import huggingface_hub.utils as hub
    import transformers

    was = (transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(),
           hub.are_progress_bars_disabled())
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if was[0]:
            transformers.utils.logging.enable_progress_bar()
        if was[1]:
            datasets.enable_progress_bars()
        if not was[2]:
            hub.enable_progress_bars()
