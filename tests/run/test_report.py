"""Run reports (plots + report.md), `aligntune report`, `aligntune compare`, and sweep comparisons.

Plots are checked for drawn curves (coloured pixels, pixel variance), not just for existing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from aligntune import cli
from aligntune.run import report
from aligntune.run.plots import run_figures, write_compare_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_curve_png(path: Path) -> None:
    """A valid PNG with a curve on it: matplotlib reads it, it is not blank, and it has coloured (line) pixels."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = imread(path)[..., :3]
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.std(pixels) > 0.05, f"{path.name} is (nearly) blank"
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)  # axes, grid and text are grey; curves are coloured
    assert (saturation > 0.3).sum() > 200, f"{path.name} has no curve drawn"


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", markdown)


@pytest.fixture
def run_dir(tiny_run) -> Path:
    """One real 2-step GRPO run through the CLI (tests/conftest.py), shared with other modules."""
    return tiny_run


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> tuple[Path, int, str]:
    """A real 2x2 sweep (1 step per job): (sweep dir, exit code, console output)."""
    tmp = tmp_path_factory.mktemp("report-sweep")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        from aligntune.run.console import console

        with console.capture() as captured:
            code = cli.main(["train", "-m", "group_size=2,4", "algorithm.beta=0.0,0.01", "experiment=smoke", "max_steps=1",
                             f"hydra.sweep.dir={tmp}/sweep"])
    finally:
        os.chdir(cwd)
    return tmp / "sweep", code, captured.get()


def test_a_run_writes_plots_of_its_curves(run_dir):
    plots = run_dir / "plots"
    names = sorted(p.name for p in plots.iterdir())
    # no DPO plots for GRPO; phases.png is the step's phase breakdown (a bar, tests/run/test_phases.py)
    assert names == ["completion_length.png", "entropy.png", "kl.png", "loss.png", "phases.png", "reward.png"]
    for png in plots.iterdir():
        if png.name != "phases.png":
            assert_curve_png(png)


def test_report_md_links_existing_files_and_shows_summary_and_samples(run_dir):
    text = (run_dir / "report.md").read_text()
    targets = links(text)
    assert {f"plots/{n}" for n in ("reward.png", "kl.png", "loss.png", "completion_length.png", "entropy.png")} <= set(targets)
    for target in targets:
        assert (run_dir / target).is_file(), target
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"| reward | {summary['reward']:.4g} |" in text and "| status | completed |" in text
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    header = next(line for line in text.splitlines() if line.startswith("| # |"))
    assert header == "| # | step 1 | step 2 |"  # first and last logged step side by side (2 steps: no middle)
    first, last = next(s for s in samples if s["step"] == 1), next(s for s in samples if s["step"] == 2)
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert first["prompt"] in row and last["prompt"] in row


def test_sample_steps_pick_first_middle_and_last():
    rows = [{"step": s, "prompt": "p", "completion": "c|`x`", "reward": 0.5} for s in (5, 10, 15, 20, 25)]
    assert report.sample_steps(rows) == [5, 15, 25]
    table = report.samples_markdown(rows)
    assert table[0] == "| # | step 5 | step 15 | step 25 |"
    assert table[2].count(" | ") == 3  # the | inside the completion is escaped, not a new column


def test_report_command_regenerates_a_run_report(run_dir, capsys):
    for png in (run_dir / "plots").iterdir():
        png.unlink()
    (run_dir / "report.md").unlink()
    assert cli.main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").is_file() and "report.md" in capsys.readouterr().out
    assert_curve_png(run_dir / "plots" / "reward.png")


def test_report_command_refuses_a_directory_without_runs(workdir, capsys):
    assert cli.main(["report", str(workdir)]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_dpo_metrics_get_margin_accuracy_and_eval_plots(workdir):
    run = workdir / "dpo"
    run.mkdir()
    rows = [{"step": s, "loss": 0.69 - 0.05 * s, "rewards/margins": 0.1 * s, "rewards/accuracies": 0.5 + 0.1 * s}
            for s in (1, 2, 3)]
    rows += [{"step": s, "eval_loss": 0.7 - 0.05 * s, "eval_rewards/margins": 0.1 * s, "eval_runtime": 1.5} for s in (2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 3, "loss": 0.54, "eval_loss": 0.6}))
    text = report.write_run_report(run).read_text()
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == ["accuracies.png", "loss.png", "margins.png"]  # no reward, KL, length or entropy was logged
    figures = {stem: keys for stem, _, keys in run_figures(rows)}
    assert figures["loss"] == ["loss", "eval_loss"] and figures["margins"] == ["rewards/margins", "eval_rewards/margins"]
    assert figures["accuracies"] == ["rewards/accuracies"]  # eval_runtime and friends are not curves
    for png in (run / "plots").iterdir():
        assert_curve_png(png)
    assert "No sample completions were logged." in text and "| eval_loss | 0.6 |" in text


