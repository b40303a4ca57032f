"""The config search path: the shipped configs plus a team's own directories, decided once per command.

Sources, in this order of precedence among the user directories:
    --config-dir DIR / -cd DIR (repeatable) > hydra.searchpath=[file://DIR,...] > ALIGNTUNE_CONFIG_PATH (os.pathsep)
The shipped configs/ tree is always on the path. A user directory holds the same layout (`experiment/`,
`dataset/`, `model/`, `rewards/`, `algorithm/`, `tuning/`, `debug/`, ...) and adds options to any group.

Every stage composes with the same path: the user directories travel as ONE override, `hydra.searchpath=[file://...]`
(`as_override`), which validation, the Hydra run, sweeps, the Python API and the accelerate workers carry, and which
the run directory records in overrides.yaml, so resume, eval and workers recompose identically. What Hydra is given
is `hydra_override`: the same directories followed by the shipped configs.

Precedence and shadowing. Hydra looks a config up in its search path in order and takes the first match
(hydra/_internal/config_repository.py, `_find_object_source`); the primary config's directory leads that path, and
`hydra.searchpath` entries are appended after it (config_loader_impl.py, `_process_config_searchpath`). So the
primary, configs/primary/train.yaml, sits alone in its own directory (`primary_dir`), and the groups come from
`hydra.searchpath=[user dirs..., shipped configs]`: a user option named like a shipped one (or like one of a later
user directory) shadows it, and every run says so in one line (`shadows`, noticed in train.log and on the console).
The primary itself always comes from the package: Hydra reads it before the search path is extended, so a
`train.yaml` at the top of a user directory would be ignored, and is refused instead (its keys belong in an
experiment option).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from aligntune.config.overrides import is_searchpath
from aligntune.errors import ConfigError

ENV = "ALIGNTUNE_CONFIG_PATH"
FLAGS = ("--config-dir", "-cd")
OVERRIDE = "hydra.searchpath"


def shipped_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("aligntune.configs"))).resolve()


def primary_dir() -> Path:
    """The directory Hydra reads the primary config (train.yaml) from: alone there, so it leads no group lookup."""
    return shipped_dir() / "primary"


def _entries(value: str) -> list[str]:
    """The directories of a `hydra.searchpath=[...]` value, read by Hydra's own override parser (so an escaped or
    quoted entry reads as Hydra reads it); file:// entries, or plain paths. pkg:// ones are not directories."""
    from hydra.errors import HydraException

    from aligntune.config.overrides import parser

    try:
        parsed = parser().parse_override(f"{OVERRIDE}={value}").value()
    except HydraException as exc:
        raise ConfigError(f"Cannot parse {OVERRIDE}={value}: {str(exc).strip().splitlines()[0]}",
                          "Give a list of directories: hydra.searchpath=[file:///abs/dir,...], or --config-dir DIR.") from None
    out = []
    for item in parsed if isinstance(parsed, list) else [parsed]:
        item = str(item)
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
        if is_searchpath(o):
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
        if (path / "train.yaml").is_file():
            raise ConfigError(f"{path / 'train.yaml'} would replace aligntune's primary config, and Hydra reads the "
                              "primary from the package only, so it would be ignored.",
                              f"Move its keys into an experiment option ({path / 'experiment' / 'my_run.yaml'}, "
                              "headed by '# @package _global_') and select it with experiment=my_run.")
        if path != shipped and path not in out:
            out.append(path)
    return out


def as_override(dirs: list[Path]) -> list[str]:
    """[] for no user directory, else the one override that records them (what overrides.yaml keeps)."""
    if not dirs:
        return []
    return [f"{OVERRIDE}=[" + ",".join(map(_entry, dirs)) + "]"]


def hydra_override(dirs: list[Path]) -> str:
    """What Hydra is given: the user directories in precedence order, then the shipped configs (always last)."""
    return f"{OVERRIDE}=[" + ",".join(map(_entry, [*dirs, shipped_dir()])) + "]"


def _entry(d: Path) -> str:
    """One search-path entry as Hydra's override grammar reads it back (quoted where the path needs it)."""
    from aligntune.config.overrides import value

    return value(f"file://{d}")


def from_overrides(overrides: list[str]) -> list[Path]:
    """The user directories an override list names (its hydra.searchpath entries, the shipped configs left out),
    unchecked."""
    dirs: list[Path] = []
    shipped = shipped_dir()
    for o in overrides:
        if is_searchpath(o):
            dirs += [Path(d) for d in _entries(o.split("=", 1)[1]) if Path(d) != shipped and Path(d) not in dirs]
    return dirs


def options(group: str, dirs: list[Path]) -> dict[str, Path]:
    """{option name: its file} of a config group over the user directories `dirs` and the shipped configs, as Hydra
    resolves them: the first directory that has the option wins."""
    found: dict[str, Path] = {}
    for root in [*dirs, shipped_dir()]:
        for path in sorted((root / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def shadows(dirs: list[Path]) -> list[tuple[Path, Path, Path]]:
    """(group/name.yaml, user file, the file it shadows) for every config of a user directory that has the same group
    and name as one later on the search path (a later user directory, or the shipped configs)."""
    roots = [*dirs, shipped_dir()]
    out = []
    for i, d in enumerate(dirs):
        for path in sorted(Path(d).rglob("*.yaml")):
            rel = path.relative_to(d)
            twin = next((r / rel for r in roots[i + 1:] if (r / rel).is_file()), None)
            if twin is not None:
                out.append((rel, path, twin))
    return out


def shadow_notices(overrides: list[str]) -> list[str]:
    """One line per shadowed config on the search path that `overrides` name: what a run notes in train.log."""
    shipped = shipped_dir()
    return [f"{mine} shadows {'the shipped' if theirs.is_relative_to(shipped) else 'the'} option "
            f"{'/'.join(rel.parts[:-1])}={rel.stem} ({theirs})." for rel, mine, theirs in shadows(from_overrides(overrides))]


