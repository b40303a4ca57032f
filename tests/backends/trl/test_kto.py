"""KTO: the config -> trl.KTOConfig mapping key by key, unpaired data (and unpairing pairs), real tiny runs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from aligntune import cli
from aligntune.backends.trl.kto import kto_args, to_kto_config
from aligntune.config import compose
from aligntune.config.schema import DatasetConfig
from aligntune.data.loading import load
from aligntune.errors import ConfigError, DataError
from aligntune.models import tiny


def run_config(*overrides):
    return compose.load(["model=tiny", "algorithm=kto", "dataset=prefs_unpaired", *overrides])[0]


# --- the mapping --------------------------------------------------------------------------------------------

def test_kto_mapping_key_by_key():
    run = run_config("algorithm.beta=0.3", "algorithm.desirable_weight=1.2", "algorithm.undesirable_weight=0.8",
                     "algorithm.max_length=64", "algorithm.precompute_ref_log_probs=true", "batch_size=8",
                     "train.micro_batch_size=4", "train.eval_steps=5", "learning_rate=1e-4", "max_steps=7", "seed=3",
                     "device=cpu")
    args = kto_args(run, "/tmp/out", has_eval=True)
    expected = {"beta": 0.3, "desirable_weight": 1.2, "undesirable_weight": 0.8, "loss_type": "kto", "max_length": 64,
                "precompute_ref_log_probs": True, "train_sampling_strategy": "sequential",
                "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 2,
                "eval_strategy": "steps", "eval_steps": 5, "learning_rate": 1e-4, "max_steps": 7, "seed": 3,
                "use_cpu": True, "output_dir": "/tmp/out"}
    assert {k: args[k] for k in expected} == expected
    assert kto_args(run, "/tmp/out", has_eval=False)["eval_strategy"] == "no"
    assert kto_args(run, "/tmp/out", has_eval=True, world_size=2)["gradient_accumulation_steps"] == 1
    config = to_kto_config(run, "/tmp/out", has_eval=True)
    assert (config.beta, config.desirable_weight, config.undesirable_weight) == (0.3, 1.2, 0.8)
    assert config.train_sampling_strategy == "sequential"


@pytest.mark.parametrize("loss_type,shuffle,strategy", [
    ("kto", "true", "sequential"),  # the KL estimate pairs each row with its neighbour: order kept (rows pre-shuffled)
    ("kto", "false", "sequential"),
    ("apo_zero_unpaired", "true", "random"),  # no KL term: sampled like the other trainers
    ("apo_zero_unpaired", "false", "sequential"),
])
def test_sampling_strategy_follows_the_loss_and_dataset_shuffle(loss_type, shuffle, strategy):
    run = run_config(f"algorithm.loss_type={loss_type}", f"dataset.shuffle={shuffle}")
    assert kto_args(run, "/tmp/out", has_eval=False)["train_sampling_strategy"] == strategy
    assert to_kto_config(run, "/tmp/out", has_eval=False).loss_type == loss_type


def test_kto_config_errors():
    with pytest.raises(ConfigError, match="loss_type='sigmoid' is not a valid choice"):
        run_config("algorithm.loss_type=sigmoid")
    with pytest.raises(ConfigError, match="desirable_weight=0.0 must be greater than 0"):
        run_config("algorithm.desirable_weight=0.0")
    with pytest.raises(ConfigError, match="a micro-batch here holds 1 row.*at least 2 rows per micro-batch"):
        run_config("batch_size=4", "train.micro_batch_size=1")
    run_config("batch_size=4", "train.micro_batch_size=1", "algorithm.loss_type=apo_zero_unpaired")  # no KL term
    with pytest.raises(ConfigError, match="dataset.unpair=true turns preference pairs.*algorithm=dpo learns from the "
                                          "pairs themselves.*use algorithm=kto"):
        compose.load(["model=tiny", "algorithm=dpo", "dataset=prefs", "dataset.unpair=true"])
    with pytest.raises(ConfigError, match="dataset.format=unpaired says the data is unpaired already"):
        run_config("dataset.unpair=true")
    with pytest.raises(ConfigError, match="train_sampling_strategy sets a field that aligntune already maps"):
        kto_args(run_config("+backend.trl_args.train_sampling_strategy=random"), "/tmp/out", has_eval=False)
    with pytest.raises(ConfigError, match="not a field of trl.KTOConfig"):
        kto_args(run_config("+backend.trl_args.label_smoothing=0.1"), "/tmp/out", has_eval=False)


# --- data ---------------------------------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_shipped_unpaired_rows_are_detected_with_both_labels():
    train, held = load(DatasetConfig(name="prefs_unpaired", eval_fraction=0.1), seed=1, kind="unpaired")
    assert (len(train), len(held)) == (360, 40) and set(train.column_names) == {"prompt", "completion", "label"}
    assert 0.3 < sum(train["label"]) / len(train) < 0.6
    good = next(r for r in train if r["label"])
    assert good["completion"] == good["completion"][0] * len(good["completion"])  # the requested letter, repeated
    assert f" {good['completion'][0]}" in f" {good['prompt']}".replace(".", " ").replace(",", " ")


def test_unpair_makes_two_rows_per_pair_on_the_same_side_of_the_split_and_shuffles_them():
    pairs, held_pairs = load(DatasetConfig(name="prefs", eval_fraction=0.1), seed=1, kind="preferences")
    rows, held = load(DatasetConfig(name="prefs", eval_fraction=0.1, unpair=True), seed=1, kind="unpaired")
    assert (len(rows), len(held)) == (2 * len(pairs), 2 * len(held_pairs)) == (720, 80)
    as_rows = lambda ds: sorted((r["prompt"], r["chosen"], True) for r in ds) + sorted(  # noqa: E731
        (r["prompt"], r["rejected"], False) for r in ds)
    key = lambda ds: sorted((r["prompt"], r["completion"], r["label"]) for r in ds)  # noqa: E731
    assert key(rows) == sorted(as_rows(pairs)) and key(held) == sorted(as_rows(held_pairs))
    assert sum(rows["label"]) == len(pairs)
    # shuffled after unpairing: TRL's KL estimate pairs each prompt with the previous row's completion, which must
    # (almost always) belong to another prompt; unshuffled, every other neighbour is the same pair's prompt
    same = sum(a == b for a, b in zip(rows["prompt"], rows["prompt"][1:]))
    assert same < 0.05 * len(rows)
    unshuffled, _ = load(DatasetConfig(name="prefs", unpair=True, shuffle=False), seed=1, kind="unpaired")
    assert unshuffled[:2] == {"prompt": ["Repeat the letter b."] * 2, "completion": ["bbbb", "ggggggggg"],
                              "label": [True, False]}  # prefs.jsonl's first pair, in place


def test_unpaired_rows_in_chat_form_and_with_a_system_prompt(tmp_path):
    path = _write(tmp_path / "chat.jsonl", [
        {"prompt": [{"role": "user", "content": "Type a."}], "completion": [{"role": "assistant", "content": "aaa"}],
         "label": True},
        {"prompt": [{"role": "user", "content": "Type b."}], "completion": [{"role": "assistant", "content": "zz"}],
         "label": False}])
    train, _ = load(DatasetConfig(name=path, shuffle=False, system_prompt="Letters only."), seed=0, kind="unpaired")
    assert train[0]["prompt"][0] == {"role": "system", "content": "Letters only."} and train["label"] == [True, False]


@pytest.mark.parametrize("rows,needles", [
    ([{"prompt": "a", "completion": "a", "label": True}, {"prompt": "b", "completion": "c", "label": True}],
     ["Every one of the 2 rows", "desirable (label true)", "needs both desirable and undesirable",
      "Add undesirable rows (label false)"]),
    ([{"prompt": "a", "completion": "b", "label": False}, {"prompt": "b", "completion": "c", "label": False}],
     ["undesirable (label false)", "Add desirable rows (label true)"]),
    ([{"prompt": "a", "completion": "a", "label": 1}, {"prompt": "b", "completion": "c", "label": 0}],
     ["Row 0", "'label' is 1, not true or false"]),
    ([{"prompt": "a", "completion": "", "label": True}], ["Row 0", "'completion' is empty"]),
])
def test_bad_unpaired_rows_are_refused_naming_the_fix(tmp_path, rows, needles):
    with pytest.raises(DataError) as err:
        load(DatasetConfig(name=_write(tmp_path / "rows.jsonl", rows), shuffle=False), seed=0, kind="unpaired")
    text = " ".join(str(err.value).split())
    for needle in needles:
        assert needle in text, text


def test_pairs_need_unpair_and_unpaired_rows_refuse_it():
    with pytest.raises(DataError, match="holds preference pairs.*Add dataset.unpair=true"):
        load(DatasetConfig(name="prefs"), seed=0, kind="unpaired")
    with pytest.raises(DataError, match="dataset 'prefs_unpaired' is unpaired already.*Drop dataset.unpair"):
        load(DatasetConfig(name="prefs_unpaired", unpair=True), seed=0, kind="unpaired")
    with pytest.raises(DataError, match="letters' is in prompt format, which has no pairs"):
        load(DatasetConfig(name="letters", unpair=True), seed=0, kind="unpaired")


# --- real tiny runs -----------------------------------------------------------------------------------------

def _changed(model_dir) -> bool:
    before = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


KTO_METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("data", [[], ["dataset=prefs_unpaired", "dataset.unpair=false"]])  # pairs unpaired (kto_smoke's), shipped unpaired
def test_tiny_kto_run_logs_kto_metrics_and_changes_the_model(workdir, data):
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=kto_smoke", *data, "max_steps=4", "train.eval_steps=2",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if "loss" in m]
    assert len(train_rows) == 4
    for key in KTO_METRICS:
        assert all(isinstance(m[key], float) for m in train_rows), key
    assert train_rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # step 1: policy = reference, 1 - sigmoid(0)
    assert train_rows[0]["kl"] == 0.0
    held_out = [m for m in metrics if "eval_rewards/margins" in m]
    assert held_out and all("eval_kl" in m for m in held_out)  # periodic held-out evaluation
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "eval_margin" in summary  # the alias of eval_rewards/margins
    assert _changed(run_dir / "model")


@pytest.mark.slow
def test_kto_smoke_learns_as_its_header_says(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=kto_smoke", "eval.after_training=true", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_margin"] > 0.08 and summary["eval_loss"] < 0.495, summary
    # the held-out pairs the rows came from: the trained model prefers the chosen reply more often than chance
    assert summary["eval/trained/preference_accuracy"] >= 0.6, summary


def test_lora_kto_uses_the_adapter_disabled_base_as_reference(workdir):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(algorithm="kto", experiment="kto_smoke", max_steps=2, output_dir=workdir / "run",
                            **{"model.lora.enabled": True, "model.lora.r": 4, "train.eval_steps": None})
    assert job.trainer.ref_model is None  # no second copy of the weights
    assert job.train()["status"] == "completed"
    assert (workdir / "run" / "model" / "adapter_config.json").is_file()


def test_kto_on_unpaired_rows_is_not_evaluated_as_pairs(workdir, capsys):
    """Refused before training (eval.after_training), and by `aligntune eval run=` on such a run."""
    with pytest.raises(ConfigError, match="eval.after_training=true compares.*held-out preference pairs.*unpaired rows"):
        run_config("eval.after_training=true")
    from aligntune.evaluation import evaluate

    with pytest.raises(ConfigError, match="holds unpaired rows.*eval_rewards/\\*"):
        evaluate(run_config(), workdir)
