"""Dataset adapters on fixture files in each exact format, sources, splits and data errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aligntune.config.schema import DatasetConfig
from aligntune.data import formats
from aligntune.data.loading import load
from aligntune.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"


def cfg(name, **kw) -> DatasetConfig:
    return DatasetConfig(name=str(FIXTURES / name) if not name.startswith(("/", "letters", "prefs", "arith")) else name,
                         shuffle=kw.pop("shuffle", False), **kw)


def test_hh_rlhf_keeps_earlier_turns_as_messages_and_splits_the_last_reply():
    train, held_out = load(cfg("hh_rlhf.jsonl"), seed=0, kind="preferences")
    assert held_out is None and len(train) == 2  # the third row's dialogues do not share a prompt: dropped, reported
    multi = train[1]
    assert multi["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    assert multi["chosen"] == [{"role": "assistant", "content": "Why did the chicken cross the road? To get to the other side."}]
    assert multi["rejected"] == [{"role": "assistant", "content": "No."}]


def test_hh_rlhf_mismatched_row_is_reported(caplog):
    with caplog.at_level("WARNING"):
        load(cfg("hh_rlhf.jsonl"), seed=0, kind="preferences")
    assert "dropped 1 of 3 rows" in caplog.text and "[2]" in caplog.text


def test_hh_rlhf_prompts_for_grpo():
    train, _ = load(cfg("hh_rlhf.jsonl"), seed=0, kind="prompts")
    assert train[0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]


def test_ultrafeedback_splits_conversations_into_prompt_and_replies():
    train, _ = load(cfg("ultrafeedback.jsonl"), seed=0, kind="preferences")
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[0]["prompt"] == [{"role": "user", "content": "Name a prime number."}]
    assert train[0]["chosen"] == [{"role": "assistant", "content": "7"}]
    assert train[0]["rejected"] == [{"role": "assistant", "content": "9"}]


def test_gsm8k_extracts_the_reference_answer_without_commas():
    train, _ = load(cfg("gsm8k.jsonl"), seed=0, kind="prompts")
    assert train["answer"] == ["5", "5000"]
    assert train[0]["prompt"] == "Tom has 3 apples and buys 2 more. How many?"
    assert formats.gsm8k_reference("...\n#### 1,234,567") == "1234567"


def test_messages_give_prompts_without_the_final_reply_and_sft_rows():
    prompts, _ = load(cfg("messages.jsonl"), seed=0, kind="prompts")
    assert prompts[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    sft, _ = load(cfg("messages.jsonl"), seed=0, kind="sft")
    assert sft[1]["messages"][-1] == {"role": "assistant", "content": "Rome"}


def test_csv_prompt_completion_for_sft():
    sft, _ = load(cfg("prompt_completion.csv"), seed=0, kind="sft")
    assert sft[0] == {"prompt": "Say a", "completion": "aaaa"}


def test_parquet_and_json_files(tmp_path):
    from datasets import Dataset

    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(5)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "prefs.parquet"))
    (tmp_path / "prefs.json").write_text(__import__("json").dumps(rows))
    for name in ("prefs.parquet", "prefs.json"):
        train, _ = load(DatasetConfig(name=str(tmp_path / name), shuffle=False), seed=0, kind="preferences")
        assert train["prompt"] == [f"p{i}" for i in range(5)] and set(train["chosen"]) == {"good"}


def test_column_mapping():
    train, _ = load(cfg("custom_columns.jsonl", columns={"prompt": "instruction", "answer": "target"}), seed=0, kind="prompts")
    assert train[0]["prompt"] == "Say x." and train[0]["answer"] == "x"


def test_shipped_preferences_plain_and_conversational_with_held_out_fraction():
    plain, held = load(DatasetConfig(name="prefs", eval_fraction=0.1), seed=1, kind="preferences")
    assert len(plain) == 360 and len(held) == 40
    assert isinstance(plain[0]["chosen"], str) and isinstance(held[0]["rejected"], str)
    chat, _ = load(DatasetConfig(name="prefs_chat"), seed=1, kind="preferences")
    assert chat[0]["prompt"][0]["role"] == "user" and chat[0]["chosen"][0]["role"] == "assistant"


def test_shuffle_follows_the_seed_and_max_samples_caps():
    a, _ = load(DatasetConfig(name="letters", max_samples=10), seed=1, kind="prompts")
    b, _ = load(DatasetConfig(name="letters", max_samples=10), seed=1, kind="prompts")
    c, _ = load(DatasetConfig(name="letters", max_samples=10), seed=2, kind="prompts")
    assert len(a) == 10 and a["prompt"] == b["prompt"] and a["prompt"] != c["prompt"]


def test_system_prompt_makes_text_rows_conversational_once():
    train, _ = load(DatasetConfig(name="prefs", system_prompt="Answer with letters.", max_samples=2), seed=0, kind="preferences")
    row = train[0]
    assert row["prompt"][0] == {"role": "system", "content": "Answer with letters."} and row["prompt"][1]["role"] == "user"
    assert row["chosen"][0]["role"] == "assistant"
    msgs, _ = load(cfg("messages.jsonl", system_prompt="Be brief."), seed=0, kind="prompts")
    assert [m["role"] for m in msgs[0]["prompt"]].count("system") == 1


def _pairs(path: Path, rows: list[tuple]) -> Path:
    import json

    path.write_text("".join(json.dumps(dict(zip(("prompt", "chosen", "rejected"), r))) + "\n" for r in rows))
    return path


def test_pairs_whose_chosen_equals_rejected_are_dropped_and_counted(tmp_path, caplog):
    """They carry no preference: DPO's loss is -log sigmoid(beta x 0) = log 2 whatever the policy, zero gradient."""
    path = _pairs(tmp_path / "pairs.jsonl", [("Say a.", "a", "b"), ("Say b.", "b", "b"), ("Say c.", "c", "d"),
                                             ("Say d.", "d d", "d d")])
    with caplog.at_level("WARNING"):
        train, _ = load(DatasetConfig(name=str(path), shuffle=False), seed=0, kind="preferences")
    assert train["prompt"] == ["Say a.", "Say c."]
    assert "dropped 2 of 4 rows" in caplog.text and "identical" in caplog.text and "[1, 3]" in caplog.text
    sft, _ = load(DatasetConfig(name=str(path), shuffle=False), seed=0, kind="sft")  # SFT learns from chosen alone
    assert len(sft) == 4
    # Conversational pairs (UltraFeedback layout) are compared as messages.
    ultra = tmp_path / "ultra.jsonl"
    ultra.write_text("".join(
        '{"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "%s"}], '
        '"rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "%s"}]}\n' % pair
        for pair in (("Hello!", "Go away."), ("Hello!", "Hello!"))))
    train, _ = load(DatasetConfig(name=str(ultra), shuffle=False), seed=0, kind="preferences")
    assert len(train) == 1 and train[0]["rejected"] == [{"role": "assistant", "content": "Go away."}]


