"""backend=verl (GRPO and PPO): translate, export, and launch `python -m verl.trainer.main_ppo` in the verl environment.

    aligntune train backend=verl dry_run=true          # writes <run dir>/verl/ and prints the command
    aligntune train backend=verl backend.verl.python=/opt/verl/bin/python distributed.num_processes=8

<run dir>/verl/ holds train.parquet (and val.parquet), reward_fn.py, overrides.txt (one override a
line) and command.sh. verl writes its checkpoints to <run dir>/checkpoints. A dry run leaves no
summary.json (nothing was trained); a launched run's summary.json says completed only when verl exits 0.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from aligntune.backends.verl import export as exporter
from aligntune.backends.verl.translate import (
    TRANSLATED,
    Exported,
    override_strings,
    verl_overrides,
)
from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError

ENTRYPOINT = "verl.trainer.main_ppo"


def prepare(run: RunConfig, run_dir: str | Path) -> list[str]:
    """Export the data and reward file, translate the config; returns the command (python, -m, ..., overrides)."""
    from aligntune.models.loading import model_location
    from aligntune.run.rundir import RunFiles

    run_dir = Path(run_dir).resolve()
    out = run_dir / "verl"
    train, val, rows = exporter.export(run, out)
    reward_file = out / "reward_fn.py"
    exporter.write_reward_file(run, reward_file, run_dir)
    ex = Exported(train_file=str(train), val_file=str(val) if val else None, reward_file=str(reward_file),
                  train_rows=rows, model_path=model_location(run.model), checkpoint_dir=str(RunFiles(run_dir).checkpoints),
                  experiment=run_dir.name,
                  value_model_path=(str(Path(run.algorithm.value_model).expanduser().resolve())
                                    if getattr(run.algorithm, "value_model", "policy") != "policy" else None))
    overrides = override_strings(verl_overrides(run, ex))
    python = run.backend.verl.python or "<verl-python>"
    cmd = [python, "-m", ENTRYPOINT, *overrides]
    (out / "overrides.txt").write_text("\n".join(overrides) + "\n", encoding="utf-8")
    (out / "command.sh").write_text("#!/bin/sh\n" + shlex.join(cmd) + "\n", encoding="utf-8")
    return cmd


def check(run: RunConfig) -> None:
    """Everything refusable without exporting anything (run before any job of the command starts)."""
    from aligntune.backends.verl.translate import refuse_untranslatable

    if run.device == "cpu":
        raise ConfigError("backend=verl trains on GPUs, and device=cpu was asked for.", "Use device=auto or cuda.")
    if not run.dry_run and not run.backend.verl.python:
        raise ConfigError("backend=verl launches verl in its own environment, and backend.verl.python is not set.",
                          "Set backend.verl.python=/path/to/verl-venv/bin/python, or add dry_run=true to export the "
                          "data and print the command.")
    if run.backend.verl.python and not Path(run.backend.verl.python).expanduser().is_file():
        raise ConfigError(f"backend.verl.python={run.backend.verl.python} does not exist.",
                          "Point it at the python of the virtual environment verl is installed in.")
    refuse_untranslatable(run)


def run(run: RunConfig, run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """The registry entry's target for backend=verl (core/registry.py; run by core/job.run_job)."""
    from aligntune.run.console import console
    from aligntune.run.rundir import RunDir

    check(run)
    cmd = prepare(run, run_dir)
    console.print(f"[bold]verl[/bold]: {len(cmd) - 3} overrides from {len(TRANSLATED)} aligntune keys; files in "
                  f"{Path(run_dir) / 'verl'}", soft_wrap=True)
    print(shlex.join(cmd), flush=True)
    if run.dry_run:
        return {"status": "dry_run", "command": cmd}
    rundir = RunDir(run_dir)
    rundir.start(run, overrides)
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        error = RuntimeError(f"verl exited with code {code}")
        rundir.fail(error)
        raise error
    return rundir.finish({"backend": "verl", "checkpoints": str(rundir.checkpoints)})
