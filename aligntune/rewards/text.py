"""Helpers shared by reward functions: completions arrive as strings or as message lists."""

from __future__ import annotations


def completion_text(completion) -> str:
    """The text of one completion: a plain string, or the content of a conversational completion
    (TRL passes `[{"role": "assistant", "content": ...}]` for chat datasets)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in completion)
    return str(completion)
