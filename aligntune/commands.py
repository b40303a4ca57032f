"""`aligntune eval`, `generate`, `rewards`, `report` and `compare`: commands around trained runs.

    aligntune eval run=outputs/2026-11-24/10-00-00_ab12cd [eval.num_prompts=32] [dataset=...] [rewards=...]
    aligntune generate run=<run dir or model path> prompt="Repeat the letter q." [samples=2] [-i]
    aligntune rewards
    aligntune report <run dir or sweep dir>
    aligntune compare <run dir> <run dir> ... [--out DIR]

`eval` recomposes the run's own config (its .hydra/overrides.yaml) with the extra overrides, so the
held-out data and rewards are the run's unless you say otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

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
    saved = location / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        saved = location / "overrides.yaml"
    if not saved.is_file():
        return []
    return [o for o in yaml.safe_load(saved.read_text()) or [] if not o.lstrip("+~").startswith("hydra")]


def eval_command(args: list[str]) -> int:
    from aligntune.config import compose
    from aligntune.evaluation import evaluate, write_result
    from aligntune.run.console import console, eval_table
    from aligntune.run.logs import quiet_engines

    location, overrides = _take(args, "run")
    if not location:
        raise ConfigError("aligntune eval needs run=<run directory or model path>.",
                          "e.g. aligntune eval run=outputs/2026-11-24/10-00-00_ab12cd")
    path = Path(location)
    if not path.exists():
        raise ConfigError(f"run={location} does not exist.", "Give a run directory (outputs/...) or a model directory.")
    run, _ = compose.load(_run_overrides(path) + overrides)
    quiet_engines()
    result = evaluate(run, path)
    is_run = (path / "summary.json").exists()
    out = write_result(result, path if is_run else Path.cwd())
    console.print(eval_table(result))
    console.print(f"written to {out} (and {out.parent.parent / 'eval.json'}, the latest)", soft_wrap=True)
    if is_run:
        from aligntune.run.report import write_run_report_or_warn

        write_run_report_or_warn(path)  # report.md lists every evaluation
    return 0


def generate_command(args: list[str]) -> int:
    from aligntune.evaluation import generate, inference_placement, load_for_inference

    interactive = any(a in ("-i", "--interactive") for a in args)
    args = [a for a in args if a not in ("-i", "--interactive")]
    location, args = _take(args, "run")
    prompt, args = _take(args, "prompt")
    settings = {"samples": "1", "temperature": "0.7", "max_new_tokens": "128", "seed": "42", "system": "",
                "device": "auto", "dtype": "auto"}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in settings:
            raise ConfigError(f"aligntune generate does not take {a!r}.",
                              f"It takes run=, prompt=, -i and {', '.join(k + '=' for k in settings)}.")
        settings[key] = value
    if not location or (prompt is None and not interactive):
        raise ConfigError("aligntune generate needs run=<run directory or model path> and prompt=\"...\" (or -i).",
                          "e.g. aligntune generate run=outputs/.../ prompt=\"Repeat the letter q.\"")
    if settings["dtype"] not in ("auto", "fp32", "bf16", "fp16") or settings["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"aligntune generate: device={settings['device']} dtype={settings['dtype']} is not a "
                          "placement it knows.", "Use device=auto|cpu|cuda and dtype=auto|fp32|bf16|fp16.")
    from aligntune.run.logs import quiet_engines

    quiet_engines()
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
    from aligntune.run import report
    from aligntune.run.console import console

    if len(args) != 1 or args[0].startswith("-"):
        raise ConfigError("aligntune report takes one run directory or sweep directory.",
                          "e.g. aligntune report outputs/2026-11-24/10-00-00_ab12cd")
    path = Path(args[0])
    if not path.is_dir():
        raise ConfigError(f"{args[0]} is not a directory.", "Give a run directory or a sweep directory (outputs/...).")
    kind, runs = report.find_runs(path)
    if kind == "none":
        raise ConfigError(f"{args[0]} holds no run (no summary.json in it or below it).",
                          "Give a run directory or a sweep directory (outputs/multirun/...).")
    for run_dir in runs:
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
    from aligntune.run.plots import read_jsonl, write_compare_plots

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
    written = write_compare_plots({label: read_jsonl(r / "metrics.jsonl") for label, r in zip(labels, runs)}, out)
    console.print(report.side_by_side_table({label: report.read_summary(r) for label, r in zip(labels, runs)}))
    console.print(f"{len(written)} figures written to {out}" + "".join(f"\n  {p.name}" for p in written), soft_wrap=True)
    return 0
