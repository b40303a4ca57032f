"""The config search path: the shipped configs plus a team's own directories, decided once per command.

Sources, in this order of precedence among the user directories:
    --config-dir DIR / -cd DIR (repeatable) > hydra.searchpath=[file://DIR,...] > ALIGNTUNE_CONFIG_PATH (os.pathsep)
The shipped configs/ tree is always on the path. A user directory holds the same layout (`experiment/`,
`dataset/`, `model/`, `rewards/`, `algorithm/`, `tuning/`, `debug/`, ...) and adds options to any group.

Every stage composes with the same path: it travels as ONE Hydra override, `hydra.searchpath=[file://...]`
(`as_override`), which validation, the Hydra run, sweeps, the Python API and the accelerate workers pass to
Hydra, and which the run directory records in overrides.yaml, so resume, eval and workers recompose identically.

Shadowing: Hydra looks options up shipped-first (the primary config's directory leads its search path), so a user
option named like a shipped one would be silently ignored. That is refused instead (`check_clashes`), naming both
files: rename yours (e.g. `team_smoke`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from aligntune.errors import ConfigError

ENV = "ALIGNTUNE_CONFIG_PATH"
FLAGS = ("--config-dir", "-cd")
OVERRIDE = "hydra.searchpath"


def shipped_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("aligntune.configs"))).resolve()


def _entries(value: str) -> list[str]:
    """The directories of a `hydra.searchpath=[...]` value (file:// entries; pkg:// ones are not directories)."""
    body = value.strip().strip("[]")
    out = []
    for item in (x.strip().strip("'\"") for x in body.split(",") if x.strip()):
        if item.startswith("pkg://"):
            raise ConfigError(f"hydra.searchpath entry {item} is a Python package, and aligntune takes directories.",
                              "Give directories: --config-dir DIR, or hydra.searchpath=[file:///abs/dir].")
        out.append(re.sub(r"^file://", "", item))
    return out


def split(args: list[str], overrides: list[str], env: dict | None = None) -> tuple[list[str], list[str], list[Path]]:
    """(args without the --config-dir flags, overrides without hydra.searchpath, the user directories in precedence
    order, validated). `args` are the command's flags; `overrides` its KEY=VALUE items."""
    env = os.environ if env is None else env
    dirs: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in FLAGS:
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{name} needs a directory.", f"e.g. {name} configs")
                value = args[i + 1]
                i += 1
            dirs.append(value)
        else:
            rest.append(a)
        i += 1
    kept = []
    for o in overrides:
        if o.lstrip("+").startswith(OVERRIDE + "="):
            dirs += _entries(o.split("=", 1)[1])
        else:
            kept.append(o)
    dirs += [d for d in env.get(ENV, "").split(os.pathsep) if d.strip()]
    return rest, kept, resolve(dirs)


def resolve(dirs: list[str | Path]) -> list[Path]:
    """Absolute, de-duplicated, checked: each exists and holds YAML somewhere below it."""
    out: list[Path] = []
    shipped = shipped_dir()
    for d in dirs:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"The config directory {d} does not exist (looked in {Path.cwd()}).",
                              "Give a directory that holds config groups (experiment/, dataset/, ...): "
                              "--config-dir configs.")
        if not any(path.rglob("*.yaml")):
            raise ConfigError(f"The config directory {d} holds no YAML file.",
                              "Put your options in group folders of it, e.g. configs/experiment/my_grpo.yaml.")
        if path != shipped and path not in out:
            out.append(path)
    check_clashes(out)
    return out


def as_override(dirs: list[Path]) -> list[str]:
    """[] for no user directory, else the one Hydra override that puts them on the search path."""
    if not dirs:
        return []
    return [f"{OVERRIDE}=[" + ",".join(f"file://{d}" for d in dirs) + "]"]


def from_overrides(overrides: list[str]) -> list[Path]:
    """The user directories a recorded override list names (its hydra.searchpath entry), unchecked."""
    dirs: list[Path] = []
    for o in overrides:
        if o.lstrip("+").startswith(OVERRIDE + "="):
            dirs += [Path(d) for d in _entries(o.split("=", 1)[1])]
    return dirs


def is_searchpath(override: str) -> bool:
    return override.lstrip("+").startswith(OVERRIDE + "=")


def options(group: str, dirs: list[Path]) -> dict[str, Path]:
    """{option name: its file} of a config group over the shipped configs and `dirs` (first one wins)."""
    found: dict[str, Path] = {}
    for root in [shipped_dir(), *dirs]:
        for path in sorted((root / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def check_clashes(dirs: list[Path]) -> None:
    shipped = shipped_dir()
    for d in dirs:
        for path in sorted(d.rglob("*.yaml")):
            rel = path.relative_to(d)
            if rel.parts and rel.parts[0] == "hydra":
                continue  # Hydra's own settings: not options of aligntune's groups
            twin = shipped / rel
            if twin.is_file():
                group = "/".join(rel.parts[:-1]) or "the primary config"
                raise ConfigError(f"{path} has the name of a shipped option ({group}={rel.stem}, {twin}); Hydra would "
                                  "use the shipped one and ignore yours.",
                                  f"Rename yours (e.g. {rel.with_name('team_' + rel.name)}) and select it by that name.")
