"""Length shaping: `length` (aim at a target length) and `overlong` (DAPO's soft overlong punishment).

`length` counts characters by default (`unit="chars"`: what a user sees, independent of the
tokenizer), or whitespace-separated words (`unit="words"`), or tokens (`unit="tokens"`, from the
`completion_ids` the trainer passes). It is triangular around the target: 1.0 at the target, falling
linearly to 0.0 at 0 and at twice the target, 0.0 beyond.

`overlong` is the soft overlong punishment of DAPO (Yu et al. 2025, arXiv:2503.14476, Eq. 13), reused
from TRL (`trl.rewards.get_soft_overlong_punishment`): 0 up to `max_length - cache` tokens, then a
linear ramp down to -1 at `max_length`, -1 beyond. It counts tokens (`completion_ids`), as the paper
does; set `max_length` to `algorithm.max_completion_length` and `cache` to a fraction of it (the paper
uses 20480 and 4096). Deviation: none; it only punishes, never rewards shortness.
"""

from __future__ import annotations

from trl.rewards import get_soft_overlong_punishment

from aligntune.errors import RewardError
from aligntune.rewards.text import completion_text

UNITS = ("chars", "words", "tokens")


def measure(completions: list, unit: str, completion_ids: list | None) -> list[int]:
    """Length of each completion in `unit` (chars, words, or tokens from completion_ids)."""
    if unit == "chars":
        return [len(completion_text(c)) for c in completions]
    if unit == "words":
        return [len(completion_text(c).split()) for c in completions]
    if unit == "tokens":
        if completion_ids is None:
            raise RewardError("A length reward with unit='tokens' needs the completions' token ids, and the trainer "
                              "did not pass completion_ids.", "Use unit='chars' or unit='words'.")
        return [len(ids) for ids in completion_ids]
    raise RewardError(f"Length unit {unit!r} is not one of {', '.join(UNITS)}.", f"Set args.unit to one of {', '.join(UNITS)}.")


def length(completions: list, target: int, unit: str = "chars", completion_ids: list | None = None,
           **kwargs) -> list[float]:
    """Closeness to a target length: 1.0 at `target`, linearly down to 0.0 at 0 and 2x target (unit: chars|words|tokens)."""
    if not isinstance(target, (int, float)) or isinstance(target, bool) or target <= 0:
        raise RewardError(f"The length reward's target={target!r} is not a positive number.",
                          "Set rewards.<name>.args.target to the length to aim for, e.g. 200 (characters).")
    return [max(0.0, 1.0 - abs(n - target) / target) for n in measure(completions, unit, completion_ids)]


def overlong(completions: list, completion_ids: list, max_length: int, cache: int, **kwargs) -> list[float]:
    """DAPO soft overlong punishment (Yu et al. 2025): 0 up to max_length - cache tokens, then down to -1 at max_length."""
    if not 0 <= cache <= max_length:
        raise RewardError(f"The overlong reward needs 0 <= cache <= max_length; got cache={cache}, max_length={max_length}.",
                          "Set args.max_length to algorithm.max_completion_length and args.cache to a fraction of it, "
                          "e.g. a fifth.")
    return get_soft_overlong_punishment(max_completion_len=max_length, soft_punish_cache=cache)(completion_ids)
