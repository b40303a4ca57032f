"""Shared fixtures, and the helpers several test modules use (`from conftest import read_jsonl`: one copy each).
Tests never touch the network: HF_HUB_OFFLINE is set for the whole session."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory):
    """One tiny-model cache for the session, away from the user's ~/.cache."""
    os.environ["ALIGNTUNE_CACHE"] = str(tmp_path_factory.mktemp("aligntune-cache"))
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory, as a user would from their project."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real 2-step GRPO run (experiment=smoke) through the CLI, shared by the session: read it, don't change it
    (its report.md may be rewritten)."""
    from aligntune import cli

    tmp = tmp_path_factory.mktemp("tiny-run")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert cli.main(["train", "experiment=smoke", "max_steps=2", f"hydra.run.dir={tmp}/run"]) == 0
    finally:
        os.chdir(cwd)
    return tmp / "run"


# --- helpers -------------------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    """Every record of a finished run's .jsonl file; strict (aligntune.run.rundir.read_jsonl skips a torn line, a
    finished run has none)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def changed_params(model_dir: Path) -> list[str]:
    """The parameter names whose values differ between the tiny model a run starts from and `model_dir`'s."""
    import torch
    from transformers import AutoModelForCausalLM

    from aligntune.models import tiny

    before = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


def dead_pid() -> int:
    """The pid of a process that has ended (as a crashed run's summary.json would record it)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
