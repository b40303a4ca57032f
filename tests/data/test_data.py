"""Dataset adapters on fixture files in each exact format, sources, splits and data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligntune.config.schema import DatasetConfig
from aligntune.data import formats
from aligntune.data.loading import load
from aligntune.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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
    turn = lambda text: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text}]
    ultra.write_text("".join(json.dumps({"prompt": "Hi", "chosen": turn(chosen), "rejected": turn(rejected)}) + "\n"
                             for chosen, rejected in (("Hello!", "Go away."), ("Hello!", "Hello!"))))
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


# --- token lengths against the model's context (aligntune/data/lengths.py) -------------------------------------

TINY_CONTEXT = 512  # model=tiny's max_position_embeddings


def _jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fit(tmp_path, rows: list[dict], *overrides: str, kind: str = "prompts"):
    """(run, tokenizer, splits) for `rows` loaded as the job loads them: shuffled with the seed, then fitted."""
    from aligntune import preflight
    from aligntune.data import lengths
    from aligntune.models.loading import load_tokenizer

    data = _jsonl(tmp_path / "data.jsonl", rows)
    run, _ = preflight.load(["model=tiny", "dataset=letters", f"dataset.name={data}", "dataset.format=auto", *overrides])
    tok = load_tokenizer(run.model)
    context = lengths.context_length(run)
    assert context == TINY_CONTEXT

    def fit(ds, source_rows, split):
        if kind == "prompts":
            return lengths.fit_prompts(ds, source_rows, split, run, tok, context, special=True)
        lengths.check_sequences(ds, source_rows, split, run, tok, context, kind)
        return ds

    return run, tok, load(run.dataset, run.seed, kind, fit=fit)


LETTERS = [{"prompt": f"Type {c}.", "answer": c} for c in "abcdefgh"]


def test_a_prompt_longer_than_the_context_allows_is_refused_naming_its_file_row(tmp_path):
    rows = [*LETTERS[:5], {"prompt": "x" * 2000, "answer": "a"}, *LETTERS[5:]]
    with pytest.raises(DataError) as err:
        _fit(tmp_path, rows)  # shuffled first: the message still names the row of the file
    text = str(err.value)
    for needle in ("Row 5 of dataset", "a prompt of 2000 tokens", f"context of {TINY_CONTEXT} positions",
                   "leaves 500 for it after algorithm.max_completion_length=12", "dataset.max_prompt_length=500"):
        assert needle in text, text


@pytest.mark.parametrize("mode, kept", [("keep_end", "x" * 40 + " end."), ("keep_start", "start " + "x" * 39)])
def test_max_prompt_length_cuts_long_prompts_and_reports_how_many(tmp_path, caplog, mode, kept):
    long = "start " + "x" * 3000 + " end."
    with caplog.at_level("WARNING"):
        _, tok, (train, _) = _fit(tmp_path, [*LETTERS, {"prompt": long, "answer": "a"}],
                                  "dataset.max_prompt_length=45", f"dataset.truncation_mode={mode}")
    prompts = train["prompt"]
    assert sorted(p for p in prompts if p.startswith("Type")) == sorted(r["prompt"] for r in LETTERS)  # untouched
    (cut,) = [p for p in prompts if not p.startswith("Type")]
    assert cut == kept and len(tok(cut)["input_ids"]) == 45
    assert f"cut 1 of 9 prompts of dataset {tmp_path / 'data.jsonl'} (train) to dataset.max_prompt_length=45 tokens " \
           f"({mode}): rows 8" in caplog.text


def test_chat_prompts_are_cut_inside_the_messages_keeping_every_turn(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "y" * 1000},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Type a."}]
    _, tok, (train, _) = _fit(tmp_path, [{"prompt": chat, "answer": "a"}], "dataset.max_prompt_length=60")
    (prompt,) = train["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[0]["content"] == "Be brief." and prompt[2:] == chat[2:]  # keep_end: the earliest user turn is cut
    assert set(prompt[1]["content"]) == {"y"} and 0 < len(prompt[1]["content"]) < 1000
    assert len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) == 60


@pytest.mark.parametrize("overrides, needle", [
    (["dataset.max_prompt_length=600"], "dataset.max_prompt_length=600 plus algorithm.max_completion_length=12"),
    (["algorithm.max_completion_length=512"], "fills the model's whole context of 512"),
])
def test_prompt_budgets_the_context_cannot_hold_are_refused(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        _fit(tmp_path, LETTERS, *overrides)


def test_prompt_length_keys_are_checked_and_refused_where_they_do_nothing():
    with pytest.raises(ConfigError, match="dataset.max_prompt_length=0 must be greater than 0"):
        DatasetConfig(name="letters", max_prompt_length=0)
    with pytest.raises(ConfigError, match="dataset.truncation_mode='left' is not a valid choice"):
        DatasetConfig(name="letters", max_prompt_length=8, truncation_mode="left")
    with pytest.raises(ConfigError, match="dataset.max_prompt_length is not set, so nothing is cut"):
        DatasetConfig(name="letters", truncation_mode="keep_start")
    from aligntune import preflight

    with pytest.raises(ConfigError, match="algorithm=dpo trains on whole sequences"):
        preflight.load(["model=tiny", "algorithm=dpo", "dataset=prefs", "dataset.max_prompt_length=64"])


PAIRS = [{"prompt": f"Pick {c}.", "chosen": c, "rejected": "z"} for c in "abcd"]


def test_dpo_pairs_beyond_the_context_are_refused_when_max_length_does_not_cut_them(tmp_path):
    rows = [*PAIRS, {"prompt": "Pick a.", "chosen": "a" * 700, "rejected": "z"}]
    with pytest.raises(DataError) as err:
        _fit(tmp_path, rows, "algorithm=dpo", "algorithm.max_length=1024", kind="preferences")
    text = str(err.value)
    for needle in ("Row 4 of dataset", "is 708 tokens long", "context of 512 positions", "algorithm.max_length=1024 does "
                   "not cut it", "Set algorithm.max_length=512 or less"):
        assert needle in text, text


def test_sequences_longer_than_max_length_are_counted_cut_or_dropped(tmp_path, caplog):
    rows = [*PAIRS, {"prompt": "Pick a.", "chosen": "a" * 300, "rejected": "z"}]
    with caplog.at_level("WARNING"):
        _fit(tmp_path, rows, "algorithm=dpo", "algorithm.max_length=128", kind="preferences")
    assert "1 of 5 pairs of dataset" in caplog.text and "truncated to it (keep_start): rows 4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _fit(tmp_path, rows, "algorithm=reward", "algorithm.max_length=128", kind="preferences")
    assert "1 of 5 pairs of dataset" in caplog.text and "are dropped by TRL, longer than algorithm.max_length=128" \
        in caplog.text
    with pytest.raises(DataError, match="Every one of the 4 pairs .* would be dropped"):
        _fit(tmp_path, PAIRS, "algorithm=reward", "algorithm.max_length=8", kind="preferences")
    with pytest.raises(DataError, match="Row 0 of dataset .* is 1005 tokens long"):
        _fit(tmp_path, [{"prompt": "Say:", "completion": "b" * 1000}], "algorithm=sft", "algorithm.max_length=2048",
             kind="sft")


def test_cut_prompts_reach_the_engine_and_the_cut_is_reported(workdir, capsys):
    import json

    from aligntune import cli

    _jsonl(workdir / "long.jsonl", [{"prompt": "Type a.", "answer": "a"}, {"prompt": "x" * 2000 + " Type b.", "answer": "b"}])
    run_dir = workdir / "run"
    assert cli.main(["train", "model=tiny", "dataset=letters", "dataset_name=long.jsonl", "+rewards.letter_match.weight=1",
                     "dataset.max_prompt_length=64", "train.batch_size=2", "group_size=2", "max_steps=1",
                     f"hydra.run.dir={run_dir}"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cut 1 of 2 prompts of dataset long.jsonl (train) to dataset.max_prompt_length=64 tokens (keep_end): rows 1" in out
    prompts = {json.loads(line)["prompt"] for line in (run_dir / "samples.jsonl").read_text().splitlines()}
    assert prompts == {"Type a.", "x" * 56 + " Type b."}  # what the trainer generated from: the last 64 tokens

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
