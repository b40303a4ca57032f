"""Sweep job directory names (aligntune/config/sweeps.py) and the sweep presets."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from aligntune import cli
from aligntune.config import compose, sweeps
from aligntune.errors import EXIT_USAGE


def test_names_use_shortcuts_and_leave_out_what_every_job_shares():
    cli_overrides = ["algorithm.group_size=4,8", "algorithm.beta=0.0,0.01", "experiment=smoke", "train.max_steps=3"]
    assert sweeps.fixed_keys(cli_overrides) == ["experiment", "train.max_steps"]
    assert sweeps.fixed_keys_override(cli_overrides) == ("hydra.job.config.override_dirname.exclude_keys=['experiment','debug',"
                                                         "'verbose','hparams_search','launcher','train.max_steps']")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([sweeps.fixed_keys_override(["model@x=tiny", "a.b=1"])])[0]
    assert parsed.value()[-2:] == ["model@x", "a.b"]
    job = ["algorithm.group_size=8", "algorithm.beta=0.01", "experiment=smoke", "train.max_steps=3"]
    assert sweeps.job_dir_name(3, job, ["experiment", "train.max_steps"]) == "3_group_size=8,beta=0.01"


def test_names_keep_full_keys_when_leaves_collide_and_shorten_long_floats():
    name = sweeps.job_dir_name(0, ["+rewards.a.weight=0.5", "+rewards.b.weight=0.25",
                                   "train.learning_rate=0.00031622776601683794"])
    assert name == "0_rewards.a.weight=0.5,rewards.b.weight=0.25,learning_rate=0.0003162"


def test_names_have_no_path_separators_and_stay_short_and_stable():
    long = ["dataset.name=/data/set number 1/train.jsonl"] + [f"+rewards.r{i}.weight=0.{i}" for i in range(20)]
    name = sweeps.job_dir_name(12, long)
    assert "/" not in name and " " not in name and len(name) <= 84
    assert name.startswith("12_dataset_name=_data_set_number_1_train.jsonl,rewards.r0.weight=0.0,")
    assert name == sweeps.job_dir_name(12, long)  # the same overrides give the same name
    assert name != sweeps.job_dir_name(12, long[:-1])  # the hash covers the cut-off part
    assert sweeps.job_dir_name(5, ["experiment=smoke", "debug=smoke"]) == "5"


# ------------------------------------------------------------------------------------------ presets and plugins
def test_interval_sweeps_and_a_search_space_are_validated_at_their_ends():
    jobs = sweeps.validation_jobs(["experiment=smoke", "algorithm.beta=interval(0,0.05)"],
                                  {"train.learning_rate": "tag(log, interval(1e-4, 3e-2))", "algorithm.beta": "interval(0.0, 0.1)",
                                   "algorithm.group_size": "choice(4, 8)"})
    assert jobs == [["experiment=smoke", "algorithm.beta=0.0"], ["experiment=smoke", "algorithm.beta=0.05"],
                    ["experiment=smoke", "algorithm.beta=0.0", "train.learning_rate=0.0001"],
                    ["experiment=smoke", "algorithm.beta=0.0", "train.learning_rate=0.03"],
                    ["experiment=smoke", "algorithm.beta=0.0", "algorithm.group_size=4"],
                    ["experiment=smoke", "algorithm.beta=0.0", "algorithm.group_size=8"]]  # the command line's beta wins


def test_search_presets_are_refused_without_multirun_or_with_bad_values(workdir, capsys):
    assert cli.main(["train", "hparams_search=grpo_optuna"]) == EXIT_USAGE
    assert "configures a sweep, but the command runs a single job" in " ".join(capsys.readouterr().err.split())
    # A search-space value the schema refuses stops the search before any trial runs.
    assert cli.main(["train", "-m", "hparams_search=grpo_optuna", "algorithm.group_size=choice(4,0)"]) == EXIT_USAGE
    assert "algorithm.group_size=0" in capsys.readouterr().err
    assert cli.main(["train", "-m", "hparams_search=grpo_optuna", "algorithm.bta=interval(0,1)"]) == EXIT_USAGE
    assert "Unknown config key algorithm.bta" in capsys.readouterr().err
    assert not (workdir / "outputs").exists()


def test_a_preset_whose_plugin_is_missing_says_what_to_install(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sweeps.PLUGINS, ("launcher", "joblib"), ("hydra_plugins.no_such_launcher", "joblib"))
    assert cli.main(["train", "-m", "launcher=joblib", "group_size=4,8"]) == EXIT_USAGE
    assert "pip install 'aligntune[joblib]'" in " ".join(capsys.readouterr().err.split())


def test_an_optimized_metric_the_run_does_not_have_is_named_with_the_ones_it_has(capsys):
    run, _ = compose.load(["optimized_metric=eval_rewrd"])
    summary = {"status": "completed", "reward": 0.5, "reward_last_20pct": 0.6, "steps": 3}
    with pytest.raises(SystemExit) as exc:
        cli._objective(run, summary, "outputs/run", multirun=False)
    assert exc.value.code == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "optimized_metric=eval_rewrd is not among the final metrics of outputs/run" in err and "need held-out rows" in err
    assert "Use one of: reward, reward_last_20pct, steps." in err
    assert cli._objective(compose.load(["optimized_metric=reward_last_20pct"])[0], summary, "d", False) == 0.6
    assert cli._objective(compose.load([])[0], summary, "d", False) == 0.5  # default: the reward


def test_slurm_and_joblib_presets_compose_into_hydras_launchers():
    hydra = compose_hydra(["launcher=slurm", "hydra.launcher.partition=gpu"])
    assert hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert hydra.launcher.partition == "gpu" and hydra.launcher.timeout_min == 240 and hydra.launcher.gpus_per_node == 1
    hydra = compose_hydra(["launcher=joblib"])
    assert hydra.launcher._target_.endswith("JoblibLauncher") and hydra.launcher.n_jobs == 2
    hydra = compose_hydra(["hparams_search=grpo_optuna"])
    assert hydra.sweeper._target_.endswith("OptunaSweeper") and hydra.sweeper.direction == "maximize"
    assert set(hydra.sweeper.params) == {"train.learning_rate", "algorithm.beta", "algorithm.group_size"}


def test_a_sweep_exits_with_the_code_its_first_failed_job_recorded_in_summary_json(workdir, capsys):
    """No state crosses Hydra's boundary: the sweep's exit status is read back from its jobs' summary.json files,
    whichever process ran them (cli._job_failed and cli._objective record the code there)."""
    from aligntune.run.rundir import RunDir

    sweep = workdir / "sweep"
    for name, summary in (("0_seed=1", {"status": "completed", "reward": 0.5}), ("1_seed=2", {"status": "completed"}),
                          ("2_seed=3", {"status": "failed", "error": "ValueError: boom"}), ("10_seed=4", {"status": "failed"})):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "summary.json").write_text(json.dumps(summary))
    assert cli._finish_sweep(str(sweep), 0) == 1  # job 2 failed and recorded no code: a run failure
    run, _ = compose.load(["optimized_metric=eval_reward"])
    assert cli._objective(run, {"status": "completed"}, str(sweep / "1_seed=2"), multirun=True) is None
    assert RunDir(sweep / "1_seed=2").exit_code() == EXIT_USAGE
    assert json.loads((sweep / "1_seed=2" / "summary.json").read_text())["status"] == "completed"
    assert cli._finish_sweep(str(sweep), 0) == EXIT_USAGE  # job 1 comes before job 2 (and job 10)
    assert cli._finish_sweep(str(sweep), 130) == 130  # Hydra's own non-zero code stands
    (sweep / "1_seed=2" / "summary.json").write_text(json.dumps({"status": "completed"}))
    for name in ("2_seed=3", "10_seed=4"):
        (sweep / name / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert cli._finish_sweep(str(sweep), 0) == 0
    assert RunDir(sweep / "nowhere").exit_code() == 1
    capsys.readouterr()


def compose_hydra(overrides: list[str]):
    return compose.compose(overrides, with_hydra=True).hydra


@pytest.mark.slow  # about 40 s on 2 idle cores: three tiny GRPO runs, each evaluated on held-out prompts
def test_optuna_search_of_three_trials_reports_its_best_trial(workdir, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = workdir / "search"
    code = cli.main(["train", "-m", "hparams_search=grpo_optuna", "experiment=smoke", "hydra.sweeper.n_trials=3",
                     "train.max_steps=2", "train.batch_size=2", "algorithm.max_completion_length=6",
                     "dataset.eval_fraction=0.05", "algorithm.group_size=choice(2,4)", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1", "2"]
    values = {}
    for job in jobs:  # named by the suggested values, which are the ones the run used
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert job.name.startswith(f"{job.name.split('_')[0]}_learning_rate=") and f"group_size={config['algorithm']['group_size']}" in job.name
        assert 1e-4 <= config["train"]["learning_rate"] <= 3e-2 and 0.0 <= config["algorithm"]["beta"] <= 0.1
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        values[job.name] = summary["eval_reward"]  # the optimised metric: held-out reward
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values.values()))
    best_job = max(values, key=values.get)
    best_config = yaml.safe_load((sweep / best_job / "config.yaml").read_text())
    assert best["best_params"]["train.learning_rate"] == pytest.approx(best_config["train"]["learning_rate"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"best trial: {best['best_value']}" in out and "comparison written" in out
    with (sweep / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["eval_reward"]) for r in rows] == pytest.approx([values[p.name] for p in jobs])


@pytest.mark.slow  # about 30-45 s on 2 cores: two tiny GRPO runs in two fresh worker processes (each imports torch)
def test_joblib_launcher_runs_two_jobs_in_worker_processes(workdir, capsys):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = workdir / "parallel"
    code = cli.main(["train", "-m", "launcher=joblib", "group_size=2,4", "experiment=smoke", "max_steps=2",
                     "algorithm.max_completion_length=6", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    launched = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launched["_target_"].endswith("JoblibLauncher") and launched["n_jobs"] == 2
    # The names and the sweep directory are the parent's, although the jobs ran in worker processes.
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_group_size=2", "1_group_size=4"]
    for job in jobs:
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "completed"
    with (sweep / "comparison.csv").open() as f:
        assert [r["job"] for r in csv.DictReader(f)] == jobs  # written by the parent from the jobs' summaries
    assert "2 jobs" in capsys.readouterr().out


def test_the_terminal_comparison_fits_its_width_and_keeps_numbers_whole():
    from rich.console import Console

    from aligntune.run import report

    columns = ["job", "overrides", "status", "steps", "reward", "reward_first_20pct", "reward_last_20pct", "loss", "kl",
               "entropy", "eval_reward", "wall_time_s"]
    rows = [{"job": f"{i}_learning_rate=0.0008468,beta=0.09507,group_size={4 * (i + 1)}", "overrides": "x " * 40,
             "status": "completed", "steps": 3, "reward": 0.123456 + i, "reward_first_20pct": 0.1, "reward_last_20pct": 0.2,
             "loss": 3.0e-05, "kl": 0.0123, "entropy": 4.5, "eval_reward": 0.17 + i, "wall_time_s": 26.5} for i in range(3)]
    for width in (80, 200):
        console = Console(width=width, record=True)
        console.print(report.comparison_table(rows, columns, "sweep", width=width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "1.123" in text and "2.17" in text and "x x" not in text  # reward, eval_reward whole; no overrides
    assert "wall_time_s" in text and "entropy" not in text  # at 200 columns every key of CONSOLE_KEYS fits, no more
    narrow = Console(width=80, record=True)
    narrow.print(report.comparison_table(rows, columns, "sweep", width=80))
    assert "all columns: comparison.md" in narrow.export_text()
