"""The Python API: a run from keyword arguments, through the same composition and checks as the CLI.

    from aligntune.core.backend_factory import create_rl_trainer
    trainer = create_rl_trainer(model_name="aligntune:tiny", dataset_name="letters", algorithm="grpo",
                                backend="trl", num_epochs=1, batch_size=2, learning_rate=1e-6)
    metrics = trainer.train()

The backend registry is core/registry.py; the job (what create_rl_trainer returns) is core/job.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aligntune.core.job import AlignmentJob
from aligntune.core.registry import entry, resolve_backend
from aligntune.errors import ConfigError

__all__ = ["AlignmentJob", "create_rl_trainer"]


def create_rl_trainer(model_name: str | None = None, dataset_name: str | None = None, algorithm: str = "grpo",
                      backend: str = "trl", overrides: list[str] | None = None, output_dir: str | Path | None = None,
                      config_dir: str | Path | list | None = None, **config: Any) -> AlignmentJob:
    """Build a run from keyword arguments, through the same composition and checks as the CLI.

    Keywords are config keys: the seed's names and the shortcuts (`num_epochs`, `batch_size`,
    `learning_rate`, `group_size`, `beta`, ...), group selections (`experiment="smoke"`), or any
    dotted key (`**{"algorithm.beta": 0.0}`). `overrides` takes Hydra override strings as on the
    command line and is applied last. `output_dir` is the run directory (default
    outputs/<date>/<time>_<id>). `config_dir`: a team's config directory (or a list of them) on the search path,
    as `--config-dir` on the command line (ALIGNTUNE_CONFIG_PATH is read too), e.g.
    `create_rl_trainer(config_dir="configs", experiment="my_grpo")`.
    """
    from aligntune import preflight
    from aligntune.config import compose, searchpath
    from aligntune.config.overrides import value as override_value

    items: list[str] = [f"algorithm={algorithm}", f"backend={backend}"]
    if model_name is not None:
        items.append(f"model_name={model_name}")
    if dataset_name is not None:
        items.append(f"dataset_name={dataset_name}")
    items += [f"{key}={override_value(value)}" for key, value in config.items()]
    items += list(overrides or [])
    dirs = [config_dir] if isinstance(config_dir, (str, Path)) else list(config_dir or [])
    _, items, found = searchpath.split([f"--config-dir={d}" for d in dirs], items)
    items += searchpath.as_override(found)
    from aligntune import inherited
    from aligntune.run.console import show_notice

    items, notices = inherited.apply(items)
    for text in notices:
        show_notice(text)
    run, _ = preflight.load(items)
    from aligntune.distributed import launch

    if entry(run).launched or launch.wanted(run):
        raise ConfigError(f"backend={resolve_backend(run)} with distributed.num_processes={run.distributed.num_processes} "
                          "runs as launched processes, which the in-process Python API does not start.",
                          "Use the command line (aligntune train ...) for launched runs.")
    run_dir = Path(output_dir) if output_dir is not None else compose.default_run_dir()
    return AlignmentJob(run, run_dir, items)
