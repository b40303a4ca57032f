"""Sweep job directory names: `<num>_<the job's swept values>`, readable, stable and short.

    aligntune train -m group_size=4,8 beta=0.0,0.01 experiment=smoke
      -> 0_group_size=4,beta=0.0  1_group_size=4,beta=0.01  2_group_size=8,beta=0.0  3_group_size=8,beta=0.01

Hydra's `override_dirname` names a job after every override it got, including the ones the whole
sweep shares (`experiment=smoke`, `train.max_steps=1`) and full dotted keys. Here:
- keys the command line fixes for every job are left out: the CLI adds them to Hydra's own
  `hydra.job.config.override_dirname.exclude_keys` (`fixed_keys_override`), so the names come out
  the same in a launcher's worker processes; what stays is what varies: the grid's keys, or the
  parameters an Optuna search suggests;
- keys are shown by their shortcut (`algorithm.group_size` -> `group_size`) or their last part
  (`algorithm.loss_type` -> `loss_type`), unless two of the job's keys would share a name;
- long floats are cut to 4 significant digits (an Optuna trial's 0.000316227766 -> 0.0003162),
  path separators and spaces become `_`, and a name over 80 characters is cut and ends with a
  hash of the full overrides, so it stays unique and the same for the same overrides.
The job number in front keeps names unique and in launch order.

Registered by `compose.register()` as the resolver `aligntune_job_dir`, used by train.yaml's
`hydra.sweep.subdir`.
"""

from __future__ import annotations

import hashlib
import re

from aligntune.config.aliases import SHORTCUTS
from aligntune.config.overrides import is_hydra_key

MAX_NAME = 80
# Never in a name: they select presets that apply to every job or only change what is printed.
EXCLUDED = ("experiment", "debug", "verbose", "hparams_search", "launcher")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")
_SHORT = {real: short for short, real in SHORTCUTS.items()}


def fixed_keys(overrides: list[str]) -> list[str]:
    """The keys the command line gives one value for every job (not a sweep), in order."""
    from aligntune.config.overrides import is_hydra, parser

    parsed = parser().parse_overrides([o for o in overrides if not is_hydra(o)])
    return list(dict.fromkeys(o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override()))


def fixed_keys_override(overrides: list[str]) -> str:
    """The Hydra override that leaves the fixed keys (and the presets in EXCLUDED) out of job names."""
    keys = list(dict.fromkeys([*EXCLUDED, *fixed_keys(overrides)]))
    quoted = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in keys)  # any key survives the parser
    return f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]"


def _value(text: str) -> str:
    text = text.strip().strip("'\"")
    if _FLOAT.match(text) and ("." in text or "e" in text.lower()) and len(text) > 6:
        text = f"{float(text):.4g}"
    return re.sub(r"[/\\\s]+", "_", text)


def _split(override: str) -> tuple[str, str, str]:
    """(prefix, key, value) of `+key=value`, `~key` or `key=value`."""
    prefix = override[:len(override) - len(override.lstrip("+~"))]
    key, _, value = override[len(prefix):].partition("=")
    return prefix, key, value


def job_dir_name(num, overrides, exclude=()) -> str:
    """`<num>` followed by the job's overrides but the `exclude` keys, shortened (see the module docstring)."""
    exclude = {str(k) for k in exclude or ()} | set(EXCLUDED)
    items = [_split(str(o)) for o in overrides or []]
    items = [(p, k, v) for p, k, v in items if k not in exclude and k.split(".")[0] not in EXCLUDED
             and not is_hydra_key(k)]
    leaf = [_SHORT.get(k, k.rsplit(".", 1)[-1]) for _, k, _ in items]
    parts = []
    for (prefix, key, value), short in zip(items, leaf):
        name = short if leaf.count(short) == 1 else key
        parts.append(f"{'~' if prefix == '~' else ''}{name}" + (f"={_value(value)}" if prefix != "~" else ""))
    body = ",".join(parts)
    if len(body) > MAX_NAME:
        digest = hashlib.sha1(",".join(map(str, overrides)).encode()).hexdigest()[:8]
        body = body[:MAX_NAME - 9].rstrip(",=") + "-" + digest
    return f"{num}_{body}" if body else str(num)


# Sweep presets that need a Hydra plugin: (group, option or None for all) -> (plugin module, pyproject extra)
PLUGINS = {
    ("hparams_search", None): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def check_presets(overrides: list[str], multirun: bool) -> None:
    """hparams_search= and launcher= only mean something in a sweep (-m), and need their Hydra plugin."""
    import importlib.util

    from aligntune.errors import ConfigError

    for override in overrides:
        group, sep, option = override.partition("=")
        if not sep or group not in ("hparams_search", "launcher") or option in ("null", ""):
            continue
        if not multirun:
            raise ConfigError(f"{override} configures a sweep, but the command runs a single job.",
                              f"Add -m: aligntune train -m {override} ...")
        module, extra = PLUGINS.get((group, option)) or PLUGINS.get((group, None)) or (None, None)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"{override} needs the Hydra plugin {module.split('.')[-1].replace('_', '-')}, which is "
                              "not installed.", f"Install it with: pip install 'aligntune[{extra}]'.")


def validation_jobs(overrides: list[str], search_space: dict[str, str] | None = None) -> list[list[str]]:
    """Override lists that together give every key each value a sweep can give it, to validate before launching:
    discrete sweeps expand to their grid (Hydra's BasicSweeper), an Optuna interval to its two ends, and a search
    preset's space (hydra.sweeper.params) is checked one parameter at a time on top of the first grid job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from aligntune.config import overrides as parsing

    parser = parsing.parser()

    def values(override) -> list[str]:
        if not override.is_sweep_override():
            return [override.get_value_element_as_str()]
        if override.is_discrete_sweep():
            return list(override.sweep_string_iterator())
        sweep = override.value()  # an interval: its ends
        return [repr(sweep.start), repr(sweep.end)]

    parsed = parser.parse_overrides(overrides)
    discrete = [f"{o.get_key_element()}={','.join(values(o))}" if o.is_sweep_override() else o.input_line for o in parsed]
    jobs = [list(job) for batch in BasicSweeper.split_arguments(parser.parse_overrides(discrete), None) for job in batch]
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    for key, spec in (search_space or {}).items():
        if key in given:
            continue
        override = parser.parse_overrides([f"{key}={spec}"])[0]
        jobs += [[*jobs[0], f"{key}={value}"] for value in values(override)]
    return jobs
