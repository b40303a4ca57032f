"""What a person sees: the config tree, where the run goes, live progress, and a summary."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

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


def show_start(run, run_dir) -> None:
    console.print(config_tree(run))
    console.print(f"[bold]run directory:[/bold] {run_dir}")


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


def show_notice(text: str, stderr: bool = False) -> None:
    """One line about something aligntune changed or decided for the user (aligntune.inherited)."""
    (Console(stderr=True, highlight=False) if stderr else console).print(f"[bold]note[/bold]: {escape(text)}",
                                                                         soft_wrap=True)


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
