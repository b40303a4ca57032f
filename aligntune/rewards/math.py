"""`correctness`: is the completion's final answer equal to the reference answer?

Where the final answer is read from (the first rule that applies wins; nothing outside it counts):

1. the last closed `<answer>...</answer>` block (so `<think>12</think><answer>13</answer>` answers 13);
2. else the last `\\boxed{...}` (balanced braces, so `\\boxed{\\frac{1}{2}}` is read whole);
3. else the text after the last `####` (the GSM8K convention);
4. else the last plain number in the whole completion ("12 apples, no wait, 15" answers 15).

Inside the span of rules 1-3 the last number or expression counts too ("x = 2 or x = 3" answers 3):
hedging with several candidates earns nothing over committing to the last one.

How it is compared: when the reference and the answer are both plain numbers ("5,000", "-3", "12.0",
".5"; commas, `$` and a trailing period allowed) they are compared exactly as rationals, so
"5,000" == "5000" and "12" == "12.0" but "12" != "12.000001". Otherwise `math-verify` (Hugging Face's
symbolic checker, https://github.com/huggingface/Math-Verify) parses both and tests symbolic
equivalence, so "1/2", "0.5", "\\frac{1}{2}" and "$\\dfrac12$" agree. A span math-verify cannot read
as written is retried inside `$...$`.

The reference comes from the dataset's `answer` column; a full GSM8K solution ("...\\n#### 12") is
reduced to the text after its last `####`. A reference that cannot be parsed scores None (TRL skips
it), so a bad row never teaches the policy anything.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

from aligntune.rewards.text import completion_text

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)\s*\$?\.?")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), matching nested braces; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unclosed (truncated output): not a box, so the later rules apply


def extract_answer(text: str) -> str | None:
    """The final-answer span of a completion, by the rules in the module docstring; None if it has none."""
    blocks = _ANSWER_TAG.findall(text)
    if blocks:
        return blocks[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(reference) -> str:
    """The reference as a bare answer: a full GSM8K solution is cut to the text after its last `####`."""
    text = str(reference).strip()
    return text.rsplit("####", 1)[1].strip() if "####" in text else text


def plain_number(text: str) -> Fraction | None:
    """`text` as an exact number if it is one plain number ("5,000", "$12", "-0.5", "12."), else None."""
    match = _PLAIN_NUMBER.fullmatch(text.strip())
    return Fraction(match.group(1).replace(",", "")) if match else None


def _timeouts() -> tuple[int | None, int | None]:
    """(parse, verify) timeouts in seconds. math-verify enforces them with signal.alarm, which only works
    in the main thread; elsewhere they are off (as in trl.rewards.accuracy_reward)."""
    if threading.current_thread() is threading.main_thread():
        return 5, 5
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warnings
    return None, None


def _parse(text: str, timeout: int | None) -> list:
    from math_verify import parse

    parsed = parse(text, parsing_timeout=timeout)
    if not parsed and "$" not in text:
        parsed = parse(f"${text}$", parsing_timeout=timeout)
    return parsed


class Reference:
    """One reference answer, parsed once (GRPO scores a group of completions against the same one)."""

    def __init__(self, reference):
        self.text = reference_answer(reference) if reference is not None else ""
        self.number = plain_number(self.text)
        self._gold: list | None = None

    def gold(self) -> list:
        """math-verify's parse of the reference; empty when it cannot be read."""
        if self._gold is None:
            self._gold = _parse(self.text, _timeouts()[0]) if self.text else []
        return self._gold

    def matches(self, answer: str) -> bool | None:
        """Whether the answer span equals the reference: exactly when both are plain numbers, else
        symbolically. None when the reference itself cannot be parsed."""
        if self.number is not None:
            guess = plain_number(answer)
            if guess is not None:
                return guess == self.number
        if not self.gold():
            return None
        from math_verify import verify

        guess = _parse(answer, _timeouts()[0])
        return bool(guess) and bool(verify(self.gold(), guess, timeout_seconds=_timeouts()[1]))


def correctness(completions: list, answer: list, **kwargs) -> list[float | None]:
    """1.0 when the completion's final answer equals the reference `answer` (math-verify), else 0.0.

    Reads the final answer from <answer> tags, else \\boxed{}, else after '####', else the last number
    (see the module docstring). Rows whose reference cannot be parsed score None (skipped by TRL).
    """
    references: dict[str, Reference] = {}
    scores: list[float | None] = []
    for completion, reference in zip(completions, answer, strict=True):
        key = str(reference)
        if key not in references:
            references[key] = Reference(reference)
        ref = references[key]
        if not ref.text or (ref.number is None and not ref.gold()):
            scores.append(None)  # an unreadable reference teaches nothing: TRL skips the row
            continue
        span = extract_answer(completion_text(completion))
        match = ref.matches(span) if span else False
        scores.append(None if match is None else float(match))
    return scores
