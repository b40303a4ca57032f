"""Reward modelling on TRL: the mapping RunConfig -> trl.RewardConfig key by key, and a real tiny run whose
checkpoint is a 1-label sequence-classification model that PPO's critic and the reward_model reward can load."""

from __future__ import annotations

import json

import pytest
import torch

from aligntune import cli
from aligntune.backends.trl.reward import MAPPED_FIELDS, reward_args, to_reward_config
from aligntune.config import schema
from aligntune.errors import ConfigError

OUT = "/nonexistent/aligntune-rm-output"


def make_run(algorithm: dict | None = None, train: dict | None = None, **fields) -> schema.RunConfig:
    return schema.RunConfig(model=schema.ModelConfig(name_or_path="aligntune:tiny"),
                            dataset=fields.pop("dataset", schema.DatasetConfig(name="prefs", eval_fraction=0.1)),
                            algorithm=schema.RewardModelAlgorithmConfig(**(algorithm or {})),
                            train=schema.TrainConfig(**(train or {})), device="cpu", **fields)


@pytest.mark.parametrize("field,value", [("max_length", 77), ("center_rewards_coefficient", 0.01)])
def test_algorithm_key(field, value):
    assert reward_args(make_run(algorithm={field: value}), OUT, has_eval=False)[MAPPED_FIELDS[f"algorithm.{field}"]] == value


def test_defaults():
    args = reward_args(make_run(), OUT, has_eval=False)
    assert args["max_length"] == 1024 and args["center_rewards_coefficient"] is None
    assert args["eval_strategy"] == "no" and args["save_strategy"] == "no" and args["report_to"] == "none"


@pytest.mark.parametrize("batch,micro,expect", [(8, None, (8, 1)), (8, 2, (2, 4)), (6, 3, (3, 2))])
def test_pairs_per_step_and_micro_batches(batch, micro, expect):
    args = reward_args(make_run(train={"batch_size": batch, "micro_batch_size": micro}), OUT, has_eval=True)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == expect
    assert args["per_device_eval_batch_size"] == expect[0]


def test_train_keys_reach_trl():
    run = make_run(train={"learning_rate": 2e-4, "max_steps": 9, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
                          "weight_decay": 0.01, "max_grad_norm": 0.5, "logging_steps": 3, "num_epochs": 2.0}, seed=5)
    args = reward_args(run, OUT, has_eval=False)
    assert (args["learning_rate"], args["max_steps"], args["lr_scheduler_type"], args["warmup_steps"]) == (2e-4, 9, "cosine", 0.1)
    assert (args["weight_decay"], args["max_grad_norm"], args["logging_steps"], args["num_train_epochs"]) == (0.01, 0.5, 3, 2.0)
    assert args["seed"] == 5 and args["output_dir"] == OUT


@pytest.mark.parametrize("has_eval,eval_steps,expect", [(True, 10, ("steps", 10)), (True, None, ("no", None)),
                                                        (False, 10, ("no", None))])
def test_eval_schedule(has_eval, eval_steps, expect):
    args = reward_args(make_run(train={"eval_steps": eval_steps}), OUT, has_eval=has_eval)
    assert (args["eval_strategy"], args["eval_steps"]) == expect


def test_trl_args_pass_through_and_are_checked():
    run = make_run(backend=schema.BackendConfig(name="trl", trl_args={"disable_dropout": False}))
    assert reward_args(run, OUT, has_eval=False)["disable_dropout"] is False
    with pytest.raises(ConfigError, match="not a field of trl.RewardConfig"):
        reward_args(make_run(backend=schema.BackendConfig(name="trl", trl_args={"max_lenght": 5})), OUT, has_eval=False)
    with pytest.raises(ConfigError, match="already maps"):
        reward_args(make_run(backend=schema.BackendConfig(name="trl", trl_args={"max_length": 5})), OUT, has_eval=False)


def test_trl_accepts_the_config():
    config = to_reward_config(make_run(algorithm={"max_length": 64}, train={"eval_steps": 5}), OUT, has_eval=True)
    assert config.max_length == 64 and config.eval_steps == 5 and config.per_device_train_batch_size == 2


def test_tiny_reward_model_trains_and_saves_a_scorer(workdir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = workdir / "rm"
    code = cli.main(["train", "model=tiny", "algorithm=reward", "dataset=prefs", "train.max_steps=6", "train.eval_steps=3",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_logs = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_logs] == [1, 2, 3, 4, 5, 6]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in train_logs)
    assert [m["step"] for m in metrics if "eval_accuracy" in m][:2] == [3, 6]  # held-out accuracy, every 3 steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and 0.0 <= summary["eval_preference_accuracy"] <= 1.0

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert model.config.num_labels == 1 and model.config.architectures == ["LlamaForSequenceClassification"]
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    with torch.no_grad():
        scores = model(**tok(["Type a.aaaa", "Type a.zq!"], return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1)

    from aligntune.backends.native.ppo_models import check_value_model
    from aligntune.models import tiny

    base = AutoModelForSequenceClassification.from_pretrained(tiny.resolve("aligntune:tiny"), num_labels=1)
    changed = [k for k, v in base.model.state_dict().items() if not torch.equal(v, model.model.state_dict()[k])]
    assert changed, "training left every backbone parameter unchanged"
    policy_tok = AutoTokenizer.from_pretrained(tiny.resolve("aligntune:tiny"))
    assert check_value_model(str(run_dir / "model"), policy_tok) == str((run_dir / "model").resolve())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: forced on every CPU kind (emulated where not native)
def test_lora_reward_model_saves_a_merged_checkpoint(workdir, dtype):
    from transformers import AutoModelForSequenceClassification

    run_dir = workdir / "rm"
    code = cli.main(["train", "model=tiny", "algorithm=reward", "dataset=prefs", "train.max_steps=3", "model.lora.enabled=true",
                     "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", f"model.dtype={dtype}",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    assert not (run_dir / "model" / "adapter_config.json").exists()
    from aligntune.models import tiny

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model", dtype=torch.float32)
    base = AutoModelForSequenceClassification.from_pretrained(tiny.resolve("aligntune:tiny"), num_labels=1,
                                                              dtype=torch.float32)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}
    assert model.config.num_labels == 1 and not any("lora" in k for k in model.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], base.state_dict()[q]), "the trained adapter was not merged"
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(model.state_dict()[k], base.state_dict()[k]), "LoRA did not target k_proj"
