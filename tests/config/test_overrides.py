"""aligntune/config/overrides.py: what an override is about, as Hydra's parser reads it."""

from __future__ import annotations

import pytest

from aligntune.config import overrides


@pytest.mark.parametrize("override, key", [
    ("algorithm.beta=0.1", "algorithm.beta"), ("+rewards.mine.fn=f.py:score", "rewards.mine.fn"),
    ("++train.max_steps=3", "train.max_steps"), ("~debug", "debug"), ("model@x=tiny", "model"),
    ("hydra/launcher=joblib", "hydra/launcher"), ("algorithm.beta=0.0,0.01", "algorithm.beta"),
    ("prompt=a (b", "prompt"),  # Hydra cannot parse it (yet): the text before '='
])
def test_key_is_what_hydra_reads(override, key):
    assert overrides.key(override) == key


@pytest.mark.parametrize("override, hydra", [
    ("hydra.run.dir=outputs/x", True), ("++hydra.sweep.dir=x", True), ("hydra/launcher=joblib", True),
    ("hydra.searchpath=[file:///team]", True), ("hydra_like=1", False), ("experiment=smoke", False),
    ("+rewards.hydra.fn=f.py:g", False),
])
def test_hydra_settings_are_told_from_the_jobs_config(override, hydra):
    assert overrides.is_hydra(override) is hydra


def test_the_search_path_is_one_hydra_setting():
    assert overrides.is_searchpath("hydra.searchpath=[file:///a,file:///b]")
    assert overrides.is_searchpath("+hydra.searchpath=['file:///a b']")
    assert not overrides.is_searchpath("hydra.run.dir=x") and not overrides.is_searchpath("searchpath=x")


@pytest.mark.parametrize("v", [None, True, False, 0, 3, -2, 1e-6, 0.5, "plain", "a b", "x,y", "f.py:score", "true",
                               "null", "1e-3", "42", "it's", "back\\slash", "end\\", "q\\'x", "[1]", "",
                               "file:///team/my configs", [1, "a b", None], ("x", 2.5), {"k": 1, "n": "a,b"}, []])
def test_value_reads_back_as_the_python_value(v):
    from aligntune.config.overrides import parser, value

    parsed = parser().parse_override(f"k={value(v)}").value()
    expected = list(v) if isinstance(v, tuple) else v
    assert parsed == expected and type(parsed) is type(expected), (v, value(v), parsed)
