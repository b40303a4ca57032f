"""Real tiny PPO training (backend=native) through the CLI in-process and the Python API: metrics logged,
parameters changed, options exercised, and the smoke experiment's reward rising."""

from __future__ import annotations

import json

import pytest
from conftest import changed_params, read_jsonl
from transformers import AutoModelForCausalLM

from aligntune import cli
from aligntune.models import tiny

STEP_KEYS = ("reward", "reward_std", "rewards/letter_match/mean", "score", "non_score_reward", "rlhf_reward", "kl",
             "beta", "entropy", "policy/clipfrac", "value/clipfrac", "policy/approx_kl", "loss", "loss/policy",
             "loss/value", "returns/mean", "values/mean", "explained_variance", "completions/mean_length",
             "completions/clipped_ratio", "step_time", "learning_rate", "ppo/updates", "ppo/early_stopped",
             "rewards/unscored")


def test_cli_ppo_run_logs_metrics_and_changes_the_policy(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=ppo_smoke", "max_steps=3", f"hydra.run.dir={run_dir}"]) == 0
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in STEP_KEYS:
        assert all(isinstance(m[key], float) for m in metrics), key
    first = metrics[0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5) and metrics[-1]["kl"] != 0.0  # the policy left the reference
    assert first["learning_rate"] == 1e-2 and first["beta"] == 0.05
    for m in metrics:  # ppo_epochs 4 x 1 mini-batch, unless approx-KL passed early_stop_kl (0.05) first
        assert m["ppo/updates"] == 4.0 or (m["ppo/early_stopped"] == 1.0 and m["ppo/updates"] < 4.0), m
    assert 0 < first["completions/mean_length"] <= 12
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 2, 3} and 0.0 <= samples[0]["rewards"]["letter_match"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["train_runtime"] > 0
    assert changed_params(run_dir / "model"), "training left every parameter unchanged"


@pytest.mark.slow
def test_ppo_options_reach_the_run(workdir):
    """Adaptive KL moves beta; early stopping cuts the updates; whitening, clipping, the EOS penalty, mini- and
    micro-batches and held-out evaluation all run."""
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=ppo_smoke", "max_steps=3", "train.batch_size=8", "algorithm.num_mini_batches=2",
                     "train.micro_batch_size=2", "algorithm.adaptive_kl=true", "algorithm.target_kl=0.5",
                     "algorithm.kl_horizon=100", "algorithm.whiten_rewards=true",
                     "algorithm.reward_clip=0.5", "algorithm.missing_eos_penalty=1.0", "algorithm.early_stop_kl=1e-9",
                     "dataset.eval_fraction=0.1", "train.eval_steps=2", "train.lr_scheduler=linear",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    history = read_jsonl(run_dir / "metrics.jsonl")
    steps = [m for m in history if "reward" in m]
    evals = [m for m in history if "eval_reward" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    # Early stop: the first mini-batch update is at ratio 1 (approx-KL 0) and applies; the second sees approx-KL
    # > 1e-9 and is skipped, with the rest of the step's updates.
    assert all(m["ppo/updates"] == 1.0 and m["ppo/early_stopped"] == 1.0 for m in steps)
    # Adaptive KL: the error KL / target - 1 is clipped to [-0.2, 0.2] and moves beta by 1 + error * 8 / 100; at step 1
    # the policy is the reference, so KL is 0 (k1: log-ratios exactly 0) -> x (1 - 0.016).
    assert steps[0]["beta"] == 0.05 and steps[1]["beta"] == pytest.approx(0.05 * (1 - 0.2 * 8 / 100))
    assert steps[0]["learning_rate"] > steps[2]["learning_rate"]  # linear decay
    assert all(m["score"] <= 0.5 for m in steps)  # clipped, after the missing-EOS penalty
    assert [m["step"] for m in evals] == [2, 3]  # every 2 steps, and the job's final evaluation
    assert all(0.0 <= m["eval_reward"] <= 1.0 and "eval_rewards/letter_match/mean" in m for m in evals)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "eval_reward" in summary


@pytest.mark.slow
def test_bf16_autocast_and_gradient_checkpointing(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=ppo_smoke", "max_steps=2", "model.dtype=bf16", "train.gradient_checkpointing=true",
                     f"hydra.run.dir={run_dir}"]) == 0
    assert all(isinstance(m["loss"], float) for m in read_jsonl(run_dir / "metrics.jsonl"))
    assert changed_params(run_dir / "model")
    assert json.loads((run_dir / "model" / "config.json").read_text())["use_cache"] is True  # restored for inference


@pytest.mark.slow
def test_lora_ppo_saves_an_adapter_that_changed(workdir):
    from peft import PeftModel

    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=ppo_smoke", "max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
                     "model.lora.target_modules=[q_proj,v_proj]", f"hydra.run.dir={run_dir}"])
    assert code == 0
    assert (run_dir / "model" / "adapter_config.json").is_file()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny")), run_dir / "model")
    assert any(p.abs().sum() > 0 for n, p in adapted.named_parameters() if "lora_B" in n)


@pytest.mark.slow
def test_value_model_from_a_sequence_classification_checkpoint(workdir):
    from test_ppo import seq_cls_checkpoint

    path = seq_cls_checkpoint(workdir / "critic", other_tokenizer=False)
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=ppo_smoke", "max_steps=2", f"algorithm.value_model={path}",
                     f"hydra.run.dir={run_dir}"]) == 0
    first = read_jsonl(run_dir / "metrics.jsonl")[0]
    assert first["values/mean"] != 0.0  # a trained-or-random head, not the zero-initialised one of value_model=policy


@pytest.mark.slow
def test_python_api_runs_ppo(workdir):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(model_name="aligntune:tiny", dataset_name="letters", algorithm="ppo", backend="native",
                            batch_size=4, learning_rate=1e-3, max_steps=2, output_dir=workdir / "api")
    assert type(job.trainer).__name__ == "PPOTrainer" and job.config.algorithm.name == "ppo"
    metrics = job.train()
    assert metrics["status"] == "completed" and metrics["steps"] == 2 and "reward" in metrics
    assert changed_params(workdir / "api" / "model")


@pytest.mark.slow
def test_ppo_smoke_experiment_learns(workdir):
    """The acceptance bar of the PPO smoke run: last-20% mean reward >= 2x the first 20%."""
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=ppo_smoke", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 40
    assert summary["reward_last_20pct"] >= 2 * summary["reward_first_20pct"], summary
