"""Experiment trackers (`logger=`): names checked, packages checked, mapped to report_to for TRL and the native
PPO engine, and real tiny runs whose TensorBoard event files (and wandb offline run) hold the logged metrics."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from conftest import changed_params, read_jsonl

from aligntune import cli, preflight
from aligntune.backends.native.ppo import ppo_engine_config
from aligntune.backends.trl.grpo import grpo_args
from aligntune.config import compose
from aligntune.errors import EXIT_USAGE, ConfigError
from aligntune.run import trackers


def scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logger_takes_a_name_a_list_or_none():
    from aligntune.config import schema

    assert tuple(trackers.TRACKERS) == schema.TRACKERS  # the schema checks the names; trackers.py wires each one
    assert preflight.load(["logger=tensorboard"])[0].logger == ["tensorboard"]
    assert preflight.load(["logger=[tensorboard,wandb]"])[0].logger == ["tensorboard", "wandb"]
    assert preflight.load(["logger=none"])[0].logger == [] and preflight.load([])[0].logger == []


def test_unknown_logger_is_refused_with_the_valid_names(workdir, capsys):
    with pytest.raises(ConfigError, match=r"'neptune' is not a tracker.*tensorboard, wandb, mlflow, trackio"):
        preflight.load(["logger=[tensorboard,neptune]"])
    assert cli.main(["train", "logger=comet"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "'comet' is not a tracker" in err and "tensorboard, wandb, mlflow, trackio" in err and "Traceback" not in err
    assert not (workdir / "outputs").exists()


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(workdir, capsys, monkeypatch):
    monkeypatch.setitem(trackers.TRACKERS, "mlflow", (("aligntune_no_such_module",), "mlflow"))
    assert cli.main(["train", "logger=mlflow"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "logger=mlflow needs the aligntune_no_such_module package" in err and "pip install 'aligntune[mlflow]'" in err
    assert not (workdir / "outputs").exists()


def test_logger_reaches_report_to_of_trl_and_of_the_native_engine():
    run, _ = compose.load(["logger=[tensorboard,trackio]"])  # trackio need not be installed
    args = grpo_args(run, "/runs/2026-11-24/10-00-00_ab12cd/checkpoints")
    assert args["report_to"] == ["tensorboard", "trackio"] and args["run_name"] == "10-00-00_ab12cd"
    assert args["project"] == "aligntune"
    assert grpo_args(preflight.load([])[0], "/x/run/checkpoints")["report_to"] == "none"
    ppo, _ = preflight.load(["algorithm=ppo", "logger=tensorboard"])
    assert ppo_engine_config(ppo, "/x/run/checkpoints").report_to == ("tensorboard",)


def test_grpo_run_writes_tensorboard_and_wandb_offline(workdir, monkeypatch):
    """Both trackers at once, through TRL's report_to. wandb is checked only where it is installed."""
    has_wandb = importlib.util.find_spec("wandb") is not None
    logger = "[tensorboard,wandb]" if has_wandb else "tensorboard"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(workdir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = workdir / "tracked_grpo_run"
    assert cli.main(["train", "experiment=smoke", "max_steps=2", "group_size=4", "algorithm.max_completion_length=8",
                     f"logger={logger}", f"hydra.run.dir={run_dir}"]) == 0
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward" in m]
    assert [m["step"] for m in metrics] == [1, 2]
    tb = scalars(run_dir / "tensorboard")
    for key in ("reward", "kl", "loss", "rewards/letter_match/mean", "completions/mean_length"):
        assert [s for s, _ in tb[f"train/{key}"]] == [1, 2], key
        assert [v for _, v in tb[f"train/{key}"]] == pytest.approx([m[key] for m in metrics], rel=1e-6), key
    assert not (run_dir / "checkpoints").exists()  # the event files went to <run>/tensorboard, nothing else
    assert changed_params(run_dir / "model")
    if not has_wandb:
        pytest.skip("wandb is not installed: TensorBoard checked, wandb not")
    runs = list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    record = runs[0].read_bytes()  # protobuf records: each history item is its key then its JSON value
    for m in metrics:
        value = json.dumps(m["reward"]).encode()
        assert b"train/reward\x82\x01" + bytes([len(value)]) + value in record
    assert run_dir.name.encode() in record  # the wandb run is named after the run directory


def test_native_ppo_run_writes_tensorboard(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=ppo_smoke", "max_steps=2", "logger=tensorboard", f"hydra.run.dir={run_dir}"]) == 0
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "reward" in m]
    tb = scalars(run_dir / "tensorboard")
    for key in ("reward", "kl", "loss/policy", "loss/value", "explained_variance"):
        assert tb[f"train/{key}"] == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in metrics], key
    assert "train/train_runtime" in tb and os.listdir(run_dir / "tensorboard")
    assert changed_params(run_dir / "model")
