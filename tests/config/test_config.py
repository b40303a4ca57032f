"""Composition and validation: configs/ + the dataclass schemas -> RunConfig, or a ConfigError.

Every option of every config group is discovered from the YAML files (so a new option is tested
the day it is added), composed and validated. Nothing here imports torch or trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from aligntune import hub, preflight
from aligntune.config import compose, schema
from aligntune.core.registry import BACKENDS
from aligntune.errors import ConfigError

GROUPS = ("model", "dataset", "algorithm", "backend", "distributed", "experiment", "debug", "rewards")
CONFIG_DIR = Path(compose.config_dir())


def _yaml(group: str, option: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{option}.yaml").read_text()) or {}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in _options(g)]

# Options whose YAML leaves the source mandatory (`???`): they compose once it is given.
MANDATORY = {
    ("model", "custom"): ["model.name_or_path=aligntune:tiny"],
    ("dataset", "custom"): ["dataset.name=letters"],
}


def _source(group: str, option: str) -> str | None:
    """The model/dataset source an option names (model.name_or_path, dataset.name), if any."""
    key = {"model": "name_or_path", "dataset": "name"}.get(group)
    return _yaml(group, option).get(key) if key else None


def _is_hub(source: str | None) -> bool:
    return bool(source) and source != "???" and hub.looks_like_hub_id(source)


HUB_OPTIONS = [(g, o) for g, o in ALL_OPTIONS if _is_hub(_source(g, o))]


def _brings_rewards(group: str, option: str) -> bool:
    return (Path(compose.config_dir()) / "rewards" / f"{option}.yaml").is_file()  # train.yaml: rewards: ${dataset}


def _overrides(group: str, option: str) -> list[str]:
    """The overrides that select `option`, plus what it needs to stand on its own under GRPO."""
    if group == "rewards":
        # On the recipe-less custom dataset the selected rewards option is the only source of rewards.
        return ["dataset=custom", "dataset.name=letters", f"rewards={option}"]
    ovs = [f"{group}={option}", *MANDATORY.get((group, option), [])]
    if (group, option) == ("backend", "verl"):
        # launching needs backend.verl.python (the verl environment); the default job's after-training evaluation
        # is aligntune's own (refused for verl: tests/backends/verl/test_verl.py)
        ovs += ["dry_run=true", "eval.after_training=false"]
    if group == "dataset" and not _brings_rewards(group, option):
        ovs.append("+rewards.probe.fn=letter_match")  # the default algorithm (GRPO) needs a reward
    return ovs


def _has_engine(run: schema.RunConfig) -> bool:
    backend = run.backend.name
    if backend == "auto":
        return any(run.algorithm.name in entry.algorithms for entry in BACKENDS.values())
    return backend in BACKENDS and run.algorithm.name in BACKENDS[backend].algorithms


def test_discovery_found_the_shipped_groups():
    found = {g for g, _ in ALL_OPTIONS}
    assert found == set(GROUPS)
    assert ("model", "tiny") in ALL_OPTIONS and ("dataset", "letters") in ALL_OPTIONS
    assert ("algorithm", "grpo") in ALL_OPTIONS and ("debug", "smoke") in ALL_OPTIONS
    assert ("model", "qwen3_0_6b") in HUB_OPTIONS and ("dataset", "hh_rlhf") in HUB_OPTIONS


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(group, option, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, cfg = compose.load(_overrides(group, option))
    assert isinstance(run, schema.RunConfig)
    assert isinstance(run.algorithm, schema.ALGORITHM_SCHEMAS[run.algorithm.name])
    data = _yaml(group, option)
    if group == "model" and (group, option) not in MANDATORY:
        assert run.model.name_or_path == data["name_or_path"]
    if group == "dataset" and (group, option) not in MANDATORY:
        assert run.dataset.name == data["name"]
    if group == "algorithm":
        assert type(run.algorithm) is schema.ALGORITHM_SCHEMAS[data["name"]]
    if group == "backend":
        assert run.backend.name == data["name"]
    if group == "rewards":
        assert set(run.rewards) == set(data["rewards"])

    # Source and engine checks (preflight.load == the above + preflight.check).
    source_is_hub = _is_hub(run.model.name_or_path) or _is_hub(run.dataset.name)
    if source_is_hub or not _has_engine(run):
        with pytest.raises(ConfigError) as err:
            preflight.check(run)
        msg = str(err.value)
        if not _has_engine(run):  # checked first: no point looking for a model nobody can train
            assert f"algorithm={run.algorithm.name} is not available" in msg or "is not a backend" in msg, msg
        else:
            assert "Hugging Face Hub" in msg, msg
    else:
        preflight.check(run)


@pytest.mark.parametrize("group,option", HUB_OPTIONS, ids=[f"{g}={o}" for g, o in HUB_OPTIONS])
def test_hub_option_offline_fails_fast_saying_what_to_use(group, option, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _source(group, option)
    if hub.is_cached(source, group):
        pytest.skip(f"{source} is in the local Hugging Face cache, so it validates offline")
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        preflight.load(_overrides(group, option))
    elapsed = time.monotonic() - start
    msg = str(err.value)
    assert elapsed < 5, f"took {elapsed:.1f}s to fail offline"
    assert "Hugging Face Hub" in msg and repr(source) in msg
    instead = {"model": "model=tiny", "dataset": "dataset=letters"}[group]
    assert "Use " in msg and instead in msg, msg


def test_mandatory_source_without_value_is_an_error_naming_the_key():
    for (group, option), fix in MANDATORY.items():
        key = fix[0].split("=")[0]
        with pytest.raises(ConfigError, match=rf"{key} has no value"):
            compose.load([f"{group}={option}"])


# --- defaults ------------------------------------------------------------------------------------

def test_grpo_has_its_documented_defaults():
    run, cfg = preflight.load(["model=tiny", "dataset=letters"])  # a model whose recipe leaves them alone
    algo = run.algorithm
    assert type(algo) is schema.GRPOAlgorithmConfig
    assert (algo.group_size, algo.beta, algo.cliprange, algo.temperature) == (8, 0.01, 0.2, 0.7)
    assert algo.cliprange_high is None and algo.loss_type == "grpo"
    assert list(run.rewards) == ["letter_match"]
    assert cfg.algorithm.group_size == 8  # the same values in the DictConfig Hydra saves


def test_the_default_job_is_smollm2_grpo_on_arith_with_its_recipe():
    run, _ = preflight.load([])  # experiment: null is the default (`experiment=null` itself is not a Hydra override)
    assert run.model.name_or_path == "aligntune:smollm2-135m-instruct" and run.dataset.name == "arith"
    assert type(run.algorithm) is schema.GRPOAlgorithmConfig and list(run.rewards) == ["correctness"]
    # configs/tuning/smollm2_135m_grpo.yaml: LoRA, a CPU-sized step, and the before/after evaluation
    assert run.model.lora.enabled and run.eval.after_training and run.eval.temperature == 0
    assert run.train.batch_size * run.algorithm.group_size == 16 and run.train.max_steps == 12
    assert run.algorithm.cliprange == 0.2 and run.algorithm.max_completion_length == 32
    # The algorithm's documented defaults are still what the recipe starts from: an override beats the recipe.
    overridden = preflight.load(["algorithm.beta=0.01", "algorithm.temperature=0.7"])[0].algorithm
    assert (overridden.beta, overridden.temperature) == (0.01, 0.7)
    # Deselecting an experiment explicitly gives the same config.
    assert compose.load(["experiment=smoke", "~experiment"])[0] == run


def test_schema_defaults_match_the_grpo_yaml():
    """grpo.yaml restates the schema's GRPO defaults; they must not drift apart."""
    data = {k: v for k, v in _yaml("algorithm", "grpo").items() if k != "defaults"}
    default = schema.GRPOAlgorithmConfig()
    for key, value in data.items():
        assert getattr(default, key) == value, key


