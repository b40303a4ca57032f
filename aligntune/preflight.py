"""The pre-flight: torch-free refusals that need to know backends, data, models, trackers or rewards.

    overrides -> compose.load (config/: Hydra + the schemas' value and cross-field checks) -> preflight.check

`aligntune/config/` is a leaf (it imports nothing of aligntune but `errors`), so the checks that need the rest of
the package live here, above it, and every stage that runs a config calls them: CLI validation (each job of a
sweep), `aligntune check`, resume, eval/generate, distributed workers and the Python API. Each refusal exists once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import DictConfig

from aligntune.config import compose, schema
from aligntune.errors import ConfigError, RewardError


def check(run: schema.RunConfig) -> None:
    """An engine exists for the algorithm and supports what the run asks for; trackers are installed; the model,
    dataset and rewards exist. Nothing is imported or loaded (no torch)."""
    from aligntune.backends.trl.common import check_rollout_engine
    from aligntune.core.registry import builder_target, check_launch
    from aligntune.data.sources import resolve as resolve_dataset
    from aligntune.models.loading import check_model_options, resolve_source
    from aligntune.run.model_card import check_push
    from aligntune.run.trackers import check_installed

    builder_target(run)
    check_launch(run)
    check_installed(run.logger)
    resolve_source(run.model.name_or_path)
    check_model_options(run.model)
    check_rollout_engine(run)
    check_push(run)
    resolve_dataset(run.dataset.name)
    check_rewards_configured(run)


def load(overrides: list[str]) -> tuple[schema.RunConfig, DictConfig]:
    """compose.load, then the pre-flight: what a stage about to run the config calls."""
    run, cfg = compose.load(overrides)
    check(run)
    return run, cfg


def check_rewards_configured(run: schema.RunConfig) -> None:
    """Online algorithms need rewards, and every reference must point at something that exists."""
    if run.algorithm.name in schema.ONLINE_ALGORITHMS and not run.rewards:
        raise ConfigError(f"{run.algorithm.name.upper()} needs at least one reward, and none is configured.",
                          "Pick a dataset preset that brings rewards (dataset=letters), a reward preset (rewards=arith), "
                          "or add one: '+rewards.mine.fn=path/to/file.py:score'.")
    for name, spec in run.rewards.items():
        _check_reward_reference(name, spec.fn or name)


def _check_reward_reference(name: str, ref: str) -> None:
    """Registry name, importable module or existing file: checked without importing anything."""
    from aligntune.rewards.registry import BUILTIN

    if ref in BUILTIN:
        return
    where, sep, func = ref.rpartition(":")
    if not sep or not where or not func:
        raise RewardError(f"rewards.{name}: unknown reward '{ref}'.",
                          f"Use a built-in reward ({', '.join(sorted(BUILTIN))}), 'module:function' or 'path/to/file.py:function'.")
    if where.endswith(".py"):
        if not Path(where).expanduser().is_file():
            raise RewardError(f"rewards.{name}: the file {where} does not exist (looked in {Path.cwd()}).",
                              "Give a path relative to the directory you run aligntune from, or an absolute path.")
        return
    try:
        found = importlib.util.find_spec(where) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise RewardError(f"rewards.{name}: cannot find the module '{where}'.",
                          "Check that it is on PYTHONPATH, or reference the file as 'path/to/file.py:function'.")
