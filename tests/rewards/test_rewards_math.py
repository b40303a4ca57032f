"""`correctness`: final-answer extraction and equivalence (math-verify, plus the exact numeric path)."""

from __future__ import annotations

import pytest

from aligntune.rewards.math import (
    correctness,
    extract_answer,
    plain_number,
    reference_answer,
)


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("text, span", [
    ("<think>2 + 2 is 4</think><answer>4</answer>", "4"),
    ("<answer>3</answer> then <answer> 5 </answer>", "5"),          # the last answer block counts
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),             # nested braces kept whole
    ("\\boxed{1} ... \\boxed{2}", "2"),
    ("First 3 apples, then 4, total\n#### 7", "7"),
    ("I had 3 apples and 4 pears, so 7 fruits.", "7"),              # unmarked: the last number
    ("1,234,567 grains", "1,234,567"),
    ("no numbers at all", None),
    ("\\boxed{12", "12"),                                           # unclosed box: falls back to the last number
])
def test_extract_answer(text, span):
    assert extract_answer(text) == span


def test_reference_and_plain_numbers():
    assert reference_answer("Eli has 14 + 9 = 23 apples.\n#### 23") == "23"
    assert reference_answer(" 12 ") == "12"
    assert plain_number("5,000") == plain_number("5000") == 5000
    assert plain_number("$12.") == 12 and plain_number("-0.5") == plain_number("-.5")
    assert plain_number("12 apples") is None and plain_number("1/2") is None and plain_number("1,23") is None


def test_gsm8k_style_answers():
    completions = ["<answer>12</answer>", "<answer>12.0</answer>", "#### 12", "The answer is 12.", "\\boxed{12}",
                   "<answer>13</answer>", "<answer>12 apples</answer>", "<answer>$12</answer>"]
    assert correctness(completions, answer=["12"] * len(completions)) == [1, 1, 1, 1, 1, 0, 1, 1]


def test_plain_numbers_are_compared_exactly_without_math_verify(monkeypatch):
    import math_verify

    def refuse(*args, **kwargs):
        raise AssertionError("math-verify was called for plain numbers")

    monkeypatch.setattr(math_verify, "verify", refuse)
    monkeypatch.setattr(math_verify, "parse", refuse)
    completions = ["5,000", "5000", "<answer>5,000</answer>", "5,001", "<answer>12.0000001</answer>", "#### 12.50"]
    assert correctness(completions, answer=["5000", "5,000", "5000", "5000", "12", "12.5"]) == [1, 1, 1, 0, 0, 1]


def test_symbolic_equivalence():
    completions = ["<answer>0.5</answer>", "<answer>\\frac{1}{2}</answer>", "\\boxed{\\dfrac12}", "<answer>2/4</answer>",
                   "<answer>1/3</answer>", "<answer>$\\frac{\\sqrt{3}}{2}$</answer>"]
    references = ["1/2", "0.5", "\\frac{1}{2}", "0.5", "0.5", "\\frac{\\sqrt3}{2}"]
    assert correctness(completions, answer=references) == [1, 1, 1, 1, 0, 1]


def test_answer_hidden_in_the_wrong_place_does_not_count():
    completions = [
        "<think>The answer is 12.</think><answer>13</answer>",   # right number only in the reasoning
        "<answer>13</answer> Actually, it is 12.",                # a tag commits the answer; later text is ignored
        "\\boxed{13} hmm, or maybe 12",                           # same for a box
        "<answer></answer> 12",                                   # an empty answer block is no answer
        "<ans>12</ans> so the answer is 13",                      # an unknown tag is just text: the last number counts
    ]
    assert correctness(completions, answer=["12"] * len(completions)) == [0, 0, 0, 0, 0]


def test_only_the_last_number_counts():
    # Hedging earns nothing: listing candidates is the same as answering the last one.
    assert correctness(["<answer>12 or 13</answer>", "<answer>13 or 12</answer>", "12, 13, 14"],
                       answer=["12", "12", "12"]) == [0, 1, 0]
    assert correctness(["Gus had 11 and gave away 2, so 9 are left."], answer=["9"]) == [1.0]
    assert correctness(["9 are left, since he had 11 and gave away 2."], answer=["9"]) == [0.0]


def test_conversational_completions_and_full_gsm8k_references():
    assert correctness([chat("<answer>23</answer>"), chat("22")], answer=["Eli has 14 + 9 = 23.\n#### 23"] * 2) == [1, 0]


def test_unreadable_reference_is_skipped_and_no_answer_scores_zero():
    assert correctness(["<answer>1</answer>", "<answer>1</answer>"], answer=["", None]) == [None, None]
    assert correctness(["I don't know.", ""], answer=["7", "7"]) == [0.0, 0.0]
    with pytest.raises(ValueError):  # one reference per completion
        correctness(["1", "2"], answer=["1"])
