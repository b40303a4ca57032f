"""Top-level shortcuts for the seed's keyword arguments and the algorithm knobs.

`aligntune train group_size=16` is rewritten to `algorithm.group_size=16` before Hydra sees it, so
sweeps (`group_size=4,8`) and the saved config use the real keys. Whether the key exists for the
selected algorithm is checked by composition; `compose.explain` names the shortcut in the error.
"""

from __future__ import annotations

import re

SHORTCUTS: dict[str, str] = {
    "group_size": "algorithm.group_size",
    "beta": "algorithm.beta",
    "cliprange": "algorithm.cliprange",
    "temperature": "algorithm.temperature",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "num_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
    "model_name": "model.name_or_path",
    "dataset_name": "dataset.name",
}

# Shortcuts whose value names a preset's model or dataset: they select that preset (so its recipe and
# rewards come along), or the `custom` option (no recipe, no rewards) with the value set.
PRESET_SHORTCUTS = {"model_name": ("model", "name_or_path"), "dataset_name": ("dataset", "name")}
_SWEEP = re.compile(r"[,*]|^\w+\(")

_OVERRIDE = re.compile(r"^(?P<prefix>\+\+|\+|~)?(?P<key>[A-Za-z_]\w*)(?P<rest>=.*)?$", re.DOTALL)


def rewrite(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Rewrite shortcut overrides to their real keys. Returns (overrides, {real key: shortcut used})."""
    out, used = [], {}
    for override in overrides:
        m = _OVERRIDE.match(override)
        if m and m["key"] in PRESET_SHORTCUTS and m["rest"] and not m["prefix"] and not _SWEEP.search(m["rest"][1:]):
            group, key = PRESET_SHORTCUTS[m["key"]]
            value = m["rest"][1:].strip("'\"")
            preset = _preset_with(group, key, value)
            out += [f"{group}={preset}"] if preset else [f"{group}=custom", f"{group}.{key}={m['rest'][1:]}"]
            used[f"{group}.{key}"] = m["key"]
        elif m and m["key"] in SHORTCUTS:
            real = SHORTCUTS[m["key"]]
            prefix = m["prefix"] or ""
            # `+group_size=4` on a shortcut means the same as `group_size=4`: the real key always exists.
            prefix = "~" if prefix == "~" else ""
            out.append(f"{prefix}{real}{m['rest'] or ''}")
            used[real] = m["key"]
        else:
            out.append(override)
    return out, used


def _preset_with(group: str, key: str, value: str) -> str | None:
    """The option of `group` whose YAML sets `key` to `value` (e.g. model=tiny for aligntune:tiny)."""
    from pathlib import Path

    import yaml

    from aligntune.config.compose import config_dir

    for path in sorted((Path(config_dir()) / group).glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if data.get(key) == value:
            return path.stem
    return None
