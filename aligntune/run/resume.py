"""`aligntune train resume=<run dir>|latest [resume_force=true] [KEY=VALUE ...]`: continue a run in its own directory.

The run's config is recomposed from what it was composed from (RunFiles.overrides: <run dir>/overrides.yaml,
search path included) plus the new overrides, and compared with the config it ran (<run dir>/config.yaml). A difference that would change the
run (model, data, algorithm, batch arithmetic, optimiser, seed, ...) is refused with the list of differences
unless resume_force=true; only settings that do not touch the optimisation may change (RESUMABLE_CHANGES).
A completed run is refused too: it has nothing left to train, and resuming it must not look like success.
No torch is imported here: this runs before Hydra launches anything.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from aligntune.errors import ConfigError
from aligntune.run.rundir import RunFiles, find

# Keys that may differ on resume without changing the optimisation (prefixes end with a dot; a leading dot: the
# last part of any key, e.g. rewards.<name>.timeout_s, which a run stopped by a slow reward is resumed with).
RESUMABLE_CHANGES = ("resume", "resume_force", "verbose", "train.save_steps", "train.save_total_limit",
                     "train.log_samples", "train.on_nonfinite", "eval.", ".timeout_s")
_OWN_KEYS = ("resume=", "resume_force=")


def requested(overrides: list[str]) -> bool:
    return any(o.startswith("resume=") for o in overrides)


def _value(overrides: list[str], key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")]
    return found[-1].strip("'\"") if found else None


def _status(run_dir: Path) -> dict:
    return RunFiles(run_dir).status()


def _live(summary: dict) -> bool:
    """A run still training in a live process (recorded by aligntune.run.liveness)."""
    from aligntune.run.liveness import process_alive

    process = summary.get("process")
    return summary.get("status") == "running" and isinstance(process, dict) and process_alive(process) is not False


def find_run(ref: str, outputs: Path = Path("outputs")) -> Path:
    """A run directory from `ref`: a path, or `latest` (the newest unfinished run with a checkpoint under outputs/)."""
    from aligntune.run.checkpoints import latest

    if ref == "latest":
        runs = sorted(find(outputs, "*/*"), key=lambda p: (p.parent.name, p.name))
        candidates = [r for r in runs if _status(r).get("status") != "completed" and not _live(_status(r))
                      and latest(RunFiles(r).checkpoints)]
        if not candidates:
            raise ConfigError(f"resume=latest found no unfinished run with a checkpoint under {outputs.resolve()}.",
                              "Give the run directory (resume=outputs/<date>/<time>_<id>), or run from the directory "
                              "that holds outputs/.")
        return candidates[-1].resolve()
    path = Path(ref).expanduser()
    if not RunFiles(path).is_run():
        raise ConfigError(f"resume={ref} is not a run directory (no summary.json in it).",
                          "Give the directory of the run to continue (outputs/<date>/<time>_<id>), or resume=latest.")
    return path.resolve()


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs, except the ones a resume may change."""
    a, b = flatten(saved), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) or (k.startswith(".") and key.endswith(k))
               for k in RESUMABLE_CHANGES):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return out


def plan(overrides: list[str], multirun: bool, searchpath: list[str] | None = None) -> list[str]:
    """The overrides that continue the run `resume=` names, in its own directory; ConfigError if it cannot.
    `searchpath`: this command's config search path override ([] for none: the run's recorded one is used)."""
    from aligntune import preflight
    from aligntune.config.overrides import is_searchpath
    from aligntune.run.checkpoints import step_of

    if multirun:
        raise ConfigError("resume= continues one run and cannot be part of a sweep (-m).", "Drop -m, or resume each run.")
    ref = _value(overrides, "resume")
    force = (_value(overrides, "resume_force") or "false").lower() == "true"
    run_dir = find_run(ref)
    recorded = RunFiles(run_dir).overrides()  # the job's overrides and its search path
    saved = [o for o in recorded if not o.startswith(_OWN_KEYS) and not is_searchpath(o)]
    if not searchpath:
        searchpath = [o for o in recorded if is_searchpath(o)]
    new = [o for o in overrides if not o.startswith(_OWN_KEYS)] + list(searchpath or [])
    run, _ = preflight.load(saved + new + [f"resume_force={str(force).lower()}"])
    checkpoint, changed = check_resumable(run_dir, run)
    print(f"resuming {run_dir} from {checkpoint.name} (step {step_of(checkpoint)})"
          + (f", with changes: {'; '.join(changed)}" if changed else ""), flush=True)
    return saved + new + [f"resume='{run_dir}'", f"resume_force={str(force).lower()}", f"hydra.run.dir='{run_dir}'"]


def check_resumable(run_dir: Path, run) -> tuple[Path, list[str]]:
    """(the checkpoint to continue from, the allowed differences); ConfigError when the run is complete, has no
    checkpoint, or `run` differs from the config it ran in a way that changes it (unless run.resume_force)."""
    from aligntune.run.checkpoints import latest

    summary = _status(run_dir)
    if _live(summary):
        process = summary["process"]
        raise ConfigError(f"The run {run_dir} is still running (pid {process.get('pid')} on {process.get('host')}); "
                          "resuming it now would train the same run twice.",
                          "Wait for it to end, or stop it (Ctrl-C checkpoints it), then resume.")
    if summary.get("status") == "completed":
        raise ConfigError(f"The run {run_dir} already completed ({summary.get('steps', '?')} steps); resuming it would "
                          "train nothing.", f"To train further, start a new run from its model: "
                          f"model.name_or_path={RunFiles(run_dir).model} (with the steps you want).")
    checkpoint = latest(RunFiles(run_dir).checkpoints)
    if checkpoint is None:
        raise ConfigError(f"The run {run_dir} has no checkpoint to resume from (status: {summary.get('status', '?')}); "
                          "it stopped before writing one.", "Start it again; set train.save_steps=N to checkpoint "
                          "every N steps (an interrupted run always writes one).")
    ran = RunFiles(run_dir).config()
    if ran is None:
        raise ConfigError(f"The run {run_dir} has no readable config.yaml to compare the resumed config with.",
                          "Start it again (its config.yaml is written when a run starts).")
    changed = differences(ran, asdict(run))
    if changed and not run.resume_force:
        raise ConfigError(f"Resuming {run_dir} with a config that differs from the one it ran would change the run: "
                          + "; ".join(changed) + ".",
                          "Drop those overrides to continue the same run, or add resume_force=true to resume anyway.")
    return checkpoint, changed
