"""Real tiny GRPO training through the CLI (in-process) and the Python API.

Each test asserts that metrics were logged AND that the parameters changed.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import changed_params, read_jsonl
from transformers import AutoModelForCausalLM

from aligntune import cli
from aligntune.models import tiny


def test_cli_run_writes_a_complete_run_directory(workdir):
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=smoke", "max_steps=4", "group_size=4", f"hydra.run.dir={run_dir}"])
    assert code == 0

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4 and summary["wall_time_s"] > 0

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for key in ("reward", "reward_std", "kl", "loss", "entropy", "completions/mean_length", "rewards/letter_match/mean"):
        assert all(isinstance(m[key], float) for m in metrics), key

    samples = read_jsonl(run_dir / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 2, 3, 4}
    first = samples[0]
    assert first["prompt"] and isinstance(first["completion"], str)
    assert 0.0 <= first["rewards"]["letter_match"] <= 1.0 and first["reward"] == pytest.approx(first["rewards"]["letter_match"])

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algorithm"]["group_size"] == 4 and config["train"]["max_steps"] == 4  # real keys, not shortcuts
    assert "algorithm.group_size=4" in yaml.safe_load((run_dir / "overrides.yaml").read_text())
    assert (run_dir / "train.log").stat().st_size > 0

    assert changed_params(run_dir / "model"), "training left every parameter unchanged"


def test_smoke_experiment_learns(workdir):
    """The acceptance bar of the offline demo: last-20% mean reward >= 2x the first 20%."""
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=smoke", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["reward_last_20pct"] >= 2 * summary["reward_first_20pct"], summary


def test_multirun_writes_one_directory_per_job(workdir, capsys):
    sweep = workdir / "sweep"
    code = cli.main(["train", "-m", "group_size=2,4", "experiment=smoke", "max_steps=1", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0_group_size=2", "1_group_size=4"]  # what varies; max_steps=1 is every job's
    for job, group in zip(jobs, (2, 4)):
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
        assert yaml.safe_load((job / "config.yaml").read_text())["algorithm"]["group_size"] == group
    out = capsys.readouterr().out
    assert "2 jobs" in out and str(jobs[0]) in out


def test_debug_preset_shrinks_an_experiment(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=smoke", "debug=smoke", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert summary["steps"] == 3 and config["model"]["name_or_path"] == "aligntune:tiny"
    assert config["dataset"]["name"] == "letters" and "letter_match" in config["rewards"]


def test_python_api_as_in_the_seed(workdir):
    from aligntune.core.backend_factory import create_rl_trainer

    trainer = create_rl_trainer(model_name="aligntune:tiny", dataset_name="letters", algorithm="grpo", backend="trl",
                                num_epochs=1, batch_size=2, learning_rate=1e-3, max_steps=2,
                                output_dir=workdir / "api", **{"algorithm.beta": 0.0, "algorithm.max_completion_length": 8})
    assert trainer.config.algorithm.group_size == 8 and trainer.config.train.batch_size == 2
    assert trainer.trainer.args.generation_batch_size == 16  # 2 prompts x 8 completions per step
    metrics = trainer.train()
    assert metrics["status"] == "completed" and metrics["steps"] == 2 and "reward" in metrics
    assert trainer.trainer.args.beta == 0.0
    assert changed_params(workdir / "api" / "model")


def test_python_api_refuses_hub_presets_offline(workdir):
    from aligntune.core.backend_factory import create_rl_trainer
    from aligntune.errors import ConfigError

    with pytest.raises(ConfigError, match="hub cannot be reached.*model=tiny"):
        create_rl_trainer(model_name="Qwen/Qwen3-0.6B", dataset_name="Anthropic/hh-rlhf", algorithm="grpo",
                          backend="trl", num_epochs=1, batch_size=2, learning_rate=1e-6)
    assert not (workdir / "outputs").exists()


def test_lora_run_saves_an_adapter_that_changed(workdir):
    from peft import PeftModel

    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=smoke", "max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
                     "model.lora.target_modules=[q_proj,v_proj]", f"hydra.run.dir={run_dir}"])
    assert code == 0
    assert (run_dir / "model" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny"))
    adapted = PeftModel.from_pretrained(base, run_dir / "model")
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero; training moved it


# --- the console on a first run: one line per one-time step, no engine progress bars ------------------------

ENGINE_BARS = ("Loading weights", "Writing model shards", "de-quantizing", "it/s]", "%|")


def test_a_first_run_shows_its_one_time_steps_as_lines_and_no_engine_progress_bars(workdir, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNTUNE_CACHE", str(workdir / "fresh-cache"))  # the tiny model is built during the run
    assert cli.main(["train", "experiment=smoke", "max_steps=1", f"hydra.run.dir={workdir / 'run'}"]) == 0
    captured = capsys.readouterr()
    assert "built the tiny model in" in captured.out
    for bar in ENGINE_BARS:
        assert bar not in captured.out + captured.err, bar
    # a launched backend's dry run builds the model outside any run's logging set-up: no bars there either
    monkeypatch.setenv("ALIGNTUNE_CACHE", str(workdir / "fresh-cache-2"))
    assert cli.main(["train", "backend=verl", "dry_run=true", "model=tiny", "dataset=letters",
                     f"hydra.run.dir={workdir / 'verl'}"]) == 0
    captured = capsys.readouterr()
    assert "built the tiny model in" in captured.out
    for bar in ENGINE_BARS:
        assert bar not in captured.out + captured.err, bar


def test_a_one_time_step_keeps_even_a_bare_tqdm_bar_off_the_console_unless_verbose(capsys, monkeypatch):
    """transformers' GGUF conversion draws a tqdm bar directly (no switch of theirs turns it off)."""
    from tqdm.auto import tqdm

    from aligntune.run import console

    monkeypatch.setattr(console, "engine_bars", False)
    with console.one_time_step("converting", "converted it"):
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    captured = capsys.readouterr()
    assert "de-quantizing" not in captured.err + captured.out and "converted it (" in captured.out
    monkeypatch.setattr(console, "engine_bars", True)  # -v
    with console.one_time_step("converting", "converted it"):
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "de-quantizing" in capsys.readouterr().err


