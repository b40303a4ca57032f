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


MAX_PEEK_BYTES = 64 << 20  # a .json list is parsed whole to read its first row; larger ones are not peeked at


def first_row(name: str) -> dict | None:
    """The first row of a local dataset file (shipped or the user's), read without `datasets`: for deciding its format
    before the run is composed. None for directories, hub ids and files that do not parse (the loader reports those)."""
    import csv
    import json

    try:
        src = resolve(name)
    except ConfigError:
        return None
    if src.kind not in ("shipped", "file"):
        return None
    path = Path(src.location)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path).read_row_group(0) if pq.ParquetFile(path).num_row_groups else None
            rows = table.slice(0, 1).to_pylist() if table is not None else []
            return rows[0] if rows else None
        with path.open(encoding="utf-8") as f:
            if path.suffix == ".csv":
                return next(csv.DictReader(f), None)
            head = f.read(1)
            f.seek(0)
            if head == "[" and path.suffix == ".json":
                if path.stat().st_size > MAX_PEEK_BYTES:
                    return None
                rows = json.load(f)
                row = rows[0] if isinstance(rows, list) and rows else None
            else:
                row = next((json.loads(line) for line in f if line.strip()), None)
    except Exception:  # unreadable or malformed (JSON, CSV, pyarrow errors): the loader names the problem later
        return None
    return row if isinstance(row, dict) else None
