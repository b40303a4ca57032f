"""Settings a run inherited from presets (a recipe, a dataset or experiment preset) that it cannot use as they are.

The command line is the user's; a preset's values are only a starting point. When a value a preset brought cannot
work with what the user chose, it is changed here, with a one-line notice, before anything is validated or run;
the same value typed on the command line is refused instead (by preflight, with the fix), never changed.

    aligntune train backend=verl dry_run=true     # the default recipe's eval.after_training=true -> false, noticed
    aligntune train dataset.name=my.jsonl         # arith's format gsm8k -> the format my.jsonl's columns have

Each change is an ordinary override appended to the command's (so config.yaml and overrides.yaml show it, and a
resumed run recomposes it). No torch is imported.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from aligntune.config.schema import RunConfig


@dataclass(frozen=True)
class Change:
    override: str  # e.g. "eval.after_training=false"
    notice: str  # one line: the key, what the preset had, why it changed, what to do instead


def typed_keys(overrides: list[str]) -> set[str]:
    """The keys (and group names) the command line sets, after the shortcut rewrite: `+a.b=1` -> a.b."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key:
            keys.add(key)
    return keys


def set_by_user(key: str, typed: set[str]) -> bool:
    """The command line set `key` itself, or a mapping above it (eval=..., +dataset.columns.x=...)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in typed for i in range(1, len(parts) + 1))


def changes(overrides: list[str]) -> list[Change]:
    """What to change for the run `overrides` compose (raises ConfigError as composition does)."""
    from aligntune.config import aliases, compose

    run, _ = compose.load(overrides)
    rewritten, _ = aliases.rewrite(list(overrides))
    typed = typed_keys(rewritten)
    return [*_backend_changes(run, typed, rewritten), *_dataset_changes(run, typed)]


def apply(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides with the changes appended, the notices)."""
    found = changes(overrides)
    return [*overrides, *(c.override for c in found)], [c.notice for c in found]


def apply_to_jobs(jobs: list[list[str]]) -> tuple[list[str], list[str]]:
    """The changes every job of a command needs (one job, or each point a sweep is validated at), and their notices.
    A change only some jobs of a sweep need is not made: those jobs are refused by validation, with the fix."""
    per_job = [changes(job) for job in jobs]
    common = [c for c in per_job[0] if all(c in other for other in per_job[1:])] if per_job else []
    return [c.override for c in common], [c.notice for c in common]


# --- backends that cannot honour a preset's setting ------------------------------------------------------------

def _backend_changes(run: RunConfig, typed: set[str], rewritten: list[str]) -> list[Change]:
    from aligntune.core.registry import resolve_backend

    if resolve_backend(run) != "verl":
        return []
    from aligntune.backends.verl.translate import OFF_WHEN_INHERITED, format_value

    out = []
    for key, off in OFF_WHEN_INHERITED.items():
        value = run
        for part in key.split("."):
            value = getattr(value, part)
        if value == off or set_by_user(key, typed):
            continue
        out.append(Change(f"{key}={format_value(off)}",
                          f"{key}={format_value(value)} came with a preset and has no equivalent on backend=verl (verl "
                          f"trains in its own process), so it is {format_value(off)} for this run; evaluate afterwards "
                          f"with `{_eval_command(rewritten)}`."))
    return out


_NOT_FOR_EVAL = ("backend", "dry_run", "distributed", "hydra", "resume", "verbose", "logger")


def _eval_command(rewritten: list[str]) -> str:
    """`aligntune eval` of a verl checkpoint with the run's own model, data and rewards (it compares with the base)."""
    kept = [o for o in rewritten if o.lstrip("+~").split("=", 1)[0].split(".")[0].split("/")[0] not in _NOT_FOR_EVAL]
    return " ".join(["aligntune eval run=<verl's checkpoint, merged into a Hugging Face directory>",
                     *(shlex.quote(o) for o in kept)])


# --- a dataset preset's format on a file the user named ---------------------------------------------------------

def _dataset_changes(run: RunConfig, typed: set[str]) -> list[Change]:
    """dataset.format came with a preset (dataset=arith: gsm8k), dataset.name is a local file whose columns do not
    have that format's but fit another: use the other (what dataset_name= or dataset.format=auto would detect)."""
    from aligntune.data import formats
    from aligntune.data.sources import first_row

    d = run.dataset
    if d.format == "auto" or set_by_user("dataset.format", typed):
        return []
    row = first_row(d.name)
    if row is None:  # not a local file, or one the loader will report on
        return []
    renamed = {canonical: row[source] for canonical, source in d.columns.items() if source in row}
    mapped = {**{k: v for k, v in row.items() if k not in d.columns.values()}, **renamed}
    missing = [c for c in formats.REQUIRED[d.format] if c not in mapped]
    if not missing:
        return []
    try:
        detected = formats.detect(list(mapped), mapped)
    except formats.RowError:
        return []  # nothing fits: the loader's error names the columns and the fix
    return [Change(f"dataset.format={detected}",
                   f"dataset.format={d.format} came with the dataset preset, but {d.name} has no {missing} column; its "
                   f"columns {sorted(mapped)} fit format {detected}, used instead (set dataset.format to choose, or "
                   f"dataset_name={shlex.quote(d.name)} to start from no dataset preset).")]
