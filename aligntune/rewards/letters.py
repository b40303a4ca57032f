"""Reward for the shipped `letters` task ("Repeat the letter q.")."""

from __future__ import annotations

from aligntune.rewards.text import completion_text


def letter_match(completions: list, answer: list[str], **kwargs) -> list[float]:
    """Mean closeness of each completion character to the requested letter, in [0, 1].

    A character scores 1 - |distance in the alphabet| / 26 when it is a lowercase ASCII letter and
    0 otherwise, so exact repeats score 1 and the signal is dense enough for a random-init model to
    climb within a few dozen GRPO steps. An empty completion scores 0.
    """
    scores = []
    for completion, target in zip(completions, answer):
        text = completion_text(completion)
        if not text:
            scores.append(0.0)
            continue
        t = ord(target)
        total = sum(max(0.0, 1.0 - abs(ord(ch) - t) / 26) for ch in text if "a" <= ch <= "z")
        scores.append(total / len(text))
    return scores