def test_a_plotting_failure_warns_and_does_not_fail_the_run(workdir, monkeypatch, caplog):
    def broken(run_dir):
        raise RuntimeError("no display")

    monkeypatch.setattr(report, "write_run_plots", broken)
    with caplog.at_level(logging.WARNING, logger="aligntune"):
        assert report.write_run_report_or_warn(workdir) is None
    assert "could not write the plots" in caplog.text and "no display" in caplog.text


def test_a_sweep_writes_a_comparison_of_its_jobs(sweep_dir):
    sweep, code, out = sweep_dir
    assert code == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    # Readable job names: the swept values under their shortcut names; what every job shares is left out.
    assert [p.name for p in jobs] == ["0_group_size=2,beta=0.0", "1_group_size=2,beta=0.01",
                                      "2_group_size=4,beta=0.0", "3_group_size=4,beta=0.01"]
    with (sweep / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == [j.name for j in sorted(jobs, key=lambda p: int(p.name.split("_")[0]))]
    assert all(r["status"] == "completed" for r in rows)
    assert {("algorithm.group_size=2" in r["overrides"].split(), "algorithm.beta=0.0" in r["overrides"].split()) for r in rows} == {
        (True, True), (True, False), (False, True), (False, False)}
    for row, job in zip(rows, [sweep / r["job"] for r in rows]):
        summary = json.loads((job / "summary.json").read_text())
        assert float(row["reward"]) == pytest.approx(summary["reward"])
        assert float(row["reward_last_20pct"]) == pytest.approx(summary["reward_last_20pct"])
        assert "kl" in row and "loss" in row
        assert (job / "report.md").is_file()
    md = (sweep / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + one row per job
    for target in links(md):
        assert (sweep / target.replace("%3D", "=").replace("%2C", ",")).is_file(), target
    assert "reward_last_20pct" in out and "completed" in out and "comparison written" in out


def test_report_command_on_a_sweep_regenerates_jobs_and_comparison(sweep_dir, capsys):
    sweep = sweep_dir[0]
    (sweep / "comparison.csv").unlink()
    assert cli.main(["report", str(sweep)]) == 0
    with (sweep / "comparison.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4
    assert capsys.readouterr().out.count("report.md") >= 4


def test_compare_overlays_runs_and_prints_final_metrics(sweep_dir, workdir, capsys, monkeypatch):
    from aligntune.run.console import console

    monkeypatch.setattr(console, "width", 400)  # run names as column headers, unfolded
    sweep = sweep_dir[0]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)[:2]
    assert cli.main(["compare", str(jobs[0]), str(jobs[1])]) == 0
    out = capsys.readouterr().out
    for name in ("reward", "kl", "loss", "completions_mean_length", "entropy", "rewards_letter_match_mean"):
        assert_curve_png(workdir / f"compare_{name}.png")
    assert "final metrics" in out and "reward" in out
    assert jobs[0].name in out and jobs[1].name in out  # one column per run

    assert cli.main(["compare", str(jobs[0]), str(jobs[1]), "--out", str(workdir / "figs")]) == 0
    assert (workdir / "figs" / "compare_reward.png").is_file()


def test_compare_draws_one_line_per_run(workdir):
    from matplotlib.image import imread

    one = write_compare_plots({"a": [{"step": 1, "reward": 0.0}, {"step": 2, "reward": 1.0}]}, workdir / "one")[0]
    two = write_compare_plots({"a": [{"step": 1, "reward": 0.0}, {"step": 2, "reward": 1.0}],
                               "b": [{"step": 1, "reward": 1.0}, {"step": 2, "reward": 0.0}]}, workdir / "two")[0]
    colored = [((px := imread(p)[..., :3]).max(-1) - px.min(-1) > 0.3).sum() for p in (one, two)]
    assert colored[1] > 1.5 * colored[0]  # the second run's line is drawn too


def test_compare_needs_two_runs(workdir, capsys):
    assert cli.main(["compare", str(workdir)]) == 2
    assert "not a run directory" in capsys.readouterr().err


REWARD_FILE = '''
def score(completions, boom=False, **kwargs):
    if boom:
        raise ValueError("boom")
    return [float(len(c) % 3) for c in completions]
'''


def test_a_failing_job_does_not_stop_the_sweep(workdir, capsys):
    (workdir / "my_rewards.py").write_text(REWARD_FILE)
    sweep = workdir / "sweep"
    code = cli.main(["train", "-m", "+rewards.mine.fn=my_rewards.py:score", "+rewards.mine.args.boom=true,false",
                     "experiment=smoke", "max_steps=1", f"hydra.sweep.dir={sweep}"])
    assert code == 2  # a reward that raises is the user's to fix (RewardError): the job's summary.json records exit_code 2
    out = capsys.readouterr()
    with (sweep / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["failed", "completed"]  # the job after the failure still ran
    assert "boom" in rows[0]["error"] and "boom=true" in rows[0]["overrides"].lower()
    assert float(rows[1]["reward"]) >= 0 and "boom=false" in rows[1]["overrides"].lower()
    assert json.loads((sweep / rows[0]["job"] / "summary.json").read_text())["status"] == "failed"
    assert "failed" in out.out and "1 of 2 jobs failed" in out.out
    assert "boom" in out.err


# --- smoothing and the noise of short runs --------------------------------------------------------

def test_ema_is_debiased_and_matches_hand_computed_values():
    from aligntune.run.plots import ema, ema_factor

    assert ema([0.0, 1.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75, 0.75 / 0.875])  # (0.25*0 + 0.5*1) / 0.75, ...
    assert ema([3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0])  # a constant stays put (no pull towards 0)
    assert ema_factor(12) == ema_factor(40) == 0.6 and ema_factor(1000) == 0.98


def test_run_and_compare_figures_draw_raw_points_under_an_ema_named_in_the_legend():
    from aligntune.run.plots import figure

    steps = list(range(1, 13))
    noisy = [0.1, 0.5, 0.0, 0.6, 0.2, 0.7, 0.3, 0.8, 0.4, 0.9, 0.5, 1.0]
    fig = figure("reward", [("reward", steps, noisy)])
    (ax,) = fig.axes
    raw, smooth = ax.lines
    assert list(raw.get_ydata()) == noisy and raw.get_alpha() < 1
    assert max(abs(a - b) for a, b in zip(smooth.get_ydata()[1:], smooth.get_ydata()[:-1])) < 0.3  # steps of 0.5 damped
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["reward (EMA 0.6)"]
    fig = figure("reward", [("run_a", steps, noisy), ("run_b", steps[:2], noisy[:2])], legend=True)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["run_a (EMA 0.6)", "run_b"]  # 2 points: raw


def test_final_metrics_give_the_first_and_last_20pct_with_standard_errors():
    import math

    from aligntune.core.job import final_metrics

    rewards = [0.0, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 1.0]  # 10 steps: 2 per window
    out = final_metrics([{"step": i + 1, "reward": r} for i, r in enumerate(rewards)])
    assert out["reward_first_20pct"] == pytest.approx(0.1) and out["reward_last_20pct"] == pytest.approx(0.8)
    assert out["reward_first_20pct_se"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2))  # sample std 0.1414, / sqrt 2
    assert out["reward_last_20pct_se"] == pytest.approx(math.sqrt(0.08) / math.sqrt(2))
    short = final_metrics([{"step": 1, "reward": 0.3}, {"step": 2, "reward": 0.4}])
    assert "reward_first_20pct" in short and "reward_first_20pct_se" not in short  # one step per window: no error bar


def test_the_console_summary_shows_the_standard_error_beside_its_mean(capsys):
    from aligntune.run.console import show_summary

    show_summary({"status": "completed", "reward_first_20pct": 0.1, "reward_first_20pct_se": 0.05}, "run", [], [])
    out = capsys.readouterr().out
    assert "0.1 ± 0.05 (s.e.)" in out and "reward_first_20pct_se" not in out
