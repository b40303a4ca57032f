"""Text-only rewards: format, length, overlong, repetition, charset, keywords, max_words, valid_json."""

from __future__ import annotations

import json

import pytest

from aligntune.errors import RewardError
from aligntune.rewards.constraints import json_text, keywords, max_words, valid_json
from aligntune.rewards.format import format_reward
from aligntune.rewards.length import length, overlong
from aligntune.rewards.style import charset, repetition


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# format

def test_format_default_needs_think_then_answer_once_each():
    good = ["<think>a</think><answer>1</answer>", "  <think>\nmulti\nline\n</think>\n\n<answer>\n1\n</answer>\n"]
    bad = ["<answer>1</answer><think>a</think>",                       # wrong order
           "<think>a</think>",                                          # no answer
           "<think>a</think><answer>1</answer> trailing text",          # text outside the tags
           "<think>a</think><answer>1</answer><answer>2</answer>",      # two answers
           "<think>a<think>b</think><answer>1</answer>",                # nested think
           "preamble <think>a</think><answer>1</answer>", ""]
    assert format_reward(good + bad) == [1.0] * len(good) + [0.0] * len(bad)
    assert format_reward([chat(good[0]), chat(bad[0])]) == [1.0, 0.0]


def test_format_think_reuses_trl_and_custom_patterns_match_whole_completions():
    assert format_reward(["<think>x</think> anything", "no think", chat("<think>x</think>")], pattern="think") == [1, 0, 1]
    assert format_reward(["Answer: 42", "Answer: 42 and more", "The Answer: 42"], pattern=r"Answer: \d+") == [1, 0, 0]
    with pytest.raises(RewardError, match="not a valid regular expression"):
        format_reward(["x"], pattern="(unclosed")


# length and overlong

def test_length_is_triangular_around_the_target():
    assert length(["x" * 100, "x" * 50, "x" * 150, "", "x" * 300], target=100) == [1.0, 0.5, 0.5, 0.0, 0.0]
    assert length(["one two three four", chat("a b")], target=4, unit="words") == [1.0, 0.5]
    assert length(["ignored"], target=10, unit="tokens", completion_ids=[[1] * 5]) == [0.5]


def test_length_refuses_bad_arguments():
    with pytest.raises(RewardError, match="target"):
        length(["x"], target=0)
    with pytest.raises(RewardError, match="completion_ids"):
        length(["x"], target=3, unit="tokens")
    with pytest.raises(RewardError, match="unit"):
        length(["x"], target=3, unit="bytes")


def test_overlong_is_dapo_soft_punishment_in_tokens():
    ids = [[0] * n for n in (10, 80, 90, 100, 101)]
    # max 100, cache 20: free up to 80 tokens, then linear to -1 at 100, -1 beyond (DAPO Eq. 13)
    assert overlong(["x"] * 5, completion_ids=ids, max_length=100, cache=20) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(RewardError, match="cache"):
        overlong(["x"], completion_ids=[[0]], max_length=10, cache=20)


# repetition and charset

def test_repetition_penalises_repeated_ngrams():
    scores = repetition(["the cat sat on the mat today", "go go go go go go", "a b", chat("x y z x y z")], ngram=3)
    assert scores[0] == 0.0 and scores[2] == 0.0                      # no repeat; too short for a trigram
    assert scores[1] == pytest.approx(-0.75)                          # 4 trigrams, 1 unique
    assert scores[3] == pytest.approx(-0.25)                          # 4 trigrams, 3 unique
    assert repetition(["Go GO go go"], ngram=1, max_penalty=-2.0) == [pytest.approx(-1.5)]  # case-insensitive words
    assert repetition(["?"], unit="tokens", completion_ids=[[5, 5, 5, 5]], ngram=2) == [pytest.approx(-2 / 3)]
    with pytest.raises(RewardError):
        repetition(["x"], max_penalty=1.0)


def test_charset_counts_letters_in_allowed_scripts():
    scores = charset(["Hello, world! 123", "Привет мир", "Hello мир", "12345 !!", chat("café")], allowed="latin")
    assert scores == [1.0, 0.0, pytest.approx(5 / 8), 0.0, 1.0]
    assert charset(["日本語とカタカナ", "中文"], allowed="ja") == [1.0, 1.0]
    assert charset(["Привет", "Hello"], allowed=["ru", "greek"]) == [1.0, 0.0]
    with pytest.raises(RewardError, match="no known script"):
        charset(["x"], allowed="latn")


# constraints

def test_keywords_fraction_of_constraints_met_whole_words():
    text = "The budget is fixed; the deadline is Friday."
    assert keywords([text], include=["budget", "deadline"]) == [1.0]
    assert keywords([text], include=["BUDGET"], exclude=["friday"]) == [0.5]
    assert keywords([text], include=["BUDGET"], case_sensitive=True) == [0.0]
    assert keywords(["categories"], include=["cat"]) == [0.0]       # not a whole word
    assert keywords(["use C++ here"], include=["C++"]) == [1.0]      # non-word edges match as is
    assert keywords([chat("no banned words")], exclude=["sorry", "cannot"]) == [1.0]
    with pytest.raises(RewardError, match="include"):
        keywords(["x"])


def test_max_words():
    assert max_words(["one two three", "one two three four", "", chat("a b")], limit=3) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(RewardError, match="limit"):
        max_words(["x"], limit=0)


def test_valid_json_with_and_without_schema(tmp_path):
    completions = ['{"name": "Ada", "age": 36}', 'Here it is:\n```json\n{"name": "Ada"}\n```', "{'name': 'Ada'}",
                   '{"name": "Ada", "age": "old"}', chat("[1, 2]"), "", '```json\n{"a": 1}\n```\n```json\n{bad\n```']
    assert json_text(completions[1]) == '{"name": "Ada"}'
    assert valid_json(completions) == [1, 1, 0, 1, 1, 0, 0]          # the last fenced block counts
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}
    assert valid_json(completions, schema=schema) == [1, 0, 0, 0, 0, 0, 0]
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    assert valid_json(completions[:2], schema=str(path)) == [1, 0]
    with pytest.raises(RewardError, match="not a valid JSON Schema"):
        valid_json(["{}"], schema={"type": "no-such-type"})
    with pytest.raises(RewardError, match="does not exist"):
        valid_json(["{}"], schema=str(tmp_path / "missing.json"))
