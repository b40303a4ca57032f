"""SFT on TRL: the mapping RunConfig -> trl.SFTConfig key by key, and a real tiny run on letters_sft that
lowers the loss on the demonstrations and changes the weights."""

from __future__ import annotations

import json

import pytest
import torch

from aligntune import cli
from aligntune.backends.trl.sft import (
    MAPPED_FIELDS,
    data_shape,
    sft_args,
    to_sft_config,
)
from aligntune.config import schema
from aligntune.errors import EXIT_USAGE, ConfigError

OUT = "/nonexistent/aligntune-sft-output"


def make_run(algorithm: dict | None = None, train: dict | None = None, **fields) -> schema.RunConfig:
    return schema.RunConfig(model=schema.ModelConfig(name_or_path="aligntune:tiny"),
                            dataset=fields.pop("dataset", schema.DatasetConfig(name="letters_sft")),
                            algorithm=schema.SFTAlgorithmConfig(**(algorithm or {})),
                            train=schema.TrainConfig(**(train or {})), device="cpu", **fields)


def args_for(algorithm=None, train=None, prompt_completion=True, conversational=False, has_eval=False, **fields):
    return sft_args(make_run(algorithm, train, **fields), OUT, has_eval, prompt_completion, conversational)


@pytest.mark.parametrize("field,value,conversational", [
    ("max_length", 77, False), ("packing", True, False), ("completion_only_loss", False, False),
    ("assistant_only_loss", True, True),
])
def test_algorithm_key(field, value, conversational):
    assert getattr(schema.SFTAlgorithmConfig(), field) != value, "pick a non-default value"
    assert args_for({field: value}, conversational=conversational)[MAPPED_FIELDS[f"algorithm.{field}"]] == value


def test_defaults_train_on_completions_only():
    args = args_for()
    assert args["completion_only_loss"] is True and args["assistant_only_loss"] is False and args["packing"] is False
    assert args["max_length"] == 1024 and args["eval_strategy"] == "no"


def test_completion_only_loss_applies_to_prompt_completion_data_only():
    # messages data has no prompt to mask: the whole conversation trains unless assistant_only_loss is set
    assert args_for(prompt_completion=False, conversational=True)["completion_only_loss"] is False
    assert args_for(prompt_completion=True, conversational=True)["completion_only_loss"] is True


def test_assistant_only_loss_needs_conversational_data():
    with pytest.raises(ConfigError, match="assistant_only_loss=true needs conversational data"):
        args_for({"assistant_only_loss": True}, conversational=False)


@pytest.mark.parametrize("shuffle", [True, False])
def test_dataset_shuffle(shuffle):
    assert args_for(dataset=schema.DatasetConfig(name="letters_sft", shuffle=shuffle))["shuffle_dataset"] is shuffle


@pytest.mark.parametrize("batch,micro,expect", [(8, None, (8, 1)), (8, 2, (2, 4)), (12, 4, (4, 3))])
def test_sequences_per_step_and_micro_batches(batch, micro, expect):
    args = args_for(train={"batch_size": batch, "micro_batch_size": micro})
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == expect


def test_train_keys_and_eval_schedule():
    held_out = schema.DatasetConfig(name="letters_sft", eval_fraction=0.1)
    args = args_for(train={"learning_rate": 2e-4, "max_steps": 9, "lr_scheduler": "linear", "eval_steps": 4,
                           "gradient_checkpointing": True}, has_eval=True, seed=3, dataset=held_out)
    assert (args["learning_rate"], args["max_steps"], args["lr_scheduler_type"], args["seed"]) == (2e-4, 9, "linear", 3)
    assert (args["eval_strategy"], args["eval_steps"]) == ("steps", 4)
    assert args.get("activation_checkpointing", args.get("gradient_checkpointing")) is True
    assert args_for(train={"eval_steps": 4}, has_eval=False, dataset=held_out)["eval_strategy"] == "no"


def test_trl_args_are_checked():
    with pytest.raises(ConfigError, match="already maps"):
        args_for(backend=schema.BackendConfig(name="trl", trl_args={"packing": True}))
    assert args_for(backend=schema.BackendConfig(name="trl", trl_args={"packing_strategy": "wrapped"}))["packing_strategy"] == "wrapped"


def test_trl_accepts_the_config():
    config = to_sft_config(make_run({"max_length": 64}), OUT, False, True, False)
    assert config.max_length == 64 and config.completion_only_loss is True


def test_data_shape():
    from datasets import Dataset

    assert data_shape(Dataset.from_list([{"prompt": "a", "completion": "b"}])) == (True, False)
    chat = [{"role": "user", "content": "a"}]
    assert data_shape(Dataset.from_list([{"prompt": chat, "completion": chat}])) == (True, True)
    assert data_shape(Dataset.from_list([{"messages": chat}])) == (False, True)


def test_tiny_sft_learns_the_demonstrations(workdir):
    from transformers import AutoModelForCausalLM

    from aligntune.models import tiny

    run_dir = workdir / "sft"
    code = cli.main(["train", "model=tiny", "algorithm=sft", "dataset=letters_sft", "train.max_steps=20", "train.learning_rate=1e-2",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 20 and sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses  # 4.0 -> 2.9 here
    before = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_assistant_only_loss_on_plain_text_is_refused_before_training(workdir, capsys):
    run_dir = workdir / "sft"
    code = cli.main(["train", "model=tiny", "algorithm=sft", "dataset=letters_sft", "algorithm.assistant_only_loss=true",
                     "train.max_steps=2", f"hydra.run.dir={run_dir}"])
    assert code == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "assistant_only_loss=true needs conversational data" in err and "Traceback" not in err
    assert (run_dir / "metrics.jsonl").read_text() == ""
