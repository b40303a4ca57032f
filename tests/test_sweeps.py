"""Sweep job directory names (aligntune/config/sweeps.py) and the sweep presets."""

from __future__ import annotations

import pytest

from aligntune.config import sweeps


@pytest.fixture(autouse=True)
def _no_fixed_keys():
    sweeps.set_fixed_keys([])
    yield
    sweeps.set_fixed_keys([])


def test_names_use_shortcuts_and_leave_out_what_every_job_shares():
    sweeps.set_fixed_keys(["group_size=4,8", "algorithm.beta=0.0,0.01", "experiment=smoke", "train.max_steps=3"])
    overrides = ["algorithm.group_size=8", "algorithm.beta=0.01", "experiment=smoke", "train.max_steps=3"]
    assert sweeps.job_dir_name(3, overrides) == "3_group_size=8,beta=0.01"


def test_names_keep_full_keys_when_leaves_collide_and_shorten_long_floats():
    name = sweeps.job_dir_name(0, ["+rewards.a.weight=0.5", "+rewards.b.weight=0.25",
                                   "train.learning_rate=0.00031622776601683794"])
    assert name == "0_rewards.a.weight=0.5,rewards.b.weight=0.25,learning_rate=0.0003162"


def test_names_have_no_path_separators_and_stay_short_and_stable():
    long = [f"dataset.name=/data/set number {i}/train.jsonl" for i in range(1)] + [f"+rewards.r{i}.weight=0.{i}" for i in range(20)]
    name = sweeps.job_dir_name(12, long)
    assert "/" not in name and " " not in name and len(name) <= 84
    assert name == sweeps.job_dir_name(12, long)  # the same overrides give the same name
    assert name != sweeps.job_dir_name(12, long[:-1])  # the hash covers the cut-off part
    assert sweeps.job_dir_name(5, ["experiment=smoke", "debug=smoke"]) == "5"