def test_seed_example_batch_size_2_with_group_size_8_is_valid():
    run, _ = preflight.load(["batch_size=2", "group_size=8"])
    assert run.train.batch_size * run.algorithm.group_size == 16
    run, _ = preflight.load(["batch_size=2", "group_size=8", "train.micro_batch_size=4"])
    assert run.train.micro_batch_size == 4


# --- wrong types and unknown keys ------------------------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("group_size=abc", "algorithm.group_size"),
    ("train.learning_rate=fast", "train.learning_rate"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("seed=x", "seed"),
    ("verbose=maybe", "verbose"),
    ("algorithm.mask_truncated_completions=sometimes", "algorithm.mask_truncated_completions"),
    ("rewards.letter_match.weight=heavy", "rewards.letter_match.weight"),
])
def test_wrong_type_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        compose.load([override])
    assert key in str(err.value)


@pytest.mark.parametrize("override,key", [
    ("foo=1", "foo"),
    ("+foo=1", "foo"),
    ("algorithm.foo=1", "algorithm.foo"),
    ("+algorithm.foo=1", "algorithm.foo"),
    ("+model.lora.foo=1", "model.lora.foo"),
    ("+rewards.new.wieght=1", "wieght"),
])
def test_unknown_key_is_refused_naming_it(override, key):
    with pytest.raises(ConfigError) as err:
        compose.load([override])
    assert key in str(err.value)


