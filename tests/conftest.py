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
