"""Multi-process runs under `accelerate launch` (2 CPU processes on gloo), and the launch presets.

Tolerances were measured on this 2-core machine (see README, "Several processes"): DPO is
deterministic, and 2 processes x 1 pair match 1 process x 2 pairs to ~2e-7 per metric (float
summation order); GRPO samples differently per process, so only its distribution can match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aligntune import cli, preflight
from aligntune.config import compose
from aligntune.distributed import presets
from aligntune.errors import ConfigError


def metrics(run_dir: Path) -> list[dict]:
    """The per-step training lines of metrics.jsonl (not the held-out evaluation's)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "grad_norm" in r]


def test_a_batch_that_cannot_be_split_is_refused_with_the_arithmetic(workdir, capsys):
    code = cli.main(["train", "batch_size=3", "group_size=2", "distributed.num_processes=4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "6 completions" in err and "distributed.num_processes=4" in err and "6 / 4 = 1.5" in err
    assert "Traceback" not in err and not (workdir / "outputs").exists()
    with pytest.raises(ConfigError, match=r"3 pairs .*3 / 2 = 1\.5"):
        preflight.load(["experiment=dpo_smoke", "batch_size=3", "distributed.num_processes=2"])
    with pytest.raises(ConfigError, match="micro_batch_size=3 does not divide"):
        preflight.load(["experiment=dpo_smoke", "batch_size=8", "train.micro_batch_size=3", "distributed.num_processes=2"])


@pytest.mark.parametrize("overrides, needle", [
    (["distributed.num_machines=2", "distributed.num_processes=4"], "main_process_ip is not set"),
    (["distributed.num_processes=3", "distributed.num_machines=2", "distributed.main_process_ip=10.0.0.1"],
     "cannot be spread evenly"),
    (["algorithm=ppo", "experiment=ppo_smoke", "distributed.num_processes=2"], "single-process engine"),
    (["algorithm=dapo", "distributed.num_processes=2", "batch_size=2"], "dynamic_sampling"),
    (["dry_run=true"], "neither distributed nor on a launched backend"),
])
def test_what_cannot_launch_is_refused_before_anything_runs(workdir, capsys, overrides, needle):
    assert cli.main(["train", *overrides]) == 2
    assert needle in capsys.readouterr().err
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_each_preset_loads_with_accelerates_own_config_loader(tmp_path, strategy):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    run = compose.load([f"distributed={strategy}", "distributed.num_processes=8", "distributed.num_machines=2",
                        "distributed.main_process_ip=10.0.0.1", "distributed.machine_rank=1", "model.dtype=bf16",
                        "train.gradient_checkpointing=true"])[0]
    path = presets.write(run, tmp_path)
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP}.get(
        strategy, DistributedType.DEEPSPEED)
    assert (cfg.num_processes, cfg.num_machines, cfg.machine_rank, cfg.main_process_ip, cfg.main_process_port) == (
        8, 2, 1, "10.0.0.1", 29500)
    if strategy == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert cfg.fsdp_config["fsdp_activation_checkpointing"] is True and cfg.mixed_precision == "bf16"
    if strategy.startswith("deepspeed"):
        from accelerate.utils.deepspeed import HfDeepSpeedConfig

        ds_file = cfg.deepspeed_config["deepspeed_config_file"]
        assert Path(ds_file) == tmp_path / presets.DEEPSPEED_FILE
        assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
        ds = HfDeepSpeedConfig(ds_file)  # accelerate's parser of DeepSpeed's JSON
        stage = 3 if strategy.endswith("3") else 2
        assert ds.get_value("zero_optimization.stage") == stage and ds.is_zero3() == (stage == 3)
        assert ds.get_value("train_micro_batch_size_per_gpu") == "auto"  # filled by transformers from train.*
        assert cfg.deepspeed_config["zero3_init_flag"] == (stage == 3)
    else:
        assert not cfg.deepspeed_config


def test_dry_run_writes_the_launch_files_and_prints_the_command(workdir, capsys):
    run_dir = workdir / "run"
    assert cli.main(["train", "distributed=deepspeed_zero3", "dry_run=true", f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "accelerate.commands.launch --config_file" in out and "aligntune.distributed.worker" in out
    assert str(run_dir / "launch" / "accelerate_config.yaml") in out
    assert yaml.safe_load((run_dir / "launch" / "accelerate_config.yaml").read_text())["distributed_type"] == "DEEPSPEED"
    assert json.loads((run_dir / "launch" / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 3
    assert not (run_dir / "summary.json").exists()  # nothing ran: nothing claims to be complete


def test_a_sweep_launches_one_process_group_per_job(workdir, capsys):
    """Each multirun job prepares (and would launch) its own group: its own launch files, its own command."""
    assert cli.main(["train", "-m", "seed=1,2", "distributed.num_processes=2", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    configs = sorted(workdir.glob("outputs/multirun/*/*/*/launch/accelerate_config.yaml"))
    assert len(configs) == 2 and out.count("accelerate.commands.launch") == 2
    for config in configs:
        assert str(config) in out and str(config.parent.parent) in out


def test_sharding_strategies_need_gpus(workdir, capsys):
    assert cli.main(["train", "distributed=fsdp", "device=cpu", "hydra.run.dir=run"]) == 2
    err = capsys.readouterr().err
    assert "shards the model across GPUs" in err and "dry_run=true" in err
    assert not (workdir / "run" / "summary.json").exists() and not (workdir / "run" / "launch").exists()


def test_the_python_api_refuses_launched_runs(workdir):
    from aligntune.core.backend_factory import create_rl_trainer

    with pytest.raises(ConfigError, match="command line"):
        create_rl_trainer(algorithm="dpo", dataset_name="prefs", **{"distributed.num_processes": 2})


def _two_processes_vs_one(workdir, experiment: str, steps: int, extra: list[str]) -> tuple[list[dict], list[dict]]:
    common = [f"experiment={experiment}", f"max_steps={steps}", *extra]
    assert cli.main(["train", *common, "distributed.num_processes=2", "hydra.run.dir=two"]) == 0
    assert cli.main(["train", *common, "hydra.run.dir=one"]) == 0
    two, one = workdir / "two", workdir / "one"
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert (two / "model" / "config.json").exists() and (two / "launch" / "launcher.log").exists()
    return metrics(one), metrics(two)


@pytest.mark.slow
def test_two_cpu_processes_train_dpo_like_one_process(workdir):
    """2 processes x 1 pair per step == 1 process x 2 pairs per step (same seed, same global batch)."""
    from transformers import AutoModelForCausalLM

    from aligntune.models import tiny

    one, two = _two_processes_vs_one(workdir, "dpo_smoke", 4, ["batch_size=2", "train.eval_steps=null"])
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    trained = AutoModelForCausalLM.from_pretrained(workdir / "two" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny"))
    changed = [n for (n, p), q in zip(trained.named_parameters(), base.parameters()) if not p.detach().equal(q.detach())]
    assert changed, "no parameter changed in the 2-process run"


@pytest.mark.slow
def test_two_cpu_processes_train_grpo_like_one_process(workdir):
    """GRPO samples per process, so completions differ; the run's mean reward must agree within 0.05.
    Measured (30-step smoke run, mean reward over the run): one process 0.613 / 0.632 / 0.625 (seeds 42-44,
    a 0.019 range); two processes 0.579 / 0.620 (seeds 42, 43): differences 0.034 and 0.012."""
    one, two = _two_processes_vs_one(workdir, "smoke", 30, [])
    assert len(one) == len(two) == 30
    mean = lambda rows: sum(r["reward"] for r in rows) / len(rows)
    assert abs(mean(one) - mean(two)) < 0.05, (mean(one), mean(two))
    assert two[0]["reward"] == pytest.approx(one[0]["reward"], abs=0.1)  # step 1: same policy, other samples


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_parses_the_generated_json_once_transformers_fills_the_autos(tmp_path, strategy):
    """DeepSpeed's own config class, where DeepSpeed is installed (an sdist that needs torch at build time:
    `pip install --no-build-isolation 'aligntune[deepspeed]'`; not part of the test extra)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (optional: aligntune[deepspeed])")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from aligntune.backends.trl.grpo import to_grpo_config

    run = compose.load([f"distributed={strategy}", "batch_size=4", "train.micro_batch_size=2", "train.max_grad_norm=0.5"])[0]
    presets.write(run, tmp_path)
    hf = HfTrainerDeepSpeedConfig(str(tmp_path / presets.DEEPSPEED_FILE))
    hf.trainer_config_process(to_grpo_config(run, str(tmp_path / "out"), world_size=2))  # 32 completions / 2 processes
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == (3 if strategy.endswith("3") else 2)
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.gradient_clipping) == (2, 8, 0.5)
    assert ds.zero_config.gather_16bit_weights_on_model_save == (strategy == "deepspeed_zero3")


@pytest.mark.slow
def test_a_user_error_inside_the_workers_comes_back_as_one_paragraph(workdir, capsys):
    (workdir / "bad.py").write_text("def score(completions, **kw):\n    raise ValueError('boom')\n")
    code = cli.main(["train", "~rewards", "+rewards.bad.fn=bad.py:score", "distributed.num_processes=2",
                     "hydra.run.dir=run"])
    err = capsys.readouterr().err
    assert code == 2 and "rewards.bad" in err and "boom" in err and "Traceback" not in err
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("RewardError")


# --- distributed.config_file: a user's accelerate file or one of TRL's presets ------------------------------

USER_FILE = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
mixed_precision: 'no'
num_machines: 1
num_processes: 4
machine_rank: 0
rdzv_backend: static
use_cpu: true
"""


def test_a_trl_preset_is_launched_with_the_chosen_process_count(workdir, capsys):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=dpo_smoke", "distributed.config_file=zero3", "distributed.num_processes=2",
                     "dry_run=true", f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    launched = run_dir / "launch" / "accelerate_config.yaml"
    assert f"--config_file {launched}" in out and "aligntune.distributed.worker" in out
    copy = yaml.safe_load(launched.read_text())
    assert (copy["distributed_type"], copy["deepspeed_config"]["zero_stage"], copy["num_processes"]) == ("DEEPSPEED", 3, 2)
    expected = json.loads((run_dir / "launch" / "expected_config.json").read_text())  # what each worker must compose
    assert expected["distributed"]["config_file"] == "zero3" and expected["distributed"]["num_processes"] == 2
    assert expected["model"]["dtype"] == "bf16"  # the preset's mixed_precision, adopted by model.dtype=auto
    # without distributed.num_processes, TRL's own count (8) splits the batch: 8 pairs -> 1 per process
    assert compose.load(["experiment=dpo_smoke", "distributed.config_file=fsdp2"])[0].distributed.num_processes == 8


def test_a_users_file_counts_its_processes_in_the_batch_checks(workdir, capsys):
    (workdir / "acc.yaml").write_text(USER_FILE)
    run = compose.load(["experiment=dpo_smoke", "distributed.config_file=acc.yaml"])[0]
    assert run.distributed.num_processes == 4 and run.model.dtype == "auto"
    with pytest.raises(ConfigError, match=r"6 pairs .*distributed.num_processes=4 .*6 / 4 = 1\.5"):
        compose.load(["experiment=dpo_smoke", "distributed.config_file=acc.yaml", "batch_size=6"])
    with pytest.raises(ConfigError, match="distributed.num_processes=2, and distributed.config_file=acc.yaml launches "
                                          "num_processes=4.*Drop distributed.num_processes"):
        compose.load(["experiment=dpo_smoke", "distributed.config_file=acc.yaml", "distributed.num_processes=2"])
    (workdir / "two_machines.yaml").write_text(USER_FILE.replace("num_machines: 1", "num_machines: 2").replace(
        "machine_rank: 0", "machine_rank: 1\nmain_process_ip: 10.0.0.1"))
    d = compose.load(["experiment=dpo_smoke", "distributed.config_file=two_machines.yaml"])[0].distributed
    assert (d.num_processes, d.num_machines, d.machine_rank, d.main_process_ip) == (4, 2, 1, "10.0.0.1")
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=dpo_smoke", "distributed.config_file=acc.yaml", "dry_run=true",
                     f"hydra.run.dir={run_dir}"]) == 0
    assert str(run_dir / "launch" / "accelerate_config.yaml") in capsys.readouterr().out
    assert yaml.safe_load((run_dir / "launch" / "accelerate_config.yaml").read_text()) == yaml.safe_load(USER_FILE)


@pytest.mark.parametrize("overrides, needles", [
    (["distributed.config_file=nope.yaml"], ["distributed.config_file=nope.yaml does not exist", "zero3", "fsdp2"]),
    (["distributed.config_file=single_gpu.yaml"], ["distributed_type='NO'", "launches no process group"]),
    (["distributed.config_file=bf16.yaml", "model.dtype=fp32"],
     ["model.dtype=fp32", "mixed_precision=bf16", "Set model.dtype=bf16"]),
    (["distributed=fsdp", "distributed.config_file=zero2"], ["distributed.strategy=fsdp", "drop distributed=fsdp"]),
    (["distributed.config_file=zero2", "distributed.main_process_port=1234"], ["distributed.main_process_port=1234"]),
    (["distributed.config_file=fsdp1", "device=cpu"], ["distributed.config_file=fsdp1 (distributed_type FSDP) shards",
                                                       "dry_run=true"]),
])
def test_what_a_config_file_cannot_launch_is_refused(workdir, capsys, overrides, needles):
    (workdir / "single_gpu.yaml").write_text(USER_FILE.replace("MULTI_GPU", "'NO'"))
    (workdir / "bf16.yaml").write_text(USER_FILE.replace("'no'", "bf16"))
    assert cli.main(["train", "experiment=dpo_smoke", *overrides, "hydra.run.dir=run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    for needle in needles:
        assert needle in err, err
    assert not (workdir / "run" / "summary.json").exists()
