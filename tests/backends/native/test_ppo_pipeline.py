"""The classic RLHF pipeline end to end on shipped data and the tiny model (Ouyang et al. 2022):
SFT on letters_sft -> reward model on prefs, from the SFT model -> PPO of the SFT model against that reward
model (the `reward_model` reward), the reward model also initialising the critic. Each stage names the
previous stage's run directory model/.

The three shipped pipeline experiments run in full (about 15 s on 2 idle CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from aligntune import cli
from aligntune.rewards.registry import BUILTIN

# SFT -> reward model -> PPO end to end: minutes on this machine, so it is in the slow suite (pytest -m slow).
pytestmark = pytest.mark.slow


def stage(run_dir: Path, experiment: str, *overrides: str) -> dict:
    assert cli.main(["train", f"experiment={experiment}", f"hydra.run.dir={run_dir}", *overrides]) == 0, experiment
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return summary


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def pipeline(workdir: Path, sft_args=(), rm_args=(), ppo_args=()) -> tuple[dict, dict, dict]:
    assert "reward_model" in BUILTIN
    sft, rm, ppo = workdir / "sft", workdir / "rm", workdir / "ppo"
    s1 = stage(sft, "pipeline_sft", *sft_args)
    s2 = stage(rm, "pipeline_reward", f"model.name_or_path={sft / 'model'}", *rm_args)
    s3 = stage(ppo, "pipeline_ppo", f"model.name_or_path={sft / 'model'}", f"rewards.rm.args.model={rm / 'model'}",
               f"algorithm.value_model={rm / 'model'}", *ppo_args)
    return s1, s2, s3


def test_pipeline_ppo_without_its_reward_model_fails_before_training(workdir, capsys):
    run_dir = workdir / "ppo"
    code = cli.main(["train", "experiment=pipeline_ppo", f"hydra.run.dir={run_dir}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "outputs/pipeline/rm/model" in err and "Traceback" not in err, err
    assert (run_dir / "metrics.jsonl").read_text() == ""


def test_pipeline_end_to_end(workdir):
    """Each stage names the previous one's model/; SFT fits the demonstrations, the reward model ranks held-out
    pairs above chance, and PPO's critic (initialised from the reward model) learns to predict the returns while
    the policy moves a bounded distance from the SFT model.

    Whether PPO raises the reward model's score is not asserted: on this 100k-parameter scale it depends on how the
    reward is read (TRL's RewardTrainer appends EOS to what it trains on; scoring without it over-optimises an
    out-of-distribution reading, with letter_match falling; scoring with it, 30 steps of a low-entropy SFT policy
    leave the score flat). The numbers are in the PR report."""
    _, rm_summary, _ = pipeline(workdir)
    sft, rm, ppo = workdir / "sft", workdir / "rm", workdir / "ppo"
    config = yaml.safe_load((ppo / "config.yaml").read_text())
    assert yaml.safe_load((rm / "config.yaml").read_text())["model"]["name_or_path"] == str(sft / "model")
    assert config["model"]["name_or_path"] == str(sft / "model")
    assert config["algorithm"]["value_model"] == str(rm / "model")
    assert {k: config["rewards"]["rm"][k] for k in ("fn", "weight", "args")} == {
        "fn": "reward_model", "weight": 1.0, "args": {"model": str(rm / "model")}}
    # the tiny model the experiments' headers name (they once inherited the default job's SmolLM2: 35x slower)
    assert yaml.safe_load((sft / "config.yaml").read_text())["model"]["name_or_path"] == "aligntune:tiny"
    before = AutoModelForCausalLM.from_pretrained(sft / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(ppo / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO left the SFT policy unchanged"

    losses = [m["loss"] for m in metrics(sft) if "loss" in m]
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10]), losses
    assert rm_summary["eval_preference_accuracy"] >= 0.65, rm_summary  # 40 held-out pairs; chance is 0.5
    steps = [m for m in metrics(ppo) if "reward" in m]
    assert all(isinstance(m["rewards/rm/mean"], float) and isinstance(m["rewards/letter_match/mean"], float) for m in steps)
    assert steps[0]["values/mean"] != 0.0  # the reward model's head, not value_model=policy's zero-initialised one
    k = len(steps) // 5
    assert len(steps) == 30 and sum(m["explained_variance"] for m in steps[-k:]) / k > 0.5, steps
    assert all(m["kl"] < 20.0 for m in steps) and steps[-1]["kl"] > 0.1, [m["kl"] for m in steps]  # nats per sequence
