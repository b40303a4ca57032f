"""A team's own config directory, at every stage (aligntune/config/searchpath.py): the CLI, debug=smoke, the Python
API, ALIGNTUNE_CONFIG_PATH and hydra.searchpath, sweeps, resume and eval; and the bad inputs around it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from aligntune import cli
from aligntune.config import searchpath
from aligntune.errors import ConfigError

EXPERIMENT = """\
# @package _global_
# The team's GRPO smoke experiment: its own dataset option and reward file.
#   aligntune train --config-dir configs experiment=team_grpo
defaults:
  - override /model: tiny
  - override /dataset: team_letters
train:
  max_steps: 4
  batch_size: 2
algorithm:
  group_size: 4
  max_completion_length: 6
seed: 7
"""
DATASET = """\
# The shipped letters prompts under the team's name (its rewards: rewards/team_letters.yaml).
name: letters
format: prompt
"""
REWARDS = """\
# @package _global_
# The team's reward for team_letters, selected by the dataset's name (train.yaml: optional rewards: ${dataset}).
rewards:
  team_reward:
    fn: rewards/team.py:starts_right
"""
REWARD = """\
def starts_right(completions, answer, **kwargs):
    return [1.0 if c.strip().startswith(a) else 0.0 for c, a in zip(completions, answer)]
"""


@pytest.fixture
def team(workdir):
    """A team repository: configs/experiment/team_grpo.yaml, configs/dataset/team_letters.yaml,
    configs/rewards/team_letters.yaml and rewards/team.py."""
    for group in ("experiment", "dataset", "rewards"):
        (workdir / "configs" / group).mkdir(parents=True)
    (workdir / "rewards").mkdir()
    (workdir / "configs" / "rewards" / "team_letters.yaml").write_text(REWARDS)
    (workdir / "configs" / "experiment" / "team_grpo.yaml").write_text(EXPERIMENT)
    (workdir / "configs" / "dataset" / "team_letters.yaml").write_text(DATASET)
    (workdir / "rewards" / "team.py").write_text(REWARD)
    return workdir


def _run(path):
    return (json.loads((path / "summary.json").read_text()), yaml.safe_load((path / "config.yaml").read_text()))


def test_a_team_experiment_trains_from_its_own_directory_and_records_the_search_path(team):
    run = team / "run"
    assert cli.main(["train", "--config-dir", "configs", "experiment=team_grpo", f"hydra.run.dir={run}"]) == 0
    summary, config = _run(run)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert config["seed"] == 7 and list(config["rewards"]) == ["team_reward"]
    recorded = yaml.safe_load((run / "overrides.yaml").read_text())
    assert f"hydra.searchpath=[file://{team / 'configs'}]" in recorded


def test_debug_smoke_shrinks_a_team_experiment(team):
    run = team / "smoke"
    assert cli.main(["train", "-cd", "configs", "experiment=team_grpo", "debug=smoke", f"hydra.run.dir={run}"]) == 0
    summary, config = _run(run)
    assert summary["status"] == "completed" and summary["steps"] == 3  # debug=smoke's step count
    assert list(config["rewards"]) == ["team_reward"] and config["seed"] == 7  # the experiment's own choices kept


@pytest.mark.parametrize("how", ["env", "override", "api"])
def test_every_way_of_naming_the_directory_composes_the_same_config(team, monkeypatch, how):
    from aligntune.core.backend_factory import create_rl_trainer

    reference = team / "reference"
    assert cli.main(["train", "--config-dir", "configs", "experiment=team_grpo", "train.max_steps=1",
                     f"hydra.run.dir={reference}"]) == 0
    other = team / how
    if how == "env":
        monkeypatch.setenv(searchpath.ENV, str(team / "configs"))
        assert cli.main(["train", "experiment=team_grpo", "train.max_steps=1", f"hydra.run.dir={other}"]) == 0
    elif how == "override":
        assert cli.main(["train", f"hydra.searchpath=[file://{team / 'configs'}]", "experiment=team_grpo",
                         "train.max_steps=1", f"hydra.run.dir={other}"]) == 0
    else:
        job = create_rl_trainer(config_dir="configs", experiment="team_grpo", max_steps=1, output_dir=other,
                                backend="auto")  # the API names its backend (trl by default); the CLI: auto
        assert job.train()["status"] == "completed"
    strip = lambda c: {k: v for k, v in c.items() if k != "resume"}
    assert strip(_run(other)[1]) == strip(_run(reference)[1])


def test_a_sweep_validates_and_runs_every_job_from_the_team_directory(team):
    assert cli.main(["train", "-m", "--config-dir", "configs", "experiment=team_grpo", "train.max_steps=1",
                     "algorithm.beta=0.0,0.01"]) == 0
    jobs = sorted(p.parent for p in (team / "outputs" / "multirun").rglob("summary.json"))
    assert len(jobs) == 2 and all(_run(j)[0]["status"] == "completed" for j in jobs)
    assert {_run(j)[1]["algorithm"]["beta"] for j in jobs} == {0.0, 0.01}


def test_resume_and_eval_recompose_with_the_recorded_search_path(team, monkeypatch):
    from aligntune.run.checkpoints import InterruptGuard

    original = InterruptGuard.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(InterruptGuard, "on_step_end", on_step_end)
    run = team / "outputs" / "2026-12-01" / "10-00-00_team"
    assert cli.main(["train", "--config-dir", "configs", "experiment=team_grpo", "dataset.eval_fraction=0.25",
                     f"hydra.run.dir={run}"]) == 130
    monkeypatch.setattr(InterruptGuard, "on_step_end", original)
    assert cli.main(["train", f"resume={run}"]) == 0  # no --config-dir: the run's recorded one
    summary, config = _run(run)
    assert summary["status"] == "completed" and summary["steps"] == 4 and list(config["rewards"]) == ["team_reward"]
    assert cli.main(["eval", f"run={run}", "eval.num_prompts=2", "eval.samples=1"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert "rewards/team_reward/mean" in result["trained"]


def test_an_unknown_option_lists_every_directorys_options(team, capsys):
    assert cli.main(["train", "--config-dir", "configs", "experiment=team_grpp"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "experiment=team_grpp is not an option of the 'experiment' group" in err
    assert "shipped: dpo_smoke" in err and f"{team / 'configs'}: team_grpo" in err


def test_bad_directories_are_refused_in_one_paragraph(team, capsys):
    assert cli.main(["train", "--config-dir", "nowhere", "experiment=team_grpo"]) == 2
    assert "The config directory nowhere does not exist" in " ".join(capsys.readouterr().err.split())
    (team / "empty").mkdir()
    assert cli.main(["train", "--config-dir", "empty", "--cfg", "job"]) == 2
    assert "holds no YAML file" in capsys.readouterr().err
    (team / "configs" / "train.yaml").write_text("seed: 1\n")
    assert cli.main(["train", "--config-dir", "configs", "experiment=team_grpo"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{team / 'configs' / 'train.yaml'} would replace aligntune's primary config" in err
    assert "Move its keys into an experiment option" in err and "Traceback" not in err


SHADOW = """\
# @package _global_
# The team's own `smoke`: shadows the shipped experiment=smoke (and its model through the team's model/tiny.yaml).
defaults:
  - override /model: tiny
  - override /dataset: letters
