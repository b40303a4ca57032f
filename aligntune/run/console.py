"""What a person sees: the config tree, where the run goes, live progress, and a summary."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from aligntune.run.rundir import RunFiles

console = Console(stderr=False, highlight=False)
engine_bars = False  # the engines' own progress bars on the console: -v (set by aligntune.run.logs.setup)

# Progress-bar fields: (log key, label). The first key found among alternatives is shown.
LIVE_METRICS = [
    (("reward",), "reward"),
    (("reward_std",), "±"),
    (("rewards/accuracies",), "acc"),
    (("rewards/margins",), "margin"),
    (("kl",), "kl"),
    (("loss",), "loss"),
    (("completions/mean_length",), "len"),
    (("step_time",), "s/step"),
    (("timing/generation",), "gen s"),
    (("timing/forward_backward",), "fwd+bwd s"),
]


def config_tree(run) -> Tree:
    tree = Tree("[bold]config[/bold]")

    def add(node, value):
        for key, val in value.items():
            if isinstance(val, dict) and val:
                add(node.add(f"[cyan]{key}[/cyan]"), val)
            else:
                node.add(f"[cyan]{key}[/cyan]: {val!r}")

    add(tree, asdict(run))
    return tree


def _text(value) -> str:
    """A config value as it would be typed: null, true, 0.01, letters, [all-linear], {}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value) if str(value) else "''"


def changes_from(run, default) -> dict[str, list[str]]:
    """section -> ["key=value", ...]: what `run` changes from `default` (the config of plain `aligntune train`).
    Another algorithm is compared with its own schema's defaults; the rewards are listed by name (and weight)."""
    from aligntune.config.schema import ONLINE_ALGORITHMS

    mine, base = asdict(run), asdict(default)
    if type(run.algorithm) is not type(default.algorithm):
        base["algorithm"] = asdict(type(run.algorithm)())
        base["algorithm"]["name"] = None  # always shown: it is the change
    sections: dict[str, list[str]] = {}
    for section, value in mine.items():
        if section == "rewards":
            if value != base.get("rewards") and (value or run.algorithm.name in ONLINE_ALGORITHMS):  # DPO/SFT have none
                sections["rewards"] = [name + (f"×{_text(spec['weight'])}" if spec["weight"] != 1 else "")
                                       for name, spec in value.items()] or ["none"]
            continue
        if not isinstance(value, dict):
            if value != base.get(section):
                sections.setdefault("run", []).append(f"{section}={_text(value)}")
            continue
        from aligntune.run.resume import flatten  # dotted keys of a nested config, as resume compares them

        ours, theirs = flatten(value), flatten(base.get(section) or {})
        items = [f"{k}={_text(v)}" for k, v in ours.items() if k not in theirs or theirs[k] != v]
        items += [f"{k}=(removed)" for k in theirs if k not in ours and not any(o.startswith(k + ".") for o in ours)]
        if items:
            sections[section] = items
    return sections


def headline(run) -> str:
    """What the run trains, in one line: algorithm on model (LoRA) · dataset · steps of prompts x samples · backend."""
    from aligntune.core.registry import resolve_backend

    algo, t = run.algorithm, run.train
    name = algo.name + (f" ({algo.variant})" if getattr(algo, "variant", algo.name) != algo.name else "")
    model = run.model.name_or_path + (f" + LoRA r{run.model.lora.r}" if run.model.lora.enabled else "")
    unit = {"dpo": "pairs", "reward": "pairs", "sft": "rows", "kto": "rows"}.get(algo.name, "prompts")
    batch = f"{t.batch_size} {unit}" + (f" × {algo.group_size} samples" if hasattr(algo, "group_size") else "")
    steps = f"{t.max_steps} step{'s' if t.max_steps != 1 else ''}" if t.max_steps else f"{t.num_epochs:g} epoch{'s' if t.num_epochs != 1 else ''}"
    return f"{name} on {model} · dataset {run.dataset.name} · {steps} of {batch} · backend {resolve_backend(run)}"


def start_panel(run, run_dir, overrides: list[str], default):
    """The run in a short panel: what it trains, what the command line said, what differs from the default job
    (the command line's values and the presets' it selected), and where it goes. -v prints the whole tree instead."""
    from rich.panel import Panel
    from rich.text import Text

    from aligntune.config.overrides import is_hydra

    typed = [o for o in overrides if not is_hydra(o)]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")  # a long run directory folds, whole, rather than ending in an ellipsis
    grid.add_row("run", Text(headline(run)))
    grid.add_row("command line", Text(" ".join(typed) if typed else "(nothing: the default job)"))
    changed = changes_from(run, default)
    grid.add_row("changed", Text("from plain `aligntune train` (the default job):" if changed else
                                 "nothing: this is the default job"))
    for section, items in changed.items():
        grid.add_row(Text(f"  {section}", style="cyan"), Text("  ".join(items)))
    grid.add_row("run directory", Text(str(run_dir)))
    grid.add_row("full config", Text(f"{RunFiles(run_dir).config_file} (or -v, or --cfg job)"))
    return Panel(grid, title="aligntune train", title_align="left", expand=False)


