"""Records what reward functions saw, so runs can show and save sample completions."""

from __future__ import annotations

import math
from collections.abc import Callable

from aligntune.rewards.text import completion_text


class SampleBook:
    """The latest batch each reward function scored: prompts, completions and per-reward scores."""

    def __init__(self):
        self.prompts: list = []
        self.completions: list = []
        self.scores: dict[str, list] = {}
        self.check = None  # (name, scores) -> scores: the divergence guard's look at every score (run/guards.py)

    def wrap(self, name: str, fn: Callable, weight: float) -> Callable:
        book = self

        def reward(prompts=None, completions=None, **kwargs):
            try:
                scores = fn(prompts=prompts, completions=completions, **kwargs)
            except Exception as exc:  # the engine would report it without the reward's name
                from aligntune.run.guards import RewardFailure

                raise RewardFailure(name, exc) from exc
            if book.check is not None:
                scores = book.check(name, scores)
            if completions is not book.completions:
                book.prompts, book.completions, book.scores = prompts, completions, {}
            book.scores[name] = list(scores)
            return scores

        reward.__name__ = name
        return reward

    def rows(self, limit: int, weights: dict[str, float]) -> list[dict]:
        rows, seen = [], set()
        for i in range(len(self.completions)):
            key = _text(self.prompts[i])
            if key in seen:  # one completion per prompt: GRPO repeats each prompt group_size times
                continue
            seen.add(key)
            if len(rows) == limit:
                break
            scores = {k: v[i] for k, v in self.scores.items()}
            total = sum(weights.get(k, 1.0) * s for k, s in scores.items() if s is not None and not math.isnan(s))
            rows.append({"prompt": _text(self.prompts[i]), "completion": completion_text(self.completions[i]),
                         "rewards": scores, "reward": total})
        return rows


def _text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return str(prompt)
