"""Phase timings (aligntune/run/phases.py): exclusive accounting, the engines' hooks, logs and the report."""

from __future__ import annotations

import json

import pytest

from aligntune import cli
from aligntune.run import phases


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_nested_phases_are_timed_exclusively_and_the_rest_is_other():
    clock = Clock()
    timer = phases.PhaseTimer(clock)
    timer.on_step_begin(None, None, None)
    timer.enter("forward_backward")
    clock.t = 1.0
    timer.enter("generation")  # TRL generates inside the first training_step of a rollout
    clock.t = 3.0
    timer.enter("rewards")
    clock.t = 3.5
    timer.leave()
    timer.leave()
    clock.t = 4.0
    timer.leave()
    timer.on_pre_optimizer_step(None, None, None)
    clock.t = 4.25
    timer.on_optimizer_step(None, None, None)
    clock.t = 4.5
    timer.on_step_end(None, None, None)
    # generation 1-3.5 s less its rewards (0.5 s); forward_backward 0-4 s less the 2.5 s nested in it
    assert timer.history == [{"generation": 2.0, "rewards": 0.5, "logprobs": 0.0, "forward_backward": 1.5,
                              "optimizer": 0.25, "other": 0.25}]
    assert phases.means(timer.history * 2) == {"timing/generation": 2.0, "timing/rewards": 0.5,
                                               "timing/forward_backward": 1.5, "timing/optimizer": 0.25,
                                               "timing/other": 0.25}


@pytest.mark.parametrize("experiment,expected", [
    ("smoke", {"generation", "rewards", "logprobs", "forward_backward", "optimizer", "other"}),
    ("dpo_smoke", {"logprobs", "forward_backward", "optimizer", "other"}),  # DPO: the reference forward is logprobs
    ("ppo_smoke", {"generation", "rewards", "logprobs", "forward_backward", "optimizer", "other"}),
])
def test_every_run_logs_its_phases_and_the_report_shows_them(tmp_path, experiment, expected):
    run = tmp_path / "run"
    assert cli.main(["train", f"experiment={experiment}", "train.max_steps=2", "train.log_samples=0",
                     f"hydra.run.dir={run}"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    for r in steps:
        logged = {k.removeprefix("timing/") for k in r if k.startswith("timing/")}
        assert logged == expected, (experiment, logged)
        assert all(r[f"timing/{p}"] >= 0 for p in logged) and r["timing/forward_backward"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert {k.removeprefix("timing/") for k in summary if k.startswith("timing/")} == expected
    report = (run / "report.md").read_text()
    assert "## Where the time goes" in report and "| forward_backward |" in report
    assert (run / "plots" / "phases.png").is_file()
