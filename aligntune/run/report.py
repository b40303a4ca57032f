"""Reports of finished runs and sweeps, written next to them.

    write_run_report(run_dir)    -> <run>/plots/*.png and <run>/report.md (summary table, curves, samples)
    write_comparison(sweep_dir)  -> <sweep>/comparison.csv and comparison.md, one row per job
    find_runs(path)              -> the run directories under a run or sweep directory

`aligntune report` and `aligntune compare` are built on these; AlignmentJob.train writes the run
report when a run completes, and `aligntune train -m` the comparison when a sweep ends.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from urllib.parse import quote

import yaml

from aligntune.run.plots import EVAL_SKIP, phase_means, write_phase_plot, write_run_plots
from aligntune.run.rundir import RunFiles, find

# Final metrics of the comparison tables, in this order, when any run has them (report.md lists them all).
COMPARE_KEYS = ["steps", "reward", "reward_first_20pct", "reward_first_20pct_se", "reward_last_20pct",
                "reward_last_20pct_se", "loss", "kl", "entropy",
                "completions/mean_length", "rewards/accuracies", "rewards/margins",
                "eval_reward", "eval_loss", "eval_preference_accuracy", "eval_margin", "eval_kl"]
# The terminal's sweep table: these columns when present, dropped from the end of this list when the terminal is
# too narrow (comparison.csv and .md have every column).
CONSOLE_KEYS = ["job", "status", "error", "reward", "eval_reward", "eval_preference_accuracy", "rewards/accuracies",
                "reward_last_20pct", "steps", "kl", "loss", "wall_time_s"]


def read_summary(run_dir: Path) -> dict:
    """summary.json as readers show it: a "running" run whose process is gone reads "crashed" (run.liveness)."""
    return RunFiles(run_dir).status()


def read_overrides(run_dir: Path) -> list[str]:
    """The overrides the run was composed from (RunFiles.overrides: the one reading order)."""
    return RunFiles(run_dir).overrides()


def _job_order(rel: Path) -> tuple:
    head = rel.parts[0] if rel.parts else ""
    num = head.split("_", 1)[0]
    return (int(num) if num.isdigit() else 1 << 30, str(rel))


def find_runs(path: str | Path) -> tuple[str, list[Path]]:
    """("run", [path]) for a run directory, ("sweep", [job dirs in job order]) for a directory holding runs,
    ("none", []) otherwise. A run directory is one with a summary.json."""
    path = Path(path)
    if RunFiles(path).is_run():
        return "run", [path]
    jobs = find(path)
    if jobs:
        return "sweep", sorted(jobs, key=lambda job: _job_order(job.relative_to(path)))
    return "none", []


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}".replace("|", "\\|")


def summary_keys(summary: dict) -> list[str]:
    from aligntune.run.console import SUMMARY_KEYS

    keys = [k for k in SUMMARY_KEYS if k in summary]
    keys += sorted(k for k in summary if k.startswith("rewards/") and k.endswith("/mean"))
    keys += sorted(k for k in summary if k.startswith("eval_") and k not in keys and k not in EVAL_SKIP)
    return keys + [k for k in ("error",) if k in summary]


def sample_steps(samples: list[dict]) -> list:
    """The first, middle and last logged step (fewer when fewer were logged)."""
    steps = sorted({s["step"] for s in samples if "step" in s})
    if not steps:
        return []
    picked = [steps[0], steps[len(steps) // 2], steps[-1]]
    return list(dict.fromkeys(picked))


def samples_markdown(samples: list[dict]) -> list[str]:
    steps = sample_steps(samples)
    if not steps:
        return ["No sample completions were logged."]
    by_step = {step: [s for s in samples if s.get("step") == step] for step in steps}
    lines = ["| # | " + " | ".join(f"step {step}" for step in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for i in range(max(len(rows) for rows in by_step.values())):
        cells = []
        for step in steps:
            rows = by_step[step]
            if i >= len(rows):
                cells.append("")
                continue
            row = rows[i]
            reward = row.get("reward")
            cells.append(f"**{_md_cell(str(row.get('prompt', '')))}**<br>{_md_code(repr(row.get('completion', '')))}"
                         f"<br>reward {_fmt(reward) if isinstance(reward, (int, float)) else 'n/a'}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def phases_markdown(run_dir: Path, summary: dict) -> list[str]:
    """report.md's "Where the time goes": the mean step split into phases (table + stacked bar)."""
    phases = phase_means(summary)
    total = sum(phases.values())
    if total <= 0:
        return []
    out = ["", "## Where the time goes", "", "| phase | s per step | share |", "|---|---:|---:|"]
    out += [f"| {p} | {_fmt(s)} | {s / total:.0%} |" for p, s in phases.items()]
    plot = write_phase_plot(run_dir, summary)
    if plot is not None:
        out += ["", f"![phases](plots/{quote(plot.name)})"]
    return out