train:
  max_steps: 1
  batch_size: 2
algorithm:
  group_size: 2
  max_completion_length: 4
seed: 11
"""


def test_a_user_option_shadows_the_shipped_one_of_the_same_name_and_the_run_says_so(team, capsys):
    shipped_tiny = (searchpath.shipped_dir() / "model" / "tiny.yaml").read_text()
    (team / "configs" / "experiment" / "smoke.yaml").write_text(SHADOW)
    (team / "configs" / "model").mkdir()
    (team / "configs" / "model" / "tiny.yaml").write_text(shipped_tiny.replace("dtype: auto", "dtype: fp32"))
    run = team / "shadowed"
    assert cli.main(["train", "--config-dir", "configs", "experiment=smoke", f"hydra.run.dir={run}"]) == 0
    _, config = _run(run)
    assert config["seed"] == 11 and config["algorithm"]["group_size"] == 2  # the team's smoke, not the shipped one
    assert config["model"]["dtype"] == "fp32"  # and the team's model=tiny, which the shipped smoke does not know of
    for text in (" ".join(capsys.readouterr().out.split()), (run / "train.log").read_text()):
        assert (f"{team / 'configs' / 'experiment' / 'smoke.yaml'} shadows the shipped option experiment=smoke "
                f"({searchpath.shipped_dir() / 'experiment' / 'smoke.yaml'})") in text
        assert f"{team / 'configs' / 'model' / 'tiny.yaml'} shadows the shipped option model=tiny" in text


def test_the_first_directory_on_the_search_path_wins(team):
    (team / "more" / "experiment").mkdir(parents=True)
    (team / "more" / "experiment" / "team_grpo.yaml").write_text(EXPERIMENT.replace("seed: 7", "seed: 8"))
    dirs = [team / "configs", team / "more"]
    mine, theirs = team / "configs" / "experiment" / "team_grpo.yaml", team / "more" / "experiment" / "team_grpo.yaml"
    assert searchpath.shadows(dirs) == [(mine.relative_to(team / "configs"), mine, theirs)]
    assert searchpath.options("experiment", dirs)["team_grpo"] == mine
    from aligntune.config import compose

    assert compose.load(["experiment=team_grpo", *searchpath.as_override(dirs)])[0].seed == 7
    assert compose.load(["experiment=team_grpo", *searchpath.as_override(dirs[::-1])])[0].seed == 8
    assert compose.load(["experiment=smoke", *searchpath.as_override(dirs)])[0].seed != 7


def test_a_user_yaml_with_a_syntax_error_names_the_file(team, capsys):
    (team / "configs" / "experiment" / "broken.yaml").write_text("# @package _global_\ntrain:\n  max_steps: [1\n")
    assert cli.main(["train", "--config-dir", "configs", "experiment=broken"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "broken.yaml" in err and "Traceback" not in err


def test_split_takes_flags_override_and_environment_in_that_order(team):
    (team / "more").mkdir()
    (team / "more" / "x.yaml").write_text("a: 1\n")
    rest, overrides, dirs = searchpath.split(["-m", "--config-dir=configs"], ["a=1", "hydra.searchpath=[file://more]"],
                                             env={searchpath.ENV: os.pathsep.join([str(team / "configs"), "more"])})
    assert rest == ["-m"] and overrides == ["a=1"]
    assert dirs == [team / "configs", team / "more"]  # de-duplicated, absolute
    assert searchpath.as_override(dirs) == [f"hydra.searchpath=[file://{team / 'configs'},file://{team / 'more'}]"]
    with pytest.raises(ConfigError, match="Python package"):
        searchpath.split([], ["hydra.searchpath=[pkg://somewhere]"], env={})


def test_every_stage_composes_the_same_config_from_a_shadowing_user_directory(team, monkeypatch, capsys):
    """One composition (compose.load) behind every stage: the same overrides, with a user directory whose
    experiment=smoke and model=tiny shadow the shipped ones, give the same config.yaml through the CLI, a resumed
    run, the Python API, a sweep job and a distributed worker's recomposition (dry_run: nothing is launched)."""
    import shlex

    from aligntune.core.backend_factory import create_rl_trainer
    from aligntune.distributed import worker
    from aligntune.run.checkpoints import InterruptGuard

    (team / "configs" / "experiment" / "smoke.yaml").write_text(SHADOW)
    (team / "configs" / "model").mkdir()
    tiny = (searchpath.shipped_dir() / "model" / "tiny.yaml").read_text()
    (team / "configs" / "model" / "tiny.yaml").write_text(tiny.replace("dtype: auto", "dtype: fp32"))
    same = ["experiment=smoke", "algorithm.beta=0.02", "train.max_steps=2"]
    config = lambda path: yaml.safe_load((path / "config.yaml").read_text())
    strip = lambda c, *keys: {k: v for k, v in c.items() if k not in ("resume", "resume_force", *keys)}

    original = InterruptGuard.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(InterruptGuard, "on_step_end", on_step_end)
    run = team / "outputs" / "2026-12-01" / "10-00-00_cli"
    assert cli.main(["train", "--config-dir", "configs", *same, f"hydra.run.dir={run}"]) == 130
    monkeypatch.setattr(InterruptGuard, "on_step_end", original)
    reference = config(run)
    assert reference["seed"] == 11 and reference["model"]["dtype"] == "fp32" and reference["algorithm"]["beta"] == 0.02

    assert cli.main(["train", f"resume={run}"]) == 0  # the recorded search path, not given again
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert strip(config(run)) == strip(reference)

    api = team / "api"
    create_rl_trainer(config_dir="configs", backend="auto", overrides=same, output_dir=api)  # building writes it
    assert strip(config(api)) == strip(reference)

    sweep = team / "sweep"
    assert cli.main(["train", "-m", "--config-dir", "configs", *same, f"hydra.sweep.dir={sweep}"]) == 0
    (job,) = [p.parent for p in sweep.glob("*/summary.json")]
    assert strip(config(job)) == strip(reference)

    capsys.readouterr()
    launched = team / "launched"
    assert cli.main(["train", "--config-dir", "configs", *same, "distributed.num_processes=2", "dry_run=true",
                     f"hydra.run.dir={launched}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "aligntune.distributed.worker" in x)
    argv = shlex.split(line)
    run_dir, overrides = argv[argv.index("aligntune.distributed.worker") + 1], argv[argv.index("aligntune.distributed.worker") + 2:]
    from dataclasses import asdict

    recomposed = json.loads(json.dumps(asdict(worker.recompose(Path(run_dir), overrides)), default=str))
    assert strip(recomposed, "distributed", "dry_run") == strip(reference, "distributed", "dry_run")
    assert recomposed["distributed"]["num_processes"] == 2 and reference["distributed"]["num_processes"] == 1
