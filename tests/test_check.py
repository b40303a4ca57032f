"""`aligntune check` (aligntune/check.py) and `aligntune init` (aligntune/starter.py): a team's CI in one line, and the
starter project whose CI passes from the first commit."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from aligntune import cli

GOOD = """\
# @package _global_
# A team experiment that composes.
defaults:
  - override /model: tiny
  - override /dataset: letters
train:
  max_steps: 4
"""
BROKEN = """\
# @package _global_
# A team experiment with a key the schema does not have.
train:
  max_stepz: 4
"""
HUB = """\
# @package _global_
# A team experiment on a Hub model (not cached; the Hub is unreachable under HF_HUB_OFFLINE=1).
model:
  name_or_path: someorg/some-model-not-cached
"""


@pytest.fixture
def team(workdir):
    (workdir / "configs" / "experiment").mkdir(parents=True)
    for name, text in (("team_good", GOOD), ("team_broken", BROKEN), ("team_hub", HUB)):
        (workdir / "configs" / "experiment" / f"{name}.yaml").write_text(text)
    return workdir


def _cases(path):
    root = ET.parse(path).getroot()
    return root, {c.get("name"): c for c in root.iter("testcase")}


def test_the_plain_check_of_every_shipped_experiment_imports_no_torch_and_takes_under_a_second_each(tmp_path):
    junit = tmp_path / "check.xml"
    code = ("import sys; from aligntune import cli; rc = cli.main(['check', '--junit', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; raise SystemExit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(junit)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root, cases = _cases(junit)
    assert {"experiment=smoke", "experiment=dpo_smoke", "experiment=kto_smoke", "experiment=ppo_smoke"} <= set(cases)
    assert root.get("failures") == "0" and root.get("skipped") == "0"
    assert all(float(c.get("time")) < 1.0 for c in cases.values()), {n: c.get("time") for n, c in cases.items()}
    assert "passed" in proc.stdout and "7 of 7 passed" in proc.stdout.replace("\n", " ")


def test_a_team_check_fails_on_a_broken_experiment_and_reports_a_hub_one(team, capsys):
    assert cli.main(["check", "--config-dir", "configs", "--junit", "out/check.xml"]) == 2
    out = capsys.readouterr().out
    assert "team_broken" in out and "failed" in out and "needs the Hub" in out and "1 of 3 passed" in out
    assert "team_smoke" not in out and "dpo_smoke" not in out  # the user directory's experiments only, by default
    root, cases = _cases(team / "out" / "check.xml")
    assert root.get("tests") == "3" and root.get("failures") == "1" and root.get("skipped") == "1"
    failure = cases["experiment=team_broken"].find("failure")
    assert "max_stepz" in failure.text and "Unknown config key" in failure.text
    assert "Hugging Face Hub" in cases["experiment=team_hub"].find("skipped").text
    good = cases["experiment=team_good"]
    assert good.find("failure") is None and good.find("skipped") is None and good.get("classname") == "configs"


def test_hub_skips_pass_only_when_allowed_and_globs_select(team, capsys):
    assert cli.main(["check", "-cd", "configs", "experiment=team_h*,team_good"]) == 2
    assert cli.main(["check", "-cd", "configs", "experiment=team_h*", "experiment=team_good", "--allow-hub-skips"]) == 0
    out = capsys.readouterr().out
    assert "team_broken" not in out and "(allowed)" in out
    assert cli.main(["check", "-cd", "configs", "experiment=*", "--allow-hub-skips"]) == 2  # shipped + team: broken
    out = capsys.readouterr().out
    assert "dpo_smoke" in out and "shipped" in out


def test_a_team_experiment_named_like_a_shipped_one_is_checked_as_the_teams(team, capsys):
    """Shadowing: the team's experiment/smoke.yaml is the smoke the check composes, and is reported as the team's."""
    (team / "configs" / "experiment" / "smoke.yaml").write_text(BROKEN)
    assert cli.main(["check", "-cd", "configs", "experiment=smoke", "--junit", "out/check.xml"]) == 2
    _, cases = _cases(team / "out" / "check.xml")
    case = cases["experiment=smoke"]
    assert case.get("classname") == "configs" and "max_stepz" in case.find("failure").text
    (team / "configs" / "experiment" / "smoke.yaml").write_text(GOOD)
    assert cli.main(["check", "-cd", "configs", "experiment=smoke"]) == 0
    assert cli.main(["check", "experiment=smoke", "--junit", "out/shipped.xml"]) == 0  # without the directory: shipped
    assert _cases(team / "out" / "shipped.xml")[1]["experiment=smoke"].get("classname") == "shipped"
    capsys.readouterr()


@pytest.mark.parametrize("argv, needles", [
    (["check", "--config-dir", "no_such_dir"], ["config directory no_such_dir does not exist", "--config-dir configs"]),
    (["check", "-cd", "configs", "experiment=nothing_*"], ["experiment=nothing_* matches no experiment", "Valid options"]),
    (["check", "--fast"], ["does not take --fast", "Usage: aligntune check"]),
    (["check", "--junit"], ["--junit needs a value"]),
])
def test_bad_check_inputs_exit_2_with_one_paragraph(team, capsys, argv, needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("error:") == 1 and "Traceback" not in err
    assert all(n in err.replace("\n  ", " ") for n in needles), err


def test_init_writes_the_starter_project_and_refuses_to_overwrite(workdir, capsys):
    assert cli.main(["init", "proj"]) == 0
    proj = workdir / "proj"
    example = (proj / "configs" / "experiment" / "example.yaml").read_text()
    assert example.startswith("# @package _global_\n") and "aligntune train --config-dir configs experiment=example" in example
    assert "override /model: tiny" in example and "fn: rewards/my_reward.py:my_reward" in example
    assert "aligntune check --config-dir configs --smoke" in (proj / ".github" / "workflows" / "aligntune.yml").read_text()
    namespace: dict = {}
    exec((proj / "tests" / "test_my_reward.py").read_text(), {"__file__": str(proj / "tests" / "test_my_reward.py")} | namespace)
    capsys.readouterr()
    (workdir / "other" / "rewards").mkdir(parents=True)
    (workdir / "other" / "rewards" / "my_reward.py").write_text("# ours\n")
    assert cli.main(["init", "other"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "would overwrite other/rewards/my_reward.py" in err.replace("\n  ", " ")
    assert "example.yaml" not in err and not (workdir / "other" / "configs").exists()  # nothing written
    assert (workdir / "other" / "rewards" / "my_reward.py").read_text() == "# ours\n"


def test_the_starter_reward_test_passes(workdir):
    assert cli.main(["init"]) == 0
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_check_smoke_passes_right_after_init_and_trains_into_its_own_run_dir(workdir, capsys):
    assert cli.main(["init"]) == 0
    assert cli.main(["check", "--config-dir", "configs", "--smoke", "--out", "outputs/ci", "--junit", "check.xml"]) == 0
    summary = json.loads((workdir / "outputs" / "ci" / "example" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3  # debug=smoke's steps, not the example's 20
    config = (workdir / "outputs" / "ci" / "example" / "config.yaml").read_text()
    assert "my_reward" in config
    _, cases = _cases(workdir / "check.xml")
    # seconds, as measured (a few alone on 2 cores; not asserted against a bound: other processes on shared cores
    # slow a torch run many times over, and the run warns about that itself)
    assert float(cases["experiment=example"].get("time")) > 0


@pytest.mark.slow
def test_check_smoke_reports_a_run_that_fails_with_its_paragraph(workdir, capsys):
    assert cli.main(["init"]) == 0
    (workdir / "rewards" / "my_reward.py").write_text("def my_reward(completions, **kwargs):\n    return [1.0]\n")
    assert cli.main(["check", "-cd", "configs", "--smoke", "--out", "outputs/ci", "--junit", "check.xml"]) == 2
    _, cases = _cases(workdir / "check.xml")
    failure = cases["experiment=example"].find("failure")
    assert failure is not None and "my_reward" in failure.text
