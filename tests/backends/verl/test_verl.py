"""backend=verl: the translation checked against verl's OWN shipped config, composed by Hydra.

verl's YAML tree comes from its wheel, fetched at test time with `pip download verl==<VERL_VERSION>
--no-deps` (a pure-Python wheel, ~1.7 MB) into pytest's cache (.pytest_cache/d/verl-wheel), so later
runs need no registry. When the registry is unreachable the test that needs it is skipped, saying so.
verl itself is never imported (it needs GPUs and its own environment).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from aligntune import cli
from aligntune.backends.verl import translate
from aligntune.backends.verl.translate import Exported, override_strings, verl_overrides
from aligntune.config import compose, schema
from aligntune.errors import ConfigError

VERL_VERSION = "0.9.1"  # the version the translation was checked against


@pytest.fixture(scope="session")
def verl_config_dir(request, tmp_path_factory) -> Path:
    store = getattr(request.config, "cache", None)  # pytest's cache dir (absent with -p no:cacheprovider)
    cache = Path(store.mkdir("verl-wheel")) if store is not None else tmp_path_factory.mktemp("verl-wheel")
    tree = cache / f"verl-{VERL_VERSION}" / "verl" / "trainer" / "config"
    if not (tree / "ppo_trainer.yaml").is_file():
        wheels = list(cache.glob(f"verl-{VERL_VERSION}-*.whl"))
        if not wheels:
            done = subprocess.run([sys.executable, "-m", "pip", "download", f"verl=={VERL_VERSION}", "--no-deps",
                                   "--only-binary=:all:", "-q", "-d", str(cache)], capture_output=True, text=True,
                                  timeout=300, check=False)
            wheels = list(cache.glob(f"verl-{VERL_VERSION}-*.whl"))
            if not wheels:
                pytest.skip(f"verl's wheel could not be fetched from the package registry (pip download verl=="
                            f"{VERL_VERSION} --no-deps: {done.stderr.strip().splitlines()[-1:] or done.returncode}); "
                            "its shipped config is needed to check the translation")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith("verl/trainer/config/") and m.endswith(".yaml")]
            wheel.extractall(cache / f"verl-{VERL_VERSION}", members)
    return tree


def grpo_run(*overrides):
    return compose.load(["backend=verl", "model=tiny", "dataset=letters", *overrides])[0]


def exported(tmp_path, val: bool = True) -> Exported:
    return Exported(train_file=str(tmp_path / "train.parquet"), val_file=str(tmp_path / "val.parquet") if val else None,
                    reward_file=str(tmp_path / "reward_fn.py"), train_rows=100, model_path="/models/policy",
                    checkpoint_dir=str(tmp_path / "checkpoints"), experiment="exp1")


def compose_verl(config_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return hydra_compose("ppo_trainer", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_every_translated_key_holds_its_value_in_verls_composed_config(verl_config_dir, tmp_path):
    run = grpo_run("algorithm=gspo", "group_size=4", "beta=0.02", "algorithm.cliprange_high=5e-4", "temperature=0.9",
                   "algorithm.top_p=0.95", "algorithm.max_completion_length=300", "algorithm.num_iterations=2",
                   "batch_size=64", "train.micro_batch_size=4", "learning_rate=2e-6", "num_epochs=3", "max_steps=50",
                   "train.lr_scheduler=cosine", "train.warmup_ratio=0.1", "train.weight_decay=0.01",
                   "train.max_grad_norm=0.5", "train.gradient_checkpointing=true", "train.eval_steps=10",
                   "dataset.eval_fraction=0.1", "model.dtype=bf16", "model.lora.enabled=true", "model.lora.r=8",
                   "model.lora.alpha=16", "model.lora.dropout=0.0", "model.lora.target_modules=[q_proj,v_proj]",
                   "seed=7", "distributed.num_processes=16", "distributed.num_machines=2",
                   "backend.verl.rollout=sglang", "backend.verl.project=p", "logger=[tensorboard,wandb]",
                   "train.save_steps=16", "train.save_total_limit=3", "dataset.max_prompt_length=1024",
                   "dataset.truncation_mode=keep_start")
    intended = verl_overrides(run, exported(tmp_path))
    cfg = compose_verl(verl_config_dir, override_strings(intended))
    for key, value in intended.items():
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or value is None, f"{key} is not in verl's config"
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"{key}: verl's config holds {got!r}, aligntune meant {value!r}"
    # A few that matter most, spelled out:
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.actor_rollout_ref.rollout.n == 4
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.02 and cfg.actor_rollout_ref.actor.use_kl_loss is True
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 16  # 64 prompts / gspo's 4 mini-batches
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "gspo"
    assert cfg.actor_rollout_ref.model.lora_rank == 8 and list(cfg.actor_rollout_ref.model.target_modules) == ["q_proj", "v_proj"]
    assert cfg.trainer.nnodes == 2 and cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.test_freq == 10
    assert list(cfg.trainer.logger) == ["console", "tensorboard", "wandb"]
    assert cfg.trainer.save_freq == 16 and cfg.trainer.max_actor_ckpt_to_keep == 3
    assert cfg.data.max_prompt_length == 1024 and cfg.data.truncation == "right"  # keep_start: cut on the right
    # Interpolations in verl's tree follow: the rollout's response length is data.max_response_length.
    assert cfg.actor_rollout_ref.rollout.response_length == 300


def test_ppo_translates_to_gae_with_a_critic_and_the_kl_in_the_reward(verl_config_dir, tmp_path):
    run = grpo_run("algorithm=ppo", "beta=0.1", "algorithm.adaptive_kl=true",
                   "algorithm.target_kl=3.0", "algorithm.kl_horizon=500", "algorithm.gamma=0.99", "algorithm.lam=0.9",
                   "cliprange=0.1", "algorithm.cliprange_value=0.3", "algorithm.ppo_epochs=2",
                   "algorithm.num_mini_batches=2", "batch_size=32", "learning_rate=5e-6", "train.micro_batch_size=4",
                   "distributed.num_processes=4", "algorithm.value_model=/models/rm")
    ex = exported(tmp_path)
    ex.value_model_path = "/models/rm"
    intended = verl_overrides(run, ex)
    cfg = compose_verl(verl_config_dir, override_strings(intended))
    for key, value in intended.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"{key}: verl's config holds {got!r}, aligntune meant {value!r}"
    assert cfg.algorithm.adv_estimator == "gae" and cfg.actor_rollout_ref.rollout.n == 1
    assert cfg.algorithm.use_kl_in_reward is True and cfg.actor_rollout_ref.actor.use_kl_loss is False
    assert (cfg.algorithm.kl_ctrl.type, cfg.algorithm.kl_ctrl.kl_coef, cfg.algorithm.kl_penalty) == ("adaptive", 0.1, "kl")
    assert cfg.critic.model.path == "/models/rm" and cfg.critic.optim.lr == 5e-6 and cfg.critic.cliprange_value == 0.3
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 16 and cfg.critic.ppo_mini_batch_size == 16  # 32 / 2
    with pytest.raises(ConfigError, match="own optimizer"):
        verl_overrides(grpo_run("algorithm=ppo", "algorithm.vf_coef=0.5"), ex)
    with pytest.raises(ConfigError, match="KL early stop"):
        verl_overrides(grpo_run("experiment=ppo_smoke"), ex)


def test_defaults_translate_and_compose_too(verl_config_dir, tmp_path):
    intended = verl_overrides(grpo_run(), exported(tmp_path, val=False))
    cfg = compose_verl(verl_config_dir, override_strings(intended))
    assert cfg.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-mean"  # GRPO's per-sequence mean
    assert cfg.data.val_files == cfg.data.train_files and cfg.trainer.test_freq == -1
    assert cfg.data.truncation == "error"  # no dataset.max_prompt_length: verl's own check stays


def _leaf_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


@pytest.mark.parametrize("algorithm", [schema.GRPOAlgorithmConfig, schema.PPOAlgorithmConfig])
def test_every_aligntune_key_translates_or_is_refused(algorithm):
    from aligntune.core.registry import REFUSED_BY_REGISTRY

    covered = (set(translate.TRANSLATED) | set(translate.NOT_TRANSLATED) | set(translate.LAUNCH_KEYS)
               | set(REFUSED_BY_REGISTRY))
    keys = [k for k in _leaf_keys(schema.RunConfig) if k != "algorithm"] + [
        f"algorithm.{k}" for k in _leaf_keys(algorithm)]
    missing = [k for k in keys if k not in covered and not k.startswith(("dataset.", "eval."))]
    assert not missing, f"keys neither translated nor refused for verl: {missing}"


@pytest.mark.parametrize("overrides, needle", [
    (["algorithm=dapo"], "has no equivalent on backend=verl"),
    (["algorithm.mask_truncated_completions=true"], "truncated-completion mask"),
    (["algorithm.loss_type=bnpo"], "no equivalent in verl's trainer"),
    (["algorithm.kl_estimator=k3_is"], "no equivalent in verl's trainer"),
    (["train.logging_steps=5"], "verl logs every step"),
    (["model.lora.enabled=true"], "LoRA has no dropout"),
    (["num_epochs=1.5"], "whole epochs"),
    (["distributed=deepspeed_zero2"], "own FSDP"),
    (["distributed.config_file=zero3"], "an accelerate config file does not apply"),
    (["device=cpu"], "GPUs"),
    (["eval.after_training=true"], "aligntune eval run="),
    (["distributed.num_processes=16", "distributed.num_machines=2", "distributed.main_process_ip=10.0.0.1"], "Ray"),
])
def test_untranslatable_settings_are_refused(overrides, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        verl_overrides(grpo_run(*overrides), exported(tmp_path))


def test_ppo_refuses_k3_in_the_reward_on_verl_too(workdir, capsys):
    """verl's kl_penalty=low_var_kl is k3 in the reward: the same refusal as on the native engine, before any export."""
    with pytest.raises(ConfigError, match="kl_estimator=k3 is not available for PPO") as err:
        grpo_run("algorithm=ppo", "algorithm.kl_estimator=k3")
    assert "grad KL(pi||ref) - grad KL(ref||pi)" in str(err.value) and "kl_estimator=k1" in str(err.value)
    assert "k3" not in translate.KL_PENALTY
    assert cli.main(["train", "backend=verl", "dry_run=true", "model=tiny", "dataset=letters", "algorithm=ppo",
                     "algorithm.kl_estimator=k3", "hydra.run.dir=run"]) == 2
    assert "kl_estimator=k3 is not available for PPO" in " ".join(capsys.readouterr().err.split())
    assert not (workdir / "run").exists()


