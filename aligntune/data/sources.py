"""Where a dataset comes from: shipped with aligntune, a local file or directory, or the hub.

Resolution needs no torch, so a missing file or an unreachable hub is reported before any model
is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aligntune import hub
from aligntune.errors import ConfigError

SHIPPED_DIR = Path(__file__).parent / "shipped"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Source:
    kind: str  # shipped | file | dir | hub
    location: str  # a path for shipped/file/dir, the repo id for hub


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jsonl"))


def resolve(name: str) -> Source:
    if name in shipped_names():
        return Source("shipped", str(SHIPPED_DIR / f"{name}.jsonl"))
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in FILE_BUILDERS:
            raise ConfigError(f"dataset.name={name!r} is a {path.suffix or 'extension-less'} file, which aligntune cannot read.",
                              f"Convert it to one of {', '.join(FILE_BUILDERS)}.")
        return Source("file", str(path.resolve()))
    if path.is_dir():
        return Source("dir", str(path.resolve()))
    if hub.looks_like_hub_id(name) and not name.startswith((".", "/", "~")):
        hub.require(name, "dataset", "dataset.name",
                    f"Use a shipped dataset ({', '.join('dataset=' + n for n in shipped_names())}) or a local file "
                    "(dataset.name=path/to/data.jsonl).")
        return Source("hub", name)
    raise ConfigError(f"dataset.name={name!r} does not exist: it is not a file or directory (looked in {Path.cwd()}), "
                      "not a shipped dataset, and not a hub id.",
                      f"Check the path, or use a shipped dataset ({', '.join(shipped_names())}).")
