"""`aligntune eval`, `generate`, `rewards`, `report` and `compare`: commands around trained runs.

    aligntune eval run=outputs/2026-11-24/10-00-00_ab12cd [eval.num_prompts=32] [dataset=...] [rewards=...]
    aligntune eval model=smollm2_135m [dataset=...] [KEY=VALUE ...]      # a model on its own (no training)
    aligntune generate run=<run dir or model path> prompt="Repeat the letter q." [samples=2] [-i]
    aligntune generate model=smollm2_135m prompt="What is 2+3?"           # a preset, aligntune:<id>, path or hub id
    aligntune rewards
    aligntune report <run dir or sweep dir>
    aligntune compare <run dir> <run dir> ... [--out DIR]

`eval` recomposes the run's own config (the overrides it was composed from: RunFiles.overrides) with the extra overrides, so the
held-out data and rewards are the run's unless you say otherwise. `model=` (instead of `run=`) takes a
model as `train` does: a model preset (configs/model/*.yaml: tiny, smollm2_135m, ...), a shipped id
(aligntune:tiny), a local model directory or a hub id; `eval` composes `model=<it>` with the other
overrides (the preset's dataset, rewards and eval settings, as `aligntune train model=<it>` would use).
"""

from __future__ import annotations

import sys
from pathlib import Path

from aligntune.errors import ConfigError


