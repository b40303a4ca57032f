"""Several processes from one `aligntune train` command: the run is re-executed under `accelerate launch`.

    aligntune train distributed.num_processes=2            # DDP, 2 processes (gloo on CPU, nccl on GPUs)
    aligntune train distributed=deepspeed_zero3 distributed.num_processes=8
    aligntune train distributed.config_file=my_accelerate.yaml     # a user's file, or TRL's zero3, fsdp2, ...

The Hydra job (one per sweep point, so each job of a sweep launches its own process group) writes
<run dir>/launch/accelerate_config.yaml (presets.py; with distributed.config_file, a copy of that file with the
process count the batch checks used), then runs

    python -m accelerate.commands.launch --config_file <that file> -m aligntune.distributed.worker <run dir> <overrides>

Each worker recomposes the same config from the job's overrides, checks it equals the launcher's, and
trains with the process count as the world size, so `train.batch_size` stays global. Only global rank 0
writes the run directory (config, logs, metrics, samples, plots, final model, summary.json); the
launcher's own output (accelerate, torchrun) goes to <run dir>/launch/launcher.log.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from aligntune import errors
from aligntune.config.schema import RunConfig
from aligntune.distributed import presets
from aligntune.errors import ConfigError

CHILD_ENV = "ALIGNTUNE_DISTRIBUTED_CHILD"  # set in the workers: they train, they never launch again
LAUNCH_DIR = "launch"


def wanted(run: RunConfig) -> bool:
    """Whether `run` goes through `accelerate launch` (several processes, or a sharding strategy)."""
    d = run.distributed
    return (d.num_processes > 1 or d.strategy != "ddp" or d.config_file is not None) and not os.environ.get(CHILD_ENV)


def check_launchable(run: RunConfig, backend: str) -> None:
    """What cannot run under accelerate, refused before anything starts."""
    d = run.distributed
    if backend != "trl":
        raise ConfigError(f"distributed.num_processes={d.num_processes} (distributed.strategy={d.strategy}) launches "
                          f"TRL trainers under accelerate, and algorithm={run.algorithm.name} runs on backend={backend}, "
                          "which is a single-process engine.",
                          "Drop the distributed settings for this algorithm (or use backend=verl for cluster-scale PPO).")
    if d.num_machines > 1 and not d.main_process_ip:
        raise ConfigError(f"distributed.num_machines={d.num_machines}, but distributed.main_process_ip is not set.",
                          "Set distributed.main_process_ip to the address of the machine with machine_rank=0.")
    if getattr(run.algorithm, "dynamic_sampling", False):
        raise ConfigError("algorithm.dynamic_sampling (DAPO) refills rollouts in one process, and "
                          f"distributed.num_processes={d.num_processes} asks for several.",
                          "Run it with distributed.num_processes=1, or set algorithm.dynamic_sampling=false.")


def check_hardware(run: RunConfig) -> None:
    """FSDP and DeepSpeed need GPUs (and DeepSpeed its package); said before launching, not by a worker's traceback."""
    import importlib.util

    strategy = run.distributed.strategy
    kind, label = presets.DISTRIBUTED_TYPES[strategy], f"distributed={strategy}"
    if run.distributed.config_file is not None:
        from aligntune.config.accelerate_file import read

        kind = read(run.distributed.config_file)[2]["distributed_type"]
        label = f"distributed.config_file={run.distributed.config_file} (distributed_type {kind})"
    if kind not in ("FSDP", "DEEPSPEED"):
        return
    import torch

    if run.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError(f"{label} shards the model across GPUs, and this machine has none "
                          f"(device={run.device}, torch.cuda.is_available() is {torch.cuda.is_available()}).",
                          "Use distributed=ddp on CPU, or add dry_run=true to write the launch files and print the "
                          "command for a GPU machine.")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{label} needs DeepSpeed, which is not installed.",
                          "Install it on the GPU machine: pip install 'aligntune[deepspeed]'.")


def command(config_file: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    """The exact launch command (a list: no shell quoting involved)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "aligntune.distributed.worker", str(run_dir), *overrides]


def prepare(run: RunConfig, run_dir: str | Path, overrides: list[str]) -> list[str]:
    """Write the launch files and the config the workers must reproduce; returns the command."""
    launch_dir = Path(run_dir) / LAUNCH_DIR
    config_file = presets.write(run, launch_dir) if run.distributed.config_file is None else presets.copy(run, launch_dir)
    (launch_dir / "expected_config.json").write_text(json.dumps(asdict(run), default=str), encoding="utf-8")
    return command(config_file, Path(run_dir), overrides)


def launch(run: RunConfig, run_dir: str | Path, overrides: list[str]) -> dict:
    """Run the job on `run.distributed.num_processes` processes and return rank 0's summary.

    A worker's user error (config, data, reward) is raised here as the same kind of error, so the
    command reports one paragraph and exits 2; anything else points at the logs.
    """
    from aligntune.run.rundir import RunDir

    run_dir = Path(run_dir)
    if not run.dry_run:
        check_hardware(run)
    cmd = prepare(run, run_dir, overrides)
    if run.dry_run:
        print(shlex.join(cmd))
        return {"status": "dry_run", "command": cmd}
    env = {**os.environ, CHILD_ENV: "1"}
    log = run_dir / LAUNCH_DIR / "launcher.log"
    with log.open("w", encoding="utf-8") as stderr:
        code = subprocess.run(cmd, env=env, stderr=None if run.verbose else stderr, check=False).returncode
    rundir = RunDir(run_dir)
    summary = rundir.summary()
    if code == 0 and summary.get("status") == "completed":
        return summary
    rundir.fail_unless_failed(RuntimeError(f"the launched processes exited with code {code}; see {log}"))
    kind, _, message = str(summary.get("error", "")).partition(": ")
    error_class = getattr(errors, kind, None)
    if isinstance(error_class, type) and issubclass(error_class, errors.AligntuneError):
        raise error_class(message)
    raise RuntimeError(f"the {run.distributed.num_processes} launched processes exited with code {code}"
                       f"{' (' + summary['error'] + ')' if summary.get('error') else ''}; accelerate's and torchrun's "
                       f"output is in {log}, the run's log in {rundir.log_file}")