def evaluations_markdown(run_dir: Path) -> list[str]:
    """Every evaluation of the run (eval/*.json, oldest first): when, by what, its settings, the headline metric of
    the starting and the trained model, and a link to the file. [] when it has none."""
    import time

    from aligntune.evaluation import history

    if not (run_dir / "eval.json").is_file() and not (run_dir / "eval").is_dir():
        return []
    rows = history(run_dir)
    if not rows:
        return []
    lines = ["| when | by | settings | metric | base | trained | file |", "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])) if isinstance(r.get("created"), (int, float)) else ""
        settings = r.get("settings", {})
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in settings.items() if k in ("dataset", "num_prompts", "samples", "temperature"))
        trained = r.get("trained", {})
        metric = next((k for k in ("reward", "preference_accuracy") if k in trained), "")
        cells = [when, r.get("by", ""), shown, metric, _fmt(r.get("base", {}).get(metric)), _fmt(trained.get(metric)),
                 f"[{r['file']}]({quote(r['file'])})"]
        lines.append("| " + " | ".join(_md_cell(str(c)) for c in cells) + " |")
    return lines


def write_run_report(run_dir: str | Path) -> Path:
    """Plots into <run>/plots/ and <run>/report.md linking them. Returns the report's path."""
    run_dir = Path(run_dir)
    plots = write_run_plots(run_dir)
    summary = read_summary(run_dir)
    out = [f"# Run report: {run_dir.name}", ""]
    head = [f"status: **{summary.get('status', 'unknown')}**"]
    if "steps" in summary:
        head.append(f"steps: {summary['steps']}")
    if "wall_time_s" in summary:
        head.append(f"wall time: {_fmt(summary['wall_time_s'])} s")
    overrides = read_overrides(run_dir)
    out += [" · ".join(head), ""]
    if overrides:
        out += ["overrides: " + " ".join(f"`{o}`" for o in overrides), ""]
    out += ["files: " + " · ".join(f"[{name}]({name})" for name in RunFiles(run_dir).linked_files()), ""]
    out += ["## Summary", "", "| metric | value |", "|---|---:|"]
    out += [f"| {_md_cell(k)} | {_md_cell(_fmt(summary[k]))} |" for k in summary_keys(summary)]
    out += phases_markdown(run_dir, summary)

    evaluations = evaluations_markdown(run_dir)
    if evaluations:
        out += ["", "## Evaluations", "", *evaluations]
    out += ["", "## Curves", ""]
    if plots:
        out += [f"![{p.stem}](plots/{quote(p.name)})" for p in plots]
    else:
        out.append("No metrics were logged.")
    out += ["", "## Sample completions: first, middle and last logged step", ""]
    out += samples_markdown(RunFiles(run_dir).samples())
    report = run_dir / "report.md"
    report.write_text("\n".join(out) + "\n", encoding="utf-8")
    return report


def write_run_report_or_warn(run_dir: str | Path) -> Path | None:
    """write_run_report for a run that has just completed: it is complete and saved without its plots, so a
    failure here (a broken matplotlib, a full disk) is logged as a warning, never raised."""
    import logging

    try:
        return write_run_report(run_dir)
    except Exception as exc:
        logging.getLogger("aligntune").warning("could not write the plots and report.md of %s: %s: %s",
                                               run_dir, type(exc).__name__, exc, exc_info=exc)
        return None


def metric_columns(summaries: list[dict]) -> list[str]:
    present = set().union(*summaries) if summaries else set()
    columns = [k for k in COMPARE_KEYS if k in present]
    return columns + [k for k in ("wall_time_s",) if k in present]