# --- the start of a run: a short panel of what differs from the default job ----------------------------------

def test_the_console_opens_with_what_the_run_changes_not_the_whole_config(workdir, capsys):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=smoke", "max_steps=1", "group_size=4", f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    start = out.split("compute:")[0]  # everything before the job's own first line
    assert "├──" not in start and len(start.splitlines()) < 25  # not the ~100-line tree
    flat = " ".join(start.replace("│", " ").split())
    assert "aligntune train" in flat and "grpo on aligntune:tiny · dataset letters · 1 step of 4 prompts × 4 samples" in flat
    assert "command line experiment=smoke train.max_steps=1 algorithm.group_size=4" in flat
    for item in ("name_or_path=aligntune:tiny", "name=letters", "group_size=4", "learning_rate=0.01", "max_steps=1",
                 "rewards letter_match"):  # the command line's values and the smoke experiment's / tiny recipe's
        assert item in flat, item
    assert "cliprange=" not in flat and "seed=" not in flat  # what the run shares with the default job is left out
    unbroken = "".join(flat.split())  # a long path folds over lines of the panel
    assert f"rundirectory{run_dir}" in unbroken and f"{run_dir}/config.yaml" in unbroken and "compute: cpu" in out


def test_the_start_panel_of_the_default_job_and_of_another_algorithm(capsys):
    from aligntune.config import compose
    from aligntune.run.console import changes_from, show_start

    default = compose.default_run()
    assert changes_from(default, default) == {}
    show_start(default, "outputs/x", [], default)
    assert "nothing: this is the default job" in capsys.readouterr().out
    dpo = compose.load(["algorithm=dpo", "model=tiny", "dataset=prefs"])[0]
    changed = changes_from(dpo, default)
    assert changed["algorithm"][0] == "name=dpo" and "rewards" not in changed  # DPO has no rewards to list
    verbose = compose.load(["model=tiny", "verbose=true"])[0]
    show_start(verbose, "outputs/x", ["verbose=true"], None)  # -v: the whole tree, as before
    assert "├── seed: 42" in capsys.readouterr().out