def test_a_dataset_of_only_identical_pairs_is_refused(tmp_path):
    path = _pairs(tmp_path / "same.jsonl", [("Say a.", "a", "a"), ("Say b.", "b", "b")])
    with pytest.raises(DataError) as err:
        load(DatasetConfig(name=str(path)), seed=0, kind="preferences")
    assert "Every usable preference pair" in str(err.value) and "(2 of 2 rows)" in str(err.value)
    assert "they differ" in str(err.value)


@pytest.mark.parametrize("name, kind, message", [
    ("missing.jsonl", "prompts", "does not exist"),
    ("malformed.jsonl", "prompts", "Cannot read dataset"),
    ("empty.jsonl", "prompts", "Cannot read dataset|no rows"),
    ("empty_prompt.jsonl", "prompts", "Row 1 of dataset"),
    ("custom_columns.jsonl", "prompts", "Cannot tell the format"),
    ("letters", "preferences", "has no preferences"),
])
def test_data_errors_name_the_problem(name, kind, message):
    with pytest.raises((DataError, ConfigError), match=message):
        load(cfg(name), seed=0, kind=kind)


def test_missing_column_for_an_explicit_format():
    with pytest.raises(DataError, match=r"lacks column\(s\) \['completion'\]"):
        load(cfg("custom_columns.jsonl", format="prompt_completion", columns={"prompt": "instruction"}), seed=0, kind="sft")


def test_single_file_has_no_test_split():
    with pytest.raises(ConfigError, match="single file"):
        load(cfg("gsm8k.jsonl", eval_split="test"), seed=0, kind="prompts")
