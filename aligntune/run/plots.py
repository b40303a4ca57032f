"""PNG plots of a run's curves (from metrics.jsonl), and overlays of several runs.

    write_run_plots(run_dir)                -> <run>/plots/reward.png, kl.png, loss.png, ...
    write_compare_plots({label: rows}, out) -> out/compare_<metric>.png, one figure per metric

Only metrics a run actually logged are plotted. Each curve is its raw points (faint) under an exponential
moving average (the legend states its factor): a short run's per-step reward is mostly sampling noise.
matplotlib (Agg, no pyplot and no global state) is imported inside the functions that draw, so importing
this module costs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from aligntune.run.rundir import RunFiles
from aligntune.run.rundir import read_jsonl as read_jsonl  # a line cut short by a crash is skipped (run/rundir.py)

# (file stem, title, keys drawn in that figure): a training curve with its held-out (eval_) counterpart.
# "rewards/*/mean" expands to every reward component. A figure is drawn when any of its keys was logged.
RUN_FIGURES = [
    ("reward", "reward", ["reward", "rewards/*/mean", "eval_reward"]),
    ("kl", "KL to the reference", ["kl", "eval_kl"]),
    ("loss", "loss", ["loss", "eval_loss"]),
    ("completion_length", "mean completion length (tokens)", ["completions/mean_length", "eval_completions/mean_length"]),
    ("entropy", "entropy", ["entropy", "eval_entropy"]),
    ("margins", "DPO reward margin (chosen - rejected)", ["rewards/margins", "eval_rewards/margins"]),
    ("accuracies", "preference accuracy", ["rewards/accuracies", "eval_rewards/accuracies", "eval_accuracy"]),
]
# Metrics overlaid by `aligntune compare`, one figure each, in this order (when any run logged them).
COMPARE_METRICS = ["reward", "rewards/*/mean", "kl", "loss", "completions/mean_length", "entropy", "rewards/margins",
                   "rewards/accuracies", "eval_reward", "eval_loss", "eval_rewards/margins", "eval_rewards/accuracies",
                   "eval_accuracy"]
# eval_* keys that are bookkeeping, not metrics (left out of the comparison tables).
EVAL_SKIP = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric: every row that logged it as a number."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(row.get("step"), (int, float)):
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


def _logged(rows: list[dict]) -> set[str]:
    return {k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def expand(patterns: list[str], keys: set[str]) -> list[str]:
    out = []
    for pattern in patterns:
        if "*" in pattern:
            regex = re.compile("^" + re.escape(pattern).replace(r"\*", "[^/]+") + "$")
            out += sorted(k for k in keys if regex.match(k))
        elif pattern in keys:
            out.append(pattern)
    return out


def slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


SMOOTH_MIN_POINTS = 3  # fewer points are drawn as they are


def ema_factor(points: int) -> float:
    """The smoothing factor for a curve of `points` points: an EMA spanning a tenth of the curve (at least 4 points:
    factor 1 - 2 / (span + 1), 0.6 for runs up to 40 steps), rounded to two decimals."""
    span = max(4.0, points / 10)
    return round(1 - 2 / (span + 1), 2)


def ema(values: list[float], factor: float) -> list[float]:
    """Exponential moving average s_t = factor * s_(t-1) + (1 - factor) * x_t, debiased by the weight it has
    accumulated (as TensorBoard's smoothing), so the first value is x_0 rather than pulled towards 0."""
    out, acc, weight = [], 0.0, 0.0
    for value in values:
        acc = factor * acc + (1 - factor) * value
        weight = factor * weight + (1 - factor)
        out.append(acc / weight)
    return out


def figure(title: str, lines: list[tuple[str, list[float], list[float]]], legend: bool = False):
    """A matplotlib Figure of `lines` (label, steps, values): each as faint raw points under its EMA (one factor for
    the whole figure, stated in the legend), or as they are when shorter than SMOOTH_MIN_POINTS."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    factor = ema_factor(max((len(xs) for _, xs, _ in lines), default=0))
    smoothed = False
    for label, xs, ys in lines:
        component = not legend and label.startswith("rewards/")  # a reward component, under the total
        style = {"linewidth": 1.2 if component else 2.2, "linestyle": "--" if component else "-"}
        if len(xs) < SMOOTH_MIN_POINTS:
            ax.plot(xs, ys, marker="o", markersize=10 if len(set(xs)) == 1 else 4,  # one point (a final eval) must show
                    label=label, **style)
            continue
        (raw,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=0.8, alpha=0.35)
        ax.plot(xs, ema(ys, factor), color=raw.get_color(), label=f"{label} (EMA {factor:g})", **style)
        smoothed = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if legend or smoothed or len(lines) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _draw(path: Path, title: str, lines: list[tuple[str, list[float], list[float]]], legend: bool = False) -> Path:
    fig = figure(title, lines, legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """One PNG per metric group the run logged, into <run>/plots/. Returns the files written."""
    run_dir = Path(run_dir)
    rows = RunFiles(run_dir).metrics()
    out = run_dir / "plots"
    return [_draw(out / f"{stem}.png", title, [(k, *series(rows, k)) for k in keys])
            for stem, title, keys in run_figures(rows)]


def run_figures(rows: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(file stem, title, keys) of each figure a run's metrics call for."""
    logged = _logged(rows)
    figures = []
    for stem, title, patterns in RUN_FIGURES:
        keys = [k for k in expand(patterns, logged) if series(rows, k)[0]]
        if keys:
            figures.append((stem, title, keys))
    return figures


def write_compare_plots(runs: dict[str, list[dict]], out_dir: str | Path) -> list[Path]:
    """Overlay the runs' curves, one figure per metric any of them logged: out_dir/compare_<metric>.png."""
    keys = set().union(*(_logged(rows) for rows in runs.values())) if runs else set()
    metrics = expand(COMPARE_METRICS, keys)
    written = []
    for key in metrics:
        lines = [(label, *series(rows, key)) for label, rows in runs.items()]
        lines = [line for line in lines if line[1]]
        if lines:
            written.append(_draw(Path(out_dir) / f"compare_{slug(key)}.png", key, lines, legend=True))
    return written


def phase_means(summary: dict) -> dict[str, float]:
    """{phase: mean seconds per step} from a summary's timing/* keys (aligntune.run.phases), in phase order."""
    from aligntune.run.phases import PHASES, PREFIX

    return {p: float(summary[PREFIX + p]) for p in PHASES if isinstance(summary.get(PREFIX + p), (int, float))}


def write_phase_plot(run_dir: str | Path, summary: dict) -> Path | None:
    """<run>/plots/phases.png: one stacked horizontal bar of the mean step, split into its phases (None if the
    run logged no timings)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    phases = phase_means(summary)
    total = sum(phases.values())
    if total <= 0:
        return None
    fig = Figure(figsize=(6.4, 2.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left = 0.0
    for phase, seconds in phases.items():
        ax.barh([0], [seconds], left=left, label=f"{phase} {seconds:.2f} s ({seconds / total:.0%})")
        left += seconds
    ax.set_yticks([])
    ax.set_title(f"where a step's {total:.2f} s go (seconds per optimizer step, mean over the run)", fontsize="medium")
    ax.legend(fontsize="x-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    path = Path(run_dir) / "plots" / "phases.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
