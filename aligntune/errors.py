"""Errors a user can cause, reported as one clear paragraph (problem + fix) and a non-zero exit.

Anything raised as `AligntuneError` is the user's to fix: the CLI prints it without a traceback
unless `--traceback` (or ALIGNTUNE_TRACEBACK=1) asks for one. Everything else is a bug in
aligntune or an engine and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import textwrap

EXIT_USAGE = 2  # bad config, data, model or reward: the user's to fix
EXIT_FAILURE = 1  # the run itself failed
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, the shell's convention)


class AligntuneError(Exception):
    """A problem the user can fix. `problem` says what is wrong, `fix` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        text = self.problem if not self.fix else f"{self.problem} {self.fix}"
        return text


class ConfigError(AligntuneError):
    """The composed configuration is invalid."""


class DataError(AligntuneError):
    """The dataset cannot be found or read in the expected format."""


class ModelError(AligntuneError):
    """The model or tokenizer cannot be found or loaded."""


class RewardError(AligntuneError):
    """A reward function cannot be found or does not behave."""


class RunInterrupted(Exception):
    """The run stopped on Ctrl-C / SIGTERM after checkpointing; the message says how to resume."""


class TrainingDiverged(AligntuneError):
    """A NaN/inf loss, gradient or reward stopped the run (after checkpointing the last good state)."""


def traceback_requested() -> bool:
    return os.environ.get("ALIGNTUNE_TRACEBACK", "").lower() in {"1", "true", "yes"}


def report(err: AligntuneError, stream=None) -> None:
    """Print one paragraph: 'error: <problem> <fix>', wrapped for the terminal."""
    stream = stream or sys.stderr
    body = textwrap.fill(err.paragraph(), width=100, initial_indent="error: ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    print(body, file=stream)
    if not traceback_requested():
        print("  (run with --traceback or ALIGNTUNE_TRACEBACK=1 for the full traceback)", file=stream)