def test_new_reward_entry_is_accepted():
    run, _ = compose.load(["+rewards.new.weight=0.5"])
    assert run.rewards["new"] == schema.RewardConfig(fn=None, weight=0.5, args={})
    assert list(run.rewards) == ["correctness", "new"]  # the default job's reward, then the new one


def test_dict_valued_keys_take_new_entries():
    run, _ = compose.load(["+backend.trl_args.top_k=50", "+dataset.columns.prompt=question",
                           "+rewards.letter_match.args.letter=q"])
    assert run.backend.trl_args == {"top_k": 50}
    assert run.dataset.columns == {"prompt": "question"}
    assert run.rewards["letter_match"].args == {"letter": "q"}


# --- value and cross-field rules -------------------------------------------------------------------

def test_micro_batch_must_divide_the_step_and_the_message_lists_divisors():
    with pytest.raises(ConfigError) as err:
        compose.load(["batch_size=2", "group_size=8", "train.micro_batch_size=3"])
    msg = str(err.value)
    assert "train.micro_batch_size=3" in msg and "16 completions" in msg
    assert "[1, 2, 4, 8, 16]" in msg


def test_micro_batch_equal_to_the_step_is_valid():
    run, _ = compose.load(["batch_size=3", "group_size=4", "train.micro_batch_size=12"])
    assert run.train.micro_batch_size == 12


@pytest.fixture(scope="module")
def default_cfg():
    """A composed DictConfig (the tiny model's GRPO recipe); value rules are checked on copies by
    to_run_config (no Hydra)."""
    return compose.compose(["model=tiny", "dataset=letters"])


def _validate_with(cfg, **updates) -> schema.RunConfig:
    cfg = cfg.copy()
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return compose.to_run_config(cfg)


@pytest.mark.parametrize("updates,needle", [
    ({"algorithm.cliprange_high": 0.1}, "algorithm.cliprange_high=0.1 is below algorithm.cliprange=0.2"),
    ({"train.learning_rate": 0}, "train.learning_rate=0.0 must be greater than 0"),
    ({"train.learning_rate": -1}, "train.learning_rate=-1.0 must be greater than 0"),
    ({"algorithm.group_size": 1}, "algorithm.group_size=1 is too small"),
    ({"algorithm.group_size": 0}, "algorithm.group_size=0 is too small"),
    ({"algorithm.beta": -0.1}, "algorithm.beta=-0.1 is negative"),
    ({"algorithm.cliprange": 0}, "algorithm.cliprange=0.0"),
    ({"algorithm.temperature": 0}, "algorithm.temperature=0.0"),
    ({"algorithm.top_p": 0}, "algorithm.top_p=0.0"),
    ({"algorithm.loss_type": "ppo"}, "algorithm.loss_type='ppo'"),
    ({"algorithm.scale_rewards": "std"}, "algorithm.scale_rewards='std'"),
    ({"algorithm.importance_sampling_level": "seq"}, "algorithm.importance_sampling_level='seq'"),
    ({"algorithm.num_iterations": 0}, "algorithm.num_iterations=0"),
    ({"algorithm.max_completion_length": 0}, "algorithm.max_completion_length=0"),
    ({"train.micro_batch_size": 0}, "train.micro_batch_size=0"),
    ({"train.batch_size": 0}, "train.batch_size=0"),
    ({"train.warmup_ratio": 1.0}, "train.warmup_ratio=1.0"),
    ({"train.lr_scheduler": "cosine_with_restarts"}, "train.lr_scheduler"),
    ({"train.max_steps": 0}, "train.max_steps=0"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"model.dtype": "fp8"}, "model.dtype='fp8'"),
    ({"model.lora.save_merged": True}, "model.lora.save_merged=true, but LoRA is off"),
])
def test_invalid_value_is_refused(default_cfg, updates, needle):
    with pytest.raises(ConfigError) as err:
        _validate_with(default_cfg, **updates)
    assert needle in str(err.value)


def test_valid_edges_are_accepted(default_cfg):
    run = _validate_with(default_cfg, **{"algorithm.beta": 0.0, "algorithm.top_p": 1.0, "train.warmup_ratio": 0.0,
                                         "algorithm.group_size": 2, "train.micro_batch_size": 1})
    assert run.algorithm.group_size == 2 and run.algorithm.beta == 0.0


def test_micro_batch_rule_uses_the_composed_batch_and_group(default_cfg):
    # tiny x GRPO recipe: batch_size 4 x group_size 8 = 32 completions per step.
    with pytest.raises(ConfigError) as err:
        _validate_with(default_cfg, **{"train.micro_batch_size": 5})
    assert "[1, 2, 4, 8, 16, 32]" in str(err.value)
    assert _validate_with(default_cfg, **{"train.micro_batch_size": 32}).train.micro_batch_size == 32


