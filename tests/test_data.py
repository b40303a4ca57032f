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


# --- a file named with dataset.name under a preset that has another format --------------------------

def test_an_explicit_format_that_does_not_fit_suggests_detection_and_dataset_name_first(tmp_path):
    data = tmp_path / "my.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "answer": "4"}\n')
    with pytest.raises(DataError) as exc:
        load(DatasetConfig(name=str(data), format="gsm8k"), seed=0, kind="prompts")
    text = str(exc.value)
    assert "lacks column(s) ['question']" in text
    assert text.index("dataset.format=auto") < text.index("dataset.columns") and f"dataset_name={data}" in text
    assert "fit format prompt" in text


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_first_row_reads_each_file_type_without_datasets(tmp_path, suffix):
    import json

    from aligntune.data.sources import first_row

    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n" + "".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        path.write_text("prompt,answer\na,1\nb,2\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    assert first_row(str(path)) == rows[0]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert first_row(str(tmp_path / "bad.jsonl")) is None and first_row(str(tmp_path)) is None  # the loader reports


def test_dataset_name_under_a_preset_detects_the_files_format_and_says_so(workdir, capsys):
    """`dataset.name=my.jsonl` keeps the default preset's (arith's) format gsm8k unless the file fits it: here it has
    prompt/answer columns, so the run reads it as `prompt`, in one line, and trains (arith's correctness reads answer)."""
    import json

    import yaml

    from aligntune import cli, inherited

    (workdir / "my.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n"
                                              for i in range(20)))
    (change,) = inherited.changes(["model=tiny", "dataset.name=my.jsonl"])
    assert change.override == "dataset.format=prompt"
    assert "gsm8k" in change.notice and "my.jsonl" in change.notice and "dataset_name=my.jsonl" in change.notice
    assert "\n" not in change.notice
    assert inherited.changes(["model=tiny", "dataset.name=my.jsonl", "dataset.format=gsm8k"]) == []  # the user's: kept
    assert inherited.changes(["model=tiny", "dataset_name=my.jsonl"]) == []  # no preset: auto-detected anyway
    assert inherited.changes(["model=tiny"]) == []  # the shipped arith file fits its own preset

    run_dir = workdir / "run"
    assert cli.main(["train", "model=tiny", "dataset.name=my.jsonl", "max_steps=1", "group_size=2", "batch_size=2",
                     f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "note: dataset.format=gsm8k came with the dataset preset" in " ".join(out.split())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["dataset"]["format"] == "prompt"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
