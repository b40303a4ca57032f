"""The run directory's one owner (aligntune/run/rundir.py): no other module names its files, and RunFiles reads a
finished run, a crashed or half-written one, and a directory written before overrides.yaml existed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml
from conftest import dead_pid

import aligntune
from aligntune.run import rundir
from aligntune.run.rundir import RunDir, RunFiles

SOURCE = Path(aligntune.__file__).parent
# The run directory's files: a string naming one (or ending in /<it>) is a path built outside RunDir.
FILES = [rundir.SUMMARY, rundir.OVERRIDES, rundir.CONFIG, rundir.METRICS, rundir.SAMPLES, rundir.LOG, rundir.HEARTBEAT,
         rundir.HYDRA]
# ... and its folders, whose names are ordinary words elsewhere: only `<path> / "<name>"` counts.
FOLDERS = [*FILES, rundir.MODEL, rundir.MODEL_MERGED, rundir.CHECKPOINTS]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def offenders(source: Path = SOURCE) -> list[str]:
    """'file:line: what' for each place outside run/rundir.py that builds a path to a run directory's file."""
    out = []
    for path in sorted(source.rglob("*.py")):
        if path == source / "run" / "rundir.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        where = path.relative_to(source.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                named = [n for n in FILES if node.value == n or f"/{n}" in node.value]
                out += [f"{where}:{node.lineno}: {node.value[:60]!r} names {n}" for n in named]
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                    and node.right.value in FOLDERS):
                out.append(f"{where}:{node.lineno}: <path> / {node.right.value!r}")
    return out


def test_no_module_but_rundir_builds_the_run_directorys_paths():
    found = offenders()
    assert not found, "use aligntune.run.rundir.RunFiles / RunDir instead:\n" + "\n".join(found)


def test_the_scan_catches_each_kind_of_path(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "run").mkdir(parents=True)
    (pkg / "run" / "rundir.py").write_text('X = "summary.json"\n')  # the owner may
    (pkg / "a.py").write_text('"""Reads summary.json (a docstring may say so)."""\n'
                              'import json\n'
                              'def f(d):\n'
                              '    """<run dir>/config.yaml"""\n'
                              '    print("no summary.json in it")\n'
                              '    json.loads((d / "summary.json").read_text())\n'
                              '    return d / "model", f"{d}/train.log", d.glob("*/*/metrics.jsonl")\n')
    assert sorted(line.split(": ", 1)[1] for line in offenders(pkg)) == sorted([
        "'summary.json' names summary.json", "<path> / 'summary.json'", "<path> / 'model'",
        "'/train.log' names train.log", "'*/*/metrics.jsonl' names metrics.jsonl"])


def test_reading_a_finished_run(tiny_run):
    files = RunFiles(tiny_run)
    assert files.is_run()
    summary = files.summary()
    assert summary == json.loads((tiny_run / "summary.json").read_text()) and summary["status"] == "completed"
    assert files.status() == summary  # a completed run reads as written
    overrides = files.overrides()
    assert overrides == yaml.safe_load((tiny_run / "overrides.yaml").read_text()) and "experiment=smoke" in overrides
    config = files.config()
    assert config == yaml.safe_load((tiny_run / "config.yaml").read_text()) and config["train"]["max_steps"] == 2
    metrics, samples = files.metrics(), files.samples()
    assert [m["step"] for m in metrics] == [1, 2] and all("reward" in m for m in metrics)
    assert samples and {s["step"] for s in samples} == {1, 2} and all("completion" in s for s in samples)
    assert files.weights() == tiny_run / "model" and (files.model / "config.json").is_file()
    assert files.linked_files() == rundir.LINKED_FILES  # a finished run has every one
    assert rundir.find(tiny_run.parent) == [tiny_run]  # its .hydra/ is not a run


def test_reading_a_crashed_half_written_run(tmp_path):
    from aligntune.run import liveness

    run = tmp_path / "run"
    run.mkdir()
    files = RunFiles(run)
    assert not files.is_run() and files.summary() == {} and files.overrides() == [] and files.config() is None
    assert files.metrics() == [] and files.samples() == [] and files.weights() == run and files.linked_files() == []
    (run / "summary.json").write_text('{"status": "runn')  # torn: unreadable reads {}
    assert files.is_run() and files.summary() == {} and files.status() == {}
    (run / "summary.json").write_text(json.dumps({"status": "running",
                                                  "process": {**liveness.identity(), "pid": dead_pid()}}))
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.75}\n{"step": 3, "rew')
    (run / "samples.jsonl").write_text('{"step": 1, "completion": "q"}\n{"ste')
    (run / "config.yaml").write_text("seed: [1, 2\n")  # cut mid-write
    assert files.metrics() == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.75}]
    assert files.samples() == [{"step": 1, "completion": "q"}] and files.config() is None
    assert files.summary()["status"] == "running"  # as written
    status = files.status()  # as readers show it
    assert status["status"] == "crashed" and status["step"] == 2 and status["checkpoint"] is None


def test_overrides_reading_order(tmp_path):
    """overrides.yaml (aligntune's record, with the search path) first; .hydra/overrides.yaml only without it."""
    files = RunFiles(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    assert files.overrides() == ["seed=1"]  # a directory not written by RunDir
    (tmp_path / "overrides.yaml").write_text(yaml.safe_dump(["seed=2", "hydra.searchpath=[file:///team/configs]"]))
    assert files.overrides() == ["seed=2", "hydra.searchpath=[file:///team/configs]"]
    (tmp_path / "overrides.yaml").write_text("[seed=2\n")  # unreadable: Hydra's record is the fallback
    assert files.overrides() == ["seed=1"]
    (tmp_path / "overrides.yaml").write_text("")  # written for a run with no overrides
    assert files.overrides() == []


def test_a_resume_rewrites_what_the_config_was_composed_from(tmp_path):
    from aligntune.config import compose

    run, _ = compose.load(["model=tiny"])
    writer = RunDir(tmp_path / "run")
    writer.start(run, ["model=tiny", "hydra.searchpath=[file:///team]"])
    for step in (1, 2, 3):
        writer.log_metrics({"step": step, "reward": step / 10})
    writer.log_sample({"step": 3, "completion": "q"})
    writer.interrupt(3, "SIGINT", None)
    files = RunFiles(writer.path)
    assert files.summary()["status"] == "interrupted" and files.overrides()[0] == "model=tiny"
    resumed = RunDir(writer.path)
    kept = resumed.resume(run, ["model=tiny", "train.save_steps=2", "hydra.searchpath=[file:///team]",
                                            f"resume='{writer.path}'", "resume_force=false"], step=2)
    assert kept == files.metrics() == [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}] and files.samples() == []
    assert files.overrides() == ["model=tiny", "train.save_steps=2", "hydra.searchpath=[file:///team]"]
    assert files.summary()["status"] == "running" and files.summary()["resumed_from_step"] == 2
    assert files.config()["model"]["name_or_path"] == run.model.name_or_path
    resumed.finish({})  # stops its heartbeat


def test_find_lists_runs_below_a_directory_but_not_hydras_records(tmp_path):
    for job in ("0_seed=1", "1_seed=2", "0_seed=1/.hydra"):
        (tmp_path / job).mkdir(parents=True, exist_ok=True)
        (tmp_path / job / "summary.json").write_text("{}")
    assert sorted(rundir.find(tmp_path)) == [tmp_path / "0_seed=1", tmp_path / "1_seed=2"]
    assert rundir.find(tmp_path, "*/*") == []
