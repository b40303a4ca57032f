"""`distributed.config_file`: a user's accelerate config file, or one of the presets TRL ships.

    aligntune train experiment=dpo_smoke distributed.config_file=my_accelerate.yaml
    aligntune train experiment=dpo_smoke distributed.config_file=zero3 distributed.num_processes=4

A preset name (zero1, zero2, zero3, fsdp1, fsdp2, multi_gpu) is TRL's file `trl/accelerate_configs/<name>.yaml`,
found without importing TRL. The file is read while the config is validated, so aligntune's batch arithmetic
runs on its `num_processes`: a user's file is the one place that count lives (a different
distributed.num_processes is refused), while TRL's presets state 8 as a placeholder that TRL's own docs override
on the command line, so distributed.num_processes replaces it there. Its `mixed_precision` becomes accelerate's
environment, which transformers prefers over a run's fp32, so it must agree with model.dtype (auto adopts it).
The launcher copies the file, with the process count it ran with, into <run dir>/launch/.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aligntune.errors import ConfigError

TRL_PRESETS = ("zero1", "zero2", "zero3", "fsdp1", "fsdp2", "multi_gpu")
LAUNCHED_TYPES = ("MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_CPU")  # accelerate distributed_type values aligntune launches
PRECISIONS = ("no", "bf16", "fp16")


def trl_presets_dir() -> Path | None:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "accelerate_configs"


def resolve(value: str) -> tuple[Path, bool]:
    """(the file, whether it is one of TRL's presets) for a distributed.config_file value."""
    if value in TRL_PRESETS:
        directory = trl_presets_dir()
        path = directory / f"{value}.yaml" if directory is not None else None
        if path is None or not path.is_file():
            raise ConfigError(f"distributed.config_file={value} names TRL's preset {value}.yaml, which this TRL "
                              f"installation does not have (looked in {directory}).",
                              "Give the path of an accelerate config file instead (`accelerate config` writes one).")
        return path, True
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"distributed.config_file={value} does not exist: it is neither a file (looked in "
                          f"{Path.cwd()}) nor one of TRL's presets.",
                          f"Give the path of an accelerate config file (`accelerate config` writes one), or a preset: "
                          f"{', '.join(TRL_PRESETS)}.")
    return path.resolve(), False


def read(value: str) -> tuple[Path, bool, dict]:
    """(file, is a TRL preset, its fields), checked for what aligntune relies on."""
    import yaml

    path, preset = resolve(value)
    try:
        fields = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"distributed.config_file={value}: {path} cannot be read as YAML ({exc}).",
                          "Point it at an accelerate config file (YAML, as `accelerate config` writes it).") from exc
    if not isinstance(fields, dict):
        raise ConfigError(f"distributed.config_file={value}: {path} is not a mapping of accelerate settings.",
                          "Point it at an accelerate config file (YAML, as `accelerate config` writes it).")
    kind = fields.get("distributed_type")
    if kind not in LAUNCHED_TYPES:
        raise ConfigError(f"distributed.config_file={value}: {path} has distributed_type={kind!r}, which launches "
                          "no process group.",
                          f"Use a file with distributed_type one of {', '.join(LAUNCHED_TYPES)}, or drop "
                          "distributed.config_file to train in one process.")
    n = fields.get("num_processes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"distributed.config_file={value}: {path} states num_processes={n!r}, and aligntune splits "
                          "each step's batch by the process count.", "Set num_processes in the file to the number "
                          "of processes on all machines (accelerate's meaning).")
    machines = fields.get("num_machines", 1)
    if not isinstance(machines, int) or machines < 1:
        raise ConfigError(f"distributed.config_file={value}: {path} states num_machines={machines!r}.",
                          "Set num_machines in the file to 1 or more.")
    precision = fields.get("mixed_precision", "no") or "no"
    if precision not in PRECISIONS:
        raise ConfigError(f"distributed.config_file={value}: {path} asks for mixed_precision={precision}, and "
                          "aligntune's compute precision (model.dtype) is fp32, bf16 or fp16.",
                          "Set mixed_precision in the file to no, bf16 or fp16.")
    return path, preset, fields
