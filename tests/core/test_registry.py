"""The backend registry (aligntune/core/registry.py): each engine declares what it supports, the pre-flight refuses
the rest, and each refusal exists in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import aligntune
from aligntune.config import compose
from aligntune.core import registry
from aligntune.errors import ConfigError

SOURCE = Path(aligntune.__file__).parent


def run(*overrides):
    return compose.load(["model=tiny", "dataset=letters", *overrides])[0]


@pytest.mark.parametrize("message", [r"needs at least one reward", r"backend\.trl_args is set",
                                     r"num_mini_batches=\{[^}]*\} does not divide"])
def test_each_refusal_is_written_once(message):
    found = [f"{p.relative_to(SOURCE)}:{i}" for p in sorted(SOURCE.rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if re.search(message, line)]
    assert len(found) == 1, f"{message!r} is refused in {found}"


def test_every_entry_points_at_a_builder_module_and_says_why_it_lacks_an_algorithm():
    import importlib.util

    for name, entry in registry.BACKENDS.items():
        for target in [*entry.algorithms.values(), *([entry.check] if entry.check else [])]:
            module, _, func = target.partition(":")
            assert func and importlib.util.find_spec(module) is not None, (name, target)
    assert "TRL removed its PPO trainer" in registry.BACKENDS["trl"].why_not["ppo"]
    assert [n for n, e in registry.BACKENDS.items() if e.launched] == ["verl"]


@pytest.mark.parametrize("overrides", [["algorithm=ppo", "backend=native"], ["algorithm=ppo", "backend=auto"],
                                       ["backend=verl", "dry_run=true"]])
def test_trl_args_are_refused_off_trl(overrides):
    with pytest.raises(ConfigError, match=r"backend\.trl_args is set \(\['top_k'\]\).*which is not TRL"):
        registry.check_supported(run(*overrides, "+backend.trl_args.top_k=5"))
    registry.check_supported(run("+backend.trl_args.top_k=5"))  # GRPO on TRL takes them


def test_what_verl_does_not_support_is_refused_by_its_entry():
    with pytest.raises(ConfigError, match="train.on_nonfinite=skip.*backend=verl.*skip-the-step"):
        registry.check_supported(run("backend=verl", "train.on_nonfinite=skip"))
    with pytest.raises(ConfigError, match="resume=.*backend=verl.*trainer.resume_mode"):
        registry.check_supported(run("backend=verl", "resume=somewhere"))
    with pytest.raises(ConfigError, match="train.log_completions=true.*backend=verl.*log_val_generations"):
        registry.check_supported(run("backend=verl", "train.log_completions=true"))
    registry.check_supported(run("train.on_nonfinite=skip"))  # TRL skips a step


def test_verl_splits_mini_batches_by_prompts():
    # 2 prompts x 8 completions split in 4 on TRL; verl splits the 2 prompts, which 4 does not divide
    registry.check_supported(run("batch_size=2", "algorithm.num_mini_batches=4"))
    with pytest.raises(ConfigError, match=r"num_mini_batches=4 does not divide the 2 prompts of one rollout.*"
                                          r"verl splits a rollout by prompts"):
        registry.check_supported(run("backend=verl", "batch_size=2", "algorithm.num_mini_batches=4"))
