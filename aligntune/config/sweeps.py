"""Sweep job directory names: `<num>_<the job's swept values>`, readable, stable and short.

    aligntune train -m group_size=4,8 beta=0.0,0.01 experiment=smoke
      -> 0_group_size=4,beta=0.0  1_group_size=4,beta=0.01  2_group_size=8,beta=0.0  3_group_size=8,beta=0.01

Hydra's `override_dirname` names a job after every override it got, including the ones the whole
sweep shares (`experiment=smoke`, `train.max_steps=1`) and full dotted keys. Here:
- keys the command line fixes for every job are left out (the CLI records them before launching);
  what stays is what varies: the grid's keys, or the parameters an Optuna search suggests;
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

MAX_NAME = 80
# Never in a name: they select presets that apply to every job or only change what is printed.
EXCLUDED = {"experiment", "debug", "verbose"}
_fixed: set[str] = set()
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")
_SHORT = {real: short for short, real in SHORTCUTS.items()}


def set_fixed_keys(overrides: list[str]) -> set[str]:
    """Record the keys the command line gives one value for every job (not a sweep); returns them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _fixed.clear()
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
    _fixed.update(o.get_key_element().lstrip("+~") for o in parsed if not o.is_sweep_override())
    return set(_fixed)


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


def job_dir_name(num, overrides) -> str:
    """`<num>` followed by the job's non-fixed overrides, shortened (see the module docstring)."""
    items = [_split(str(o)) for o in overrides or []]
    items = [(p, k, v) for p, k, v in items if k not in _fixed and k.split(".")[0] not in EXCLUDED and k != "hydra"
             and not k.startswith("hydra.")]
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
