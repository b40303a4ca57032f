"""Check every reward on a real batch before training, so a broken reward fails in seconds, not at step 1.

`check_rewards` calls each reward once the way the trainer will (TRL's GRPOTrainer: keywords
`prompts`, `completions`, `completion_ids`, `trainer_state`, `log_extra`, `log_metric`, and every
dataset column except `prompt` as a list) on a few dataset rows. The completions are a fixed dummy
text, `CHECK_COMPLETION` (in the prompts' shape: a string, or an assistant message for chat
prompts), and `completion_ids` its UTF-8 bytes: the check is about plumbing (columns, arguments,
return values), not about scores, so a reward's score on the dummy does not matter.

It raises RewardError, one paragraph naming the reward, the problem and the fix, when a reward:
needs a keyword that is neither a dataset column nor set in `rewards.<name>.args`; does not accept
the keywords the trainer passes (no `**kwargs`); raises; returns something that is not one score
per completion; or returns a score that is not a number or None, or is NaN/infinite; or does not return within
its `rewards.<name>.timeout_s` (when the job wraps it with rewards.watchdog.with_timeout).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from aligntune.errors import AligntuneError, RewardError
from aligntune.rewards.watchdog import RewardTimeout

CHECK_COMPLETION = "This is a test completion written by aligntune's reward check."


def _noop(*args, **kwargs) -> None:
    return None


def batch_keywords(rows: list[dict]) -> dict:
    """The keywords a reward receives for `rows`, as the trainer builds them, with dummy completions."""
    prompts = [row["prompt"] for row in rows]
    completions = [[{"role": "assistant", "content": CHECK_COMPLETION}] if isinstance(p, list) else CHECK_COMPLETION
                   for p in prompts]
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key not in ("prompt", "completion", "completion_ids")}
    from transformers import TrainerState

    return {"prompts": prompts, "completions": completions,
            "completion_ids": [list(CHECK_COMPLETION.encode()) for _ in rows], "trainer_state": TrainerState(),
            "log_extra": _noop, "log_metric": _noop, **columns}


def _signature_problem(name: str, fn: Callable, keywords: dict, columns: list[str]) -> RewardError | None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None  # not inspectable: the call below still checks it
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in keywords
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        return RewardError(
            f"Reward '{name}' needs {', '.join(repr(m) for m in missing)}, which is neither a column of the dataset nor set "
            f"in rewards.{name}.args. The dataset's columns: {', '.join(['prompt', *columns])}.",
            f"Map a column of your data to it (+dataset.columns.{missing[0]}=<your column>), set "
            f"+rewards.{name}.args.{missing[0]}=<value>, or use a dataset that has it.")
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        refused = [k for k in keywords if k not in params]
        if refused:
            return RewardError(
                f"Reward '{name}' does not accept the keyword(s) {', '.join(refused)}, which the trainer passes to every "
                "reward (all dataset columns, plus completion_ids, trainer_state, log_extra and log_metric).",
                "Add **kwargs to its parameters: def my_reward(completions, prompts=None, **kwargs).")
    return None


def _result_problem(name: str, scores, expected: int) -> str | None:
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        return f"returned {type(scores).__name__} instead of a list of scores"
    if len(scores) != expected:
        return f"returned {len(scores)} scores for {expected} completions (it must return one per completion)"
    for i, score in enumerate(scores):
        if score is None:
            continue
        try:
            value = None if isinstance(score, (str, bytes)) else float(score)
        except (TypeError, ValueError):
            value = None
        if value is None:
            return f"returned {score!r} ({type(score).__name__}) at position {i}, which is not a number (or None to skip)"
        if not math.isfinite(value):
            return f"returned {score} at position {i}; scores must be finite numbers (None skips a completion)"
    return None


def check_rewards(rewards: dict[str, Callable], rows: list[dict]) -> None:
    """Call each reward once on `rows` (a few dataset rows with `prompt`); RewardError on the first that misbehaves."""
    if not rows:
        return
    keywords = batch_keywords(rows)
    columns = [k for k in rows[0] if k not in ("prompt", "completion", "completion_ids")]
    for name, fn in rewards.items():
        problem = _signature_problem(name, fn, keywords, columns)
        if problem is not None:
            raise problem
        try:
            scores = fn(**keywords)
        except RewardTimeout as exc:
            raise RewardError(
                f"Reward '{name}' did not return within rewards.{name}.timeout_s={exc.timeout_s:g} s when called once "
                f"on {len(rows)} rows of the dataset before training, so it would hang the run (the call is abandoned in "
                "a background thread, which cannot be stopped).",
                f"Find what it waits on (a lock, the network, a model download), or raise rewards.{name}.timeout_s if it "
                "is just slow.") from exc
        except AligntuneError as exc:  # the reward's own clear message (e.g. a reward model that is not cached)
            raise RewardError(f"Reward '{name}': {exc.problem}", exc.fix) from exc
        except Exception as exc:
            raise RewardError(
                f"Reward '{name}' raised {type(exc).__name__}: {exc} when called on {len(rows)} rows of the dataset "
                f"(columns: {', '.join(['prompt', *columns])}) with placeholder completions.",
                f"Fix the function or its arguments (rewards.{name}.args); to reproduce, call it with "
                f"completions=[...], prompts=[...] and one list per dataset column. Run with --traceback for the traceback."
            ) from exc
        problem = _result_problem(name, scores, len(rows))
        if problem is not None:
            raise RewardError(f"Reward '{name}' {problem}.",
                              "A reward returns a list with one float (or None to skip) per completion, in order.")