def show_start(run, run_dir, overrides: list[str] | None = None, default=None) -> None:
    """The start of a run: the short panel (start_panel), or with verbose=true the whole config as a tree."""
    if run.verbose or default is None:
        console.print(config_tree(run))
        console.print(f"[bold]run directory:[/bold] {run_dir}")
        return
    console.print(start_panel(run, run_dir, list(overrides or []), default))


@contextlib.contextmanager
def one_time_step(doing: str, done: str):
    """A step done once per machine (building the tiny model, converting the GGUF file): a status line while it runs
    and `done` (with the seconds it took) after, instead of the engines' progress bars (-v keeps those)."""
    from aligntune.run.logs import progress_bars_off

    start = time.monotonic()
    if engine_bars:
        console.print(f"{doing} ...", soft_wrap=True)
        yield
    else:
        with console.status(doing), progress_bars_off():  # the status first: its own stderr redirect is outside ours
            yield
    console.print(f"[dim]{escape(done)} ({time.monotonic() - start:.1f} s)[/dim]", soft_wrap=True)


def show_notice(text: str, stderr: bool = False, log: bool = False) -> None:
    """One line about something aligntune changed or decided for the user (aligntune.inherited, a shadowed config).
    `log`: also in the run's train.log."""
    (Console(stderr=True, highlight=False) if stderr else console).print(f"[bold]note[/bold]: {escape(text)}",
                                                                         soft_wrap=True)
    if log:
        import logging

        logging.getLogger("aligntune").info("note: %s", text)


def show_shadows(overrides: list[str]) -> None:
    """One line (train.log and console) per config of a user directory that shadows another of the same group and
    name on the run's search path (aligntune.config.searchpath.shadows)."""
    from aligntune.config.searchpath import shadow_notices

    for text in shadow_notices(overrides):
        show_notice(text, log=True)


def show_compute(device: str, precision: str) -> None:
    from aligntune.models.precision import describe

    console.print(f"[bold]compute:[/bold] {describe(precision, device)}")


def format_live(logs: dict) -> str:
    parts = []
    for keys, label in LIVE_METRICS:
        for key in keys:
            if isinstance(logs.get(key), (int, float)):
                parts.append(f"{label} {logs[key]:.3g}")
                break
    return "  ".join(parts)


SUMMARY_KEYS = ["status", "steps", "wall_time_s", "device", "compute_dtype", "train_runtime", "reward_first_20pct", "reward_first_20pct_se",
                "reward_last_20pct", "reward_last_20pct_se", "reward",
                "reward_std", "kl", "entropy", "loss", "completions/mean_length", "rewards/accuracies", "rewards/margins",
                "eval_preference_accuracy", "eval_margin", "eval_loss"]


def show_summary(summary: dict, run_dir, first_samples: list, last_samples: list) -> None:
    """The headline metrics (all of them are in summary.json) and samples from the first and last step."""
    table = Table(title="summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [k for k in SUMMARY_KEYS if k in summary] + sorted(k for k in summary if k.startswith("rewards/") and k.endswith("/mean"))
    for key in keys:
        value = summary[key]
        if key.endswith("_se") and key[:-3] in summary:
            continue  # shown beside its mean
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        if isinstance(summary.get(f"{key}_se"), float):
            text += f" ± {summary[key + '_se']:.2g} (s.e.)"
        table.add_row(key, text)
    console.print(table)
    if first_samples and last_samples:
        samples = Table(title="sample completions, first and last logged step", show_lines=False)
        for col in ("when", "prompt", "completion", "reward"):
            samples.add_column(col)
        for when, rows in (("first", first_samples), ("last", last_samples)):
            for row in rows:
                samples.add_row(when, row["prompt"], repr(row["completion"]), f"{row['reward']:.3f}")
        console.print(samples)
    console.print(f"[bold green]done[/bold green]: {run_dir}")


def show_before_after(result: dict, count: int = 2) -> None:
    """The evaluation table, then a few held-out prompts with the starting and the trained model's completion."""
    console.print(eval_table(result))
    base, trained = result.get("base", {}).get("samples", []), result.get("trained", {}).get("samples", [])
    for before, after in list(zip(base, trained))[:count]:
        console.print(f"[bold]prompt[/bold] {escape(_prompt_text(after['prompt']))}")
        console.print(f"  [dim]before[/dim] {escape(str(before['completion']))}")
        console.print(f"  [green]after[/green]  {escape(str(after['completion']))}")


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return " | ".join(f"{m.get('role')}: {m.get('content')}" for m in prompt if m.get("role") != "system")
    return str(prompt)


def eval_table(result: dict) -> Table:
    """Trained vs base model, one row per metric."""
    table = Table(title=f"evaluation of {result['model']}")
    table.add_column("metric")
    columns = [c for c in ("base", "trained") if c in result]
    for c in columns:  # a model evaluated on its own (aligntune eval model=...) has no base: its column is "model"
        table.add_column(c if "base" in result else "model", justify="right")
    keys = [k for k in result["trained"] if k != "samples"]
    for key in keys:
        cells = []
        for c in columns:
            value = result[c].get(key)
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        table.add_row(key, *cells)
    return table