def test_override_value_errors_come_through_composition_too():
    for overrides, needle in ((["group_size=1"], "algorithm.group_size=1"), (["learning_rate=-1"], "train.learning_rate")):
        with pytest.raises(ConfigError, match=needle):
            compose.load(overrides)


def test_online_algorithms_need_a_reward_checked_after_the_sources(default_cfg):
    run = _validate_with(default_cfg, rewards={})  # the schema alone accepts it ...
    with pytest.raises(ConfigError, match="at least one reward"):
        preflight.check(run)  # ... the preflight, after the model and dataset are found, does not
    with pytest.raises(ConfigError, match="at least one reward"):
        preflight.load(["~rewards.correctness"])  # the default job's only reward


def test_cliprange_high_at_or_above_cliprange_is_valid():
    run, _ = compose.load(["algorithm.cliprange_high=0.28"])
    assert run.algorithm.cliprange_high == 0.28


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose.load(["algorithm=grpoo"])
    msg = str(err.value)
    assert "algorithm=grpoo" in msg
    for option in _options("algorithm"):
        assert option in msg


# --- debug=smoke on top of an experiment -----------------------------------------------------------

DEMO_EXPERIMENT = """\
# @package _global_
# A stand-in for a team's real experiment: hub model and data, its own GRPO knobs and rewards.
defaults:
  - override /model: qwen3_0_6b
  - override /dataset: hh_rlhf
  - override /algorithm: grpo
algorithm:
  group_size: 4
  beta: 0.05
  temperature: 0.9
train:
  max_steps: 500
  batch_size: 8
  micro_batch_size: 8
rewards:
  extra:
    fn: letter_match
    weight: 0.3
"""


def _searchpath_with_demo(tmp_path: Path) -> str:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "demo.yaml").write_text(DEMO_EXPERIMENT)
    return f"hydra.searchpath=[file://{tmp_path}]"


def test_debug_smoke_shrinks_experiment_demo_keeping_data_rewards_algorithm(tmp_path):
    searchpath = _searchpath_with_demo(tmp_path)
    full, _ = compose.load([searchpath, "experiment=demo"])
    small, _ = compose.load([searchpath, "experiment=demo", "debug=smoke"])

    assert full.model.name_or_path == "Qwen/Qwen3-0.6B" and full.train.max_steps == 500
    assert small.model.name_or_path == "aligntune:tiny"
    assert small.train.max_steps is not None and small.train.max_steps <= 5
    assert small.train.micro_batch_size is None or (
        small.train.batch_size * small.algorithm.group_size) % small.train.micro_batch_size == 0
    assert small.dataset.name == full.dataset.name == "Anthropic/hh-rlhf"
    assert small.dataset.max_samples is not None and small.dataset.max_samples <= 64
    assert small.rewards == full.rewards and "extra" in small.rewards
    # The experiment's own GRPO knobs are kept; lengths it did not set come from the tiny x GRPO recipe.
    assert type(small.algorithm) is schema.GRPOAlgorithmConfig
    for key, value in {"group_size": 4, "beta": 0.05, "temperature": 0.9}.items():
        assert getattr(small.algorithm, key) == getattr(full.algorithm, key) == value, key


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_debug_smoke_shrinks_every_shipped_experiment(experiment):
    full, _ = compose.load([f"experiment={experiment}"])
    small, _ = compose.load([f"experiment={experiment}", "debug=smoke"])
    assert small.model.name_or_path == "aligntune:tiny"
    assert small.train.max_steps is not None and small.train.max_steps <= 5
    assert small.dataset.name == full.dataset.name
    assert small.rewards == full.rewards
    assert type(small.algorithm) is type(full.algorithm)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_shipped_experiment_trains_the_tiny_model(experiment):
    """The shipped experiments are seconds-long demos and CI runs on the tiny model. One that does not pick it
    inherits the default job's SmolLM2 (the pipeline stages did: 518 s instead of 14 s, with a learning rate
    sized for a random-init 100k-parameter model)."""
    run, _ = compose.load([f"experiment={experiment}"])
    assert run.model.name_or_path == "aligntune:tiny"


# --- the rewards group ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", _options("rewards"))
def test_rewards_group_is_selectable_as_group_equals_option(option):
    run, _ = compose.load([f"rewards={option}"])
    assert set(run.rewards) == set(_yaml("rewards", option)["rewards"])


# --- no torch ------------------------------------------------------------------------------------

def test_composing_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from aligntune.config import compose
        from aligntune import preflight
        preflight.load(["group_size=4", "experiment=smoke"])
        compose.load(["model=qwen3_0_6b"])
        print("torch" in sys.modules, "transformers" in sys.modules, "trl" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
