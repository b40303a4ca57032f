"""Shared fixtures. Tests never touch the network: HF_HUB_OFFLINE is set for the whole session."""

from __future__ import annotations

import os

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