def _take(args: list[str], key: str) -> tuple[str | None, list[str]]:
    value, rest = None, []
    for a in args:
        if a.startswith(f"{key}="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return value, rest


def _run_overrides(location: Path) -> list[str]:
    """The overrides a run was composed with (RunFiles.overrides: its config search path included)."""
    from aligntune.config.overrides import is_hydra, is_searchpath
    from aligntune.run.rundir import RunFiles

    return [o for o in RunFiles(location).overrides() if not is_hydra(o) or is_searchpath(o)]


def _with_inherited_changes(overrides: list[str]) -> list[str]:
    from aligntune import inherited
    from aligntune.run.console import show_notice

    overrides, notices = inherited.apply(overrides)
    for text in notices:
        show_notice(text)
    return overrides


def _is_run(path: Path) -> bool:
    from aligntune.run.rundir import RunFiles

    files = RunFiles(path)
    return files.is_run() or files.model.is_dir()


def _model_override(value: str) -> str:
    """`model=<value>` as a train override: a model preset stays a group selection, anything else (a shipped id, a
    path, a hub id) goes through the model_name shortcut, which picks the preset that has it or model=custom."""
    from aligntune.config import compose

    if value in compose.group_options("model"):
        if value == "custom":
            raise ConfigError("model=custom is the preset for a model given by path or hub id.",
                              "Give the model itself: model=/path/to/model (or a hub id).")
        return f"model={value}"
    return f"model_name={value}"


def _location_or_run(args: list[str], command: str) -> tuple[str | None, str | None, list[str]]:
    """(run=, model=, the other arguments); at most one of run= and model=. A model= that is a run directory counts
    as run=."""
    run, args = _take(args, "run")
    model, args = _take(args, "model")
    if run is not None and model is not None:
        raise ConfigError(f"aligntune {command} got both run={run} and model={model}.",
                          "Give one: run=<run directory> for a trained run, or model=<preset, aligntune:<id>, path or "
                          "hub id> for a model on its own.")
    if model is not None and _is_run(Path(model).expanduser()):
        return model, None, args
    return run, model, args


MODEL_FIX = ("Give run=<run directory or model directory>, or model=<a model preset ({presets}), a shipped id such as "
             "aligntune:tiny, a local model directory or a hub id>")


def _model_fix() -> str:
    from aligntune.config import compose

    return MODEL_FIX.format(presets=", ".join(o for o in compose.group_options("model") if o != "custom"))


def eval_command(args: list[str]) -> int:
    from aligntune import preflight
    from aligntune.evaluation import evaluate, write_result
    from aligntune.run.console import console, eval_table
    from aligntune.run.logs import quiet_engines

    location, model, overrides = _location_or_run(args, "eval")
    if not location and model is None:
        raise ConfigError("aligntune eval needs run=<run directory or model path>, or model=<model>.",
                          "e.g. aligntune eval run=outputs/2026-11-24/10-00-00_ab12cd, or aligntune eval "
                          "model=smollm2_135m (the base model on its preset's data and rewards).")
    if model is not None:
        return _eval_model(model, overrides)
    path = Path(location)
    if not path.exists():
        raise ConfigError(f"run={location} does not exist.", _model_fix() + ".")
    from aligntune.run.rundir import RunFiles

    files = RunFiles(path)
    status = files.status().get("status") if files.is_run() else None
    if status not in (None, "completed") and not files.model.is_dir():
        raise ConfigError(f"run={location} has no trained model to evaluate: the run is {status}"
                          + (" (its process is gone)." if status == "crashed" else "."),
                          "Resume it first (aligntune train resume=" + str(path) + "), or evaluate a completed run.")
    run, _ = preflight.load(_with_inherited_changes(_run_overrides(path) + overrides))
    quiet_engines()
    result = evaluate(run, path)
    is_run = files.summary_file.exists()
    out = write_result(result, path if is_run else Path.cwd())
    console.print(eval_table(result))
    console.print(f"written to {out} (and {out.parent.parent / 'eval.json'}, the latest)", soft_wrap=True)
    if is_run:
        from aligntune.run.report import write_run_report_or_warn

        write_run_report_or_warn(path)  # report.md lists every evaluation
    return 0


def _eval_model(model: str, overrides: list[str]) -> int:
    """`aligntune eval model=...`: the model on its own, on the held-out rows and rewards the composition gives (its
    preset's, or the overrides'); no starting model to compare with. Results go to the current directory."""
    from aligntune import preflight
    from aligntune.evaluation import evaluate, write_result
    from aligntune.models.loading import model_location
    from aligntune.run.console import console, eval_table
    from aligntune.run.logs import quiet_engines

    run, _ = preflight.load(_with_inherited_changes([_model_override(model), *overrides]))
    if run.algorithm.name in ("dpo", "reward", "kto"):
        raise ConfigError(f"Preference evaluation (algorithm={run.algorithm.name}) scores a model against the model it "
                          "started from, and model= gives a model on its own.",
                          "Evaluate a trained run instead (aligntune eval run=<run dir>), or drop algorithm= to "
                          "score completions with rewards.")
    run.eval.compare_base = False  # nothing was trained: the model is its own starting point
    quiet_engines()
    result = evaluate(run, model_location(run.model))
    out = write_result(result, Path.cwd())
    console.print(eval_table(result))
    console.print(f"written to {out} (and {out.parent.parent / 'eval.json'}, the latest)", soft_wrap=True)
    return 0


def _inference_location(model: str) -> str:
    """A local directory (or hub id) to load for generation from a model= value."""
    from aligntune.config import compose
    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import model_location

    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model in compose.group_options("model"):
        _model_override(model)  # refuses model=custom
        run, _ = compose.load([f"model={model}"])
        model = run.model.name_or_path
    return model_location(ModelConfig(name_or_path=model))


def generate_command(args: list[str]) -> int:
    from aligntune.evaluation import generate, inference_placement, load_for_inference

    interactive = any(a in ("-i", "--interactive") for a in args)
    args = [a for a in args if a not in ("-i", "--interactive")]
    location, model_arg, args = _location_or_run(args, "generate")
    prompt, args = _take(args, "prompt")
    settings = {"samples": "1", "temperature": "0.7", "max_new_tokens": "128", "seed": "42", "system": "",
                "device": "auto", "dtype": "auto"}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in settings:
            raise ConfigError(f"aligntune generate does not take {a!r}.",
                              f"It takes run= or model=, prompt=, -i and {', '.join(k + '=' for k in settings)}.")
        settings[key] = value
    if not (location or model_arg) or (prompt is None and not interactive):
        raise ConfigError("aligntune generate needs run=<run directory or model path> or model=<model>, and "
                          "prompt=\"...\" (or -i).",
                          "e.g. aligntune generate run=outputs/.../ prompt=\"Repeat the letter q.\", or aligntune "
                          "generate model=smollm2_135m prompt=\"What is 2+3?\"")
    if settings["dtype"] not in ("auto", "fp32", "bf16", "fp16") or settings["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"aligntune generate: device={settings['device']} dtype={settings['dtype']} is not a "
                          "placement it knows.", "Use device=auto|cpu|cuda and dtype=auto|fp32|bf16|fp16.")
    from aligntune.run.logs import quiet_engines

    quiet_engines()
    if model_arg is not None:
        location = _inference_location(model_arg)
    elif not Path(location).exists():
        from aligntune import hub

        if not hub.looks_like_hub_id(location) or location.startswith((".", "/", "~")):
            raise ConfigError(f"run={location} does not exist.", _model_fix() + ".")
        location = _inference_location(location)  # a hub id: reachable, or in the cache
    model, tokenizer = load_for_inference(location, *inference_placement(location, settings["device"], settings["dtype"]))

    def answer(text: str) -> None:
        messages = ([{"role": "system", "content": settings["system"]}] if settings["system"] else [])
        messages.append({"role": "user", "content": text})
        chat = messages if tokenizer.chat_template else text
        outs = generate(model, tokenizer, [chat], int(settings["samples"]), float(settings["temperature"]),
                        int(settings["max_new_tokens"]), int(settings["seed"]))[0]
        for i, completion in enumerate(outs):
            print(f"[{i}] {completion}" if len(outs) > 1 else completion, flush=True)

    if prompt is not None:
        answer(prompt)
    if interactive:
        for line in sys.stdin:
            if line.strip():
                answer(line.rstrip("\n"))
    return 0


def rewards_command(args: list[str]) -> int:
    from aligntune.rewards.registry import listing

    rows = listing()
    width = max(len(name) for name, _ in rows)
    print("built-in rewards (use as +rewards.<key>.fn=<name>, arguments as +rewards.<key>.args.<arg>=<value>):")
    for name, doc in rows:
        print(f"  {name:<{width}}  {doc}")
    print("\nyour own: +rewards.<key>.fn=path/to/file.py:function or module:function, "
          "with fn(completions, prompts=None, **dataset_columns) -> list[float | None]")
    return 0


def report_command(args: list[str]) -> int:
    """Regenerate plots and report.md of a run, or of every job of a sweep plus the sweep's comparison."""
    from aligntune.run import liveness, report
    from aligntune.run.console import console

    mark = "--mark-crashed" in args
    args = [a for a in args if a != "--mark-crashed"]
    if len(args) != 1 or args[0].startswith("-"):
        raise ConfigError("aligntune report takes one run directory or sweep directory (and --mark-crashed).",
                          "e.g. aligntune report outputs/2026-11-24/10-00-00_ab12cd")
    path = Path(args[0])
    if not path.is_dir():
        raise ConfigError(f"{args[0]} is not a directory.", "Give a run directory or a sweep directory (outputs/...).")
    kind, runs = report.find_runs(path)
    if kind == "none":
        raise ConfigError(f"{args[0]} holds no run (no summary.json in it or below it).",
                          "Give a run directory or a sweep directory (outputs/multirun/...).")
    for run_dir in runs:
        status = liveness.read_status(run_dir)
        if status.get("status") == "crashed":
            marked = mark and liveness.mark_crashed(run_dir)
            console.print(f"[bold red]crashed[/bold red]: {run_dir} (last logged step {status['step']}; "
                          + (f"resume with: {status['resume']}" if status["resume"] else "no checkpoint: start it again")
                          + ("; marked crashed in its summary.json" if marked else "") + ")", soft_wrap=True)
        console.print(f"written {report.write_run_report(run_dir)}", soft_wrap=True)
    if kind == "sweep":
        rows, columns = report.write_comparison(path)
        console.print(report.comparison_table(rows, columns, f"sweep {path.name}"))
        console.print(f"written {path / 'comparison.csv'} and {path / 'comparison.md'}", soft_wrap=True)
        best = report.best_trial(path)
        if best:
            console.print(f"best trial: {best}", soft_wrap=True)
    return 0


def compare_command(args: list[str]) -> int:
    """Overlay the curves of several runs (one figure per metric) and print their final metrics side by side."""
    from aligntune.run import report
    from aligntune.run.console import console
    from aligntune.run.plots import write_compare_plots
    from aligntune.run.rundir import RunFiles

    out, dirs, i = Path.cwd(), [], 0
    while i < len(args):
        a = args[i]
        if a == "--out" and i + 1 < len(args):
            out, i = Path(args[i + 1]), i + 2
            continue
        if a.startswith("--out="):
            out = Path(a.split("=", 1)[1])
        elif a.startswith("-"):
            raise ConfigError(f"aligntune compare does not take {a!r}.", "Usage: aligntune compare <dir> <dir> ... [--out DIR]")
        else:
            dirs.append(a)
        i += 1
    runs: list[Path] = []
    for d in dirs:
        kind, found = report.find_runs(Path(d))
        if kind == "none":
            raise ConfigError(f"{d} is not a run directory (no summary.json in it or below it).",
                              "Give run directories or sweep directories (outputs/...).")
        runs += found
    if len(runs) < 2:
        raise ConfigError("aligntune compare needs at least two runs.",
                          "e.g. aligntune compare outputs/2026-11-24/10-00-00_ab12cd outputs/2026-11-24/10-05-00_ef34gh "
                          "(or a sweep directory)")
    names = [r.name for r in runs]
    labels = [r.name if names.count(r.name) == 1 else str(r) for r in runs]
    written = write_compare_plots({label: RunFiles(r).metrics() for label, r in zip(labels, runs)}, out)
    console.print(report.side_by_side_table({label: report.read_summary(r) for label, r in zip(labels, runs)}))
    console.print(f"{len(written)} figures written to {out}" + "".join(f"\n  {p.name}" for p in written), soft_wrap=True)
    return 0