def sweep_rows(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """One row per job (job, overrides, status, final metrics, error) and the column names."""
    sweep_dir = Path(sweep_dir)
    _, jobs = find_runs(sweep_dir)
    summaries = [read_summary(job) for job in jobs]
    metrics = metric_columns(summaries)
    rows = []
    for job, summary in zip(jobs, summaries):
        row = {"job": str(job.relative_to(sweep_dir)) if job != sweep_dir else job.name,
               "overrides": " ".join(read_overrides(job)), "status": summary.get("status", "unknown")}
        row.update({k: summary.get(k) for k in metrics})
        row["error"] = summary.get("error", "")
        rows.append(row)
    columns = ["job", "overrides", "status", *metrics] + (["error"] if any(r["error"] for r in rows) else [])
    return rows, columns


def write_comparison(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """<sweep>/comparison.csv and comparison.md; returns (rows, columns)."""
    sweep_dir = Path(sweep_dir)
    rows, columns = sweep_rows(sweep_dir)
    with (sweep_dir / "comparison.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in columns} for row in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    md = [f"# Sweep comparison: {sweep_dir.name}", "",
          f"{len(rows)} jobs, {len(rows) - failed} completed" + (f", {failed} failed" if failed else "") + ".", "",
          "| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in ("job", "overrides", "status", "error")
                                                           else "---:" for c in columns) + "|"]
    for row in rows:
        cells = []
        for c in columns:
            text = _md_cell(_fmt(row.get(c)))
            if c == "job" and (sweep_dir / row["job"] / "report.md").is_file():
                text = f"[{text}]({quote(row['job'])}/report.md)"
            cells.append(text)
        md.append("| " + " | ".join(cells) + " |")
    best = best_trial(sweep_dir)
    if best:
        md += ["", f"Best trial (Optuna, optimization_results.yaml): {best}"]
    (sweep_dir / "comparison.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return rows, columns


def best_trial(sweep_dir: str | Path) -> str | None:
    """"<value> with key=value, ..." from a hyper-parameter search's optimization_results.yaml (Hydra's Optuna
    sweeper writes it in the sweep directory), or None."""
    path = Path(sweep_dir) / "optimization_results.yaml"
    try:
        best = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(best, dict) or "best_params" not in best:
        return None
    return f"{best.get('best_value')} with " + ", ".join(f"{k}={v}" for k, v in best["best_params"].items())


def comparison_table(rows: list[dict], columns: list[str], title: str, width: int | None = None):
    """A rich table of a sweep: one row per job, fitted to the terminal (`width`, default the console's). The job's
    name says what varies (aligntune/config/sweeps.py); the overrides and every metric stay in comparison.csv/.md."""
    from rich.table import Table

    from aligntune.run.console import console

    width = width or console.width
    widths = {c: max([len(_fmt(row.get(c))) for row in rows] + [len(c)]) for c in columns}  # rich keeps headers whole
    widths["job"] = min(widths.get("job", 4), 36)  # a longer job name folds onto a second line
    shown = [c for c in CONSOLE_KEYS if c in columns]
    while len(shown) > 2 and sum(widths[c] + 3 for c in shown) + 1 > width:
        shown.pop()  # the least important column that is left
    table = Table(title=title, caption=None if len(shown) == len(columns) else "all columns: comparison.md")
    for c in columns:
        if c not in shown:
            continue
        # Every column keeps room for its widest value (numbers never break); headers and long job names fold.
        table.add_column(c, justify="right" if c not in ("job", "status", "error") else "left", overflow="fold",
                         min_width=widths[c])
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns if c in shown]
        if row["status"] == "failed":
            cells[[c for c in columns if c in shown].index("status")] = "[bold red]failed[/bold red]"
        table.add_row(*cells)
    return table


def side_by_side_table(summaries: dict[str, dict]):
    """A rich table of final metrics, one column per run."""
    from rich.table import Table

    table = Table(title="final metrics")
    table.add_column("metric")
    for label in summaries:
        table.add_column(label, justify="right", overflow="fold")
    keys = ["status"] + metric_columns(list(summaries.values()))
    keys += sorted({k for s in summaries.values() for k in s if k.startswith("rewards/") and k.endswith("/mean")})
    for key in keys:
        table.add_row(key, *[_fmt(s.get(key)) for s in summaries.values()])
    return table
