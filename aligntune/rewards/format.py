"""`format`: does the completion follow the required layout (tags or a user regex)?

The default layout is the DeepSeek-R1 one (DeepSeek-AI 2025, arXiv:2501.12948, "format reward"):
reasoning in `<think>...</think>`, then the final answer in `<answer>...</answer>`, each exactly once,
nothing but whitespace around them. `pattern="think"` is TRL's `think_format_reward` (reasoning in
`<think>...</think>` at the start, anything after), reused as is. Any other `pattern` is a regular
expression that must match the whole completion (`re.fullmatch`, with `.` matching newlines).

The score is 1.0 or 0.0: a format is followed or not. Partial credit for "some tags" invites the
policy to emit tag soup.
"""

from __future__ import annotations

import functools
import re

from trl.rewards import think_format_reward

from aligntune.errors import RewardError
from aligntune.rewards.text import completion_text

THINK_ANSWER = r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*"


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise RewardError(f"The format reward's pattern {pattern!r} is not a valid regular expression ({exc}).",
                          "Fix rewards.<name>.args.pattern, or use 'think_answer' or 'think'.") from exc


def format_reward(completions: list, pattern: str = "think_answer", **kwargs) -> list[float]:
    """1.0 when the completion has the required layout: <think>...</think><answer>...</answer> by default.

    `pattern`: "think_answer" (default; each tag exactly once), "think" (TRL's think_format_reward), or a
    regular expression the whole completion must match.
    """
    if pattern == "think":
        return think_format_reward([[{"role": "assistant", "content": completion_text(c)}] for c in completions])
    regex = _compile(THINK_ANSWER if pattern == "think_answer" else pattern)
    return [1.0 if regex.fullmatch(completion_text(c)) else 0.0 for c in completions]