def test_verl_settings_on_another_backend_are_refused(workdir, capsys):
    assert cli.main(["train", "backend.verl.rollout=sglang"]) == 2
    assert "backend.verl.* is set, but the run is on backend=trl" in capsys.readouterr().err


def test_without_dry_run_the_verl_python_is_required(workdir, capsys):
    assert cli.main(["train", "backend=verl", "model=tiny", "dataset=letters", "hydra.run.dir=run"]) == 2
    assert "backend.verl.python is not set" in capsys.readouterr().err
    assert not (workdir / "run" / "summary.json").exists()


def test_dry_run_exports_verl_data_and_a_reward_file_that_scores_like_aligntune(workdir, capsys):
    import pyarrow.parquet as pq

    from aligntune.rewards.letters import letter_match

    run_dir = workdir / "run"
    assert cli.main(["train", "backend=verl", "dry_run=true", "model=tiny", "dataset=letters", "dataset.eval_fraction=0.25",
                     "dataset.system_prompt='Be brief.'", f"hydra.run.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    verl_dir = run_dir / "verl"
    assert "-m verl.trainer.main_ppo" in out and "algorithm.adv_estimator=grpo" in out
    assert (verl_dir / "command.sh").read_text().split("\n")[1] in out
    assert not (run_dir / "summary.json").exists()
    rows = pq.read_table(verl_dir / "train.parquet").to_pylist()
    val = pq.read_table(verl_dir / "val.parquet").to_pylist()
    shipped = Path(importlib.util.find_spec("aligntune.data.shipped").origin).parent / "letters.jsonl"
    assert rows and val and len(rows) + len(val) == len(shipped.read_text().splitlines())  # every row, split 3:1
    row = rows[0]
    assert row["data_source"] == "aligntune/letters"
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."} and row["prompt"][1]["role"] == "user"
    assert row["reward_model"] == {"style": "rule", "ground_truth": row["extra_info"]["answer"]}
    # verl calls compute_score(data_source, solution_str, ground_truth, extra_info): load the file as verl does.
    spec = importlib.util.spec_from_file_location("reward_fn", verl_dir / "reward_fn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    completion = "qqqq" + row["extra_info"]["answer"]
    got = module.compute_score(row["data_source"], completion, row["reward_model"]["ground_truth"], row["extra_info"])
    assert got == pytest.approx(letter_match([completion], [row["extra_info"]["answer"]])[0]) and got > 0
    overrides = (verl_dir / "overrides.txt").read_text().split()
    assert f"reward.custom_reward_function.path={verl_dir / 'reward_fn.py'}" in overrides
    assert f"data.train_files={verl_dir / 'train.parquet'}" in overrides
    assert json.dumps(row["extra_info"])  # plain JSON-able values, as parquet/verl need


def test_a_presets_eval_after_training_is_turned_off_with_a_notice(workdir, capsys, monkeypatch):
    """The default job's recipe sets eval.after_training=true, which verl cannot run: `backend=verl dry_run=true` on it
    turns it off in one line naming the key and the `aligntune eval` to run afterwards (typed by the user: refused)."""
    from aligntune import inherited
    from aligntune.models import loading, smollm2, tiny

    (change,) = inherited.changes(["backend=verl", "dry_run=true", "dataset.eval_fraction=0.1"])
    assert change.override == "eval.after_training=false"
    assert "eval.after_training=true" in change.notice and "aligntune eval run=" in change.notice
    assert "dataset.eval_fraction=0.1" in change.notice and "dry_run" not in change.notice  # the run's data, not verl's
    assert inherited.changes(["backend=verl", "dry_run=true", "eval.after_training=true"]) == []
    with pytest.raises(ConfigError, match="eval.after_training=True has no equivalent"):
        cli.validate(["backend=verl", "dry_run=true", "eval.after_training=true"], multirun=False)
    assert inherited.changes([]) == []  # on TRL the recipe's evaluation runs

    # The whole command, on the default job (its SmolLM2 stood in for by the tiny model: no GGUF conversion here).
    monkeypatch.setattr(smollm2, "gguf_file", lambda: workdir / "stand-in.gguf")
    monkeypatch.setitem(loading.SHIPPED, smollm2.PRESET, lambda: tiny.resolve("aligntune:tiny"))
    run_dir = workdir / "run"
    assert cli.main(["train", "backend=verl", "dry_run=true", f"hydra.run.dir={run_dir}"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: eval.after_training=true came with a preset" in out and "-m verl.trainer.main_ppo" in out
    assert "eval.after_training=false" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
