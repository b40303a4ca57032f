"""The one mapping from RunConfig to trl.GRPOConfig, key by key (no model, no training).

`grpo_args` is pure: it returns GRPOConfig's keyword arguments. A few tests build the real
`trl.GRPOConfig` so TRL's own derived fields (generation batch, steps per generation) are checked.
"""

from __future__ import annotations

import dataclasses

import pytest

from aligntune import preflight
from aligntune.backends.trl import common
from aligntune.backends.trl.grpo import MAPPED_FIELDS, grpo_args, to_grpo_config
from aligntune.config import compose, schema
from aligntune.errors import ConfigError

OUT = "/nonexistent/aligntune-test-output"  # grpo_args never touches it


def make_run(algorithm: dict | None = None, train: dict | None = None, rewards: dict | None = None,
             dtype: str = "fp32", device: str = "cpu", **run_fields) -> schema.RunConfig:
    """A RunConfig built from the schemas directly (the validation in __post_init__ still runs)."""
    return schema.RunConfig(
        model=schema.ModelConfig(name_or_path="aligntune:tiny", dtype=dtype),
        dataset=run_fields.pop("dataset", schema.DatasetConfig(name="letters")),
        algorithm=schema.GRPOAlgorithmConfig(**(algorithm or {})),
        train=schema.TrainConfig(**(train or {})),
        rewards=rewards if rewards is not None else {"letter_match": {"weight": 1.0}},
        device=device,
        **run_fields,
    )


def args_for(**kw) -> dict:
    return grpo_args(make_run(**kw), OUT)


# --- algorithm keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,trl_key", [
    ("group_size", 4, "num_generations"),
    ("group_size", 16, "num_generations"),
    ("beta", 0.0, "beta"),
    ("beta", 0.04, "beta"),
    ("cliprange", 0.3, "epsilon"),
    ("cliprange_high", 0.28, "epsilon_high"),
    ("cliprange_high", None, "epsilon_high"),
    ("temperature", 1.0, "temperature"),
    ("top_p", 0.9, "top_p"),
    ("max_completion_length", 32, "max_completion_length"),
    ("num_iterations", 2, "num_iterations"),
    ("loss_type", "dr_grpo", "loss_type"),
    ("loss_type", "dapo", "loss_type"),
    ("scale_rewards", "none", "scale_rewards"),
    ("scale_rewards", "batch", "scale_rewards"),
    ("importance_sampling_level", "sequence", "importance_sampling_level"),
    ("mask_truncated_completions", True, "mask_truncated_completions"),
])
def test_algorithm_key(field, value, trl_key):
    assert args_for(algorithm={field: value})[trl_key] == value


def test_the_default_algorithm_maps_to_the_seed_values():
    args = args_for()
    assert (args["num_generations"], args["beta"], args["epsilon"], args["temperature"]) == (8, 0.01, 0.2, 0.7)
    assert args["epsilon_high"] is None and args["loss_type"] == "grpo"


@pytest.mark.parametrize("shuffle", [True, False])
def test_dataset_shuffle_maps_to_shuffle_dataset(shuffle):
    run = make_run(dataset=schema.DatasetConfig(name="letters", shuffle=shuffle))
    assert grpo_args(run, OUT)["shuffle_dataset"] is shuffle


def test_reward_weights_follow_the_order_of_rewards():
    rewards = {"zeta": {"fn": "letter_match", "weight": 0.5}, "alpha": {"fn": "letter_match", "weight": 2.0},
               "letter_match": {"weight": 1}}
    assert args_for(rewards=rewards)["reward_weights"] == [0.5, 2.0, 1.0]


def test_reward_weights_from_composition_keep_the_override_order():
    run, _ = compose.load(["dataset=letters", "+rewards.zeta.fn=letter_match", "+rewards.zeta.weight=0.5",
                           "+rewards.alpha.fn=letter_match", "+rewards.alpha.weight=2", "rewards.letter_match.weight=0.1"])
    assert list(run.rewards) == ["letter_match", "zeta", "alpha"]
    assert grpo_args(run, OUT)["reward_weights"] == [0.1, 0.5, 2.0]


# --- train keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,trl_key,expected", [
    ("learning_rate", 1e-5, "learning_rate", 1e-5),
    ("num_epochs", 3.0, "num_train_epochs", 3.0),
    ("max_steps", 7, "max_steps", 7),
    ("max_steps", None, "max_steps", -1),
    ("lr_scheduler", "cosine", "lr_scheduler_type", "cosine"),
    ("lr_scheduler", "linear", "lr_scheduler_type", "linear"),
    ("warmup_ratio", 0.1, "warmup_steps", 0.1),  # a float < 1 is a ratio of the total steps for transformers
    ("weight_decay", 0.01, "weight_decay", 0.01),
    ("max_grad_norm", 0.5, "max_grad_norm", 0.5),
    ("logging_steps", 5, "logging_steps", 5),
])
def test_train_key(field, value, trl_key, expected):
    assert args_for(train={field: value})[trl_key] == expected


@pytest.mark.parametrize("on", [True, False])
def test_gradient_checkpointing(on):
    args = args_for(train={"gradient_checkpointing": on})
    key = common._checkpointing_field()
    assert key in ("activation_checkpointing", "gradient_checkpointing")
    assert args[key] is on


@pytest.mark.parametrize("seed", [0, 42, 1234])
def test_seed(seed):
    args = grpo_args(make_run(seed=seed), OUT)
    assert args["seed"] == seed and args["data_seed"] == seed


# bf16 on a CPU runs on bf16 weights with fp32 master copies (models/precision.py), never TRL's autocast; fp16 is
# autocast. On CUDA bf16 is the trainer's own mixed precision (autocast over fp32 weights; DeepSpeed/FSDP coherent).
@pytest.mark.parametrize("dtype,bf16,fp16", [("fp32", False, False), ("bf16", False, False), ("fp16", False, True),
                                             ("auto", False, False)])
def test_dtype_on_cpu(monkeypatch, dtype, bf16, fp16):
    from aligntune.models import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # auto on a CPU without bf16: fp32
    args = args_for(dtype=dtype, device="cpu")
    assert (args["bf16"], args["fp16"]) == (bf16, fp16)
    assert args["use_cpu"] is True


@pytest.mark.parametrize("bf16_supported,bf16,fp16", [(True, True, False), (False, False, True)])
def test_auto_device_and_dtype_on_a_gpu(monkeypatch, bf16_supported, bf16, fp16):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    args = args_for(dtype="auto", device="auto")
    assert args["use_cpu"] is False
    assert (args["bf16"], args["fp16"]) == (bf16, fp16)


def test_auto_device_without_gpu_uses_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert args_for(device="auto")["use_cpu"] is True


def test_output_dir_and_engine_housekeeping():
    args = args_for()
    assert args["output_dir"] == OUT
    assert args["report_to"] == "none" and args["save_strategy"] == "no"
    assert args["log_completions"] is False


# --- batch arithmetic ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch,group,micro,per_device,accumulation", [
    (2, 8, 4, 4, 4),
    (2, 8, None, 16, 1),
    (2, 8, 16, 16, 1),
    (2, 8, 1, 1, 16),
    (4, 8, 8, 8, 4),
    (3, 4, 6, 6, 2),
])
def test_batch_arithmetic(batch, group, micro, per_device, accumulation):
    args = args_for(algorithm={"group_size": group}, train={"batch_size": batch, "micro_batch_size": micro})
    assert args["per_device_train_batch_size"] == per_device
    assert args["gradient_accumulation_steps"] == accumulation
    assert args["num_generations"] == group
    assert per_device * accumulation == batch * group  # one step = batch x group completions


@pytest.mark.parametrize("micro,world,expected", [(None, 2, (8, 1)), (4, 2, (4, 2)), (2, 4, (2, 2))])
def test_batch_arithmetic_across_processes(micro, world, expected):
    run = make_run(algorithm={"group_size": 8}, train={"batch_size": 2, "micro_batch_size": micro})
    args = grpo_args(run, OUT, world_size=world)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == expected


def test_micro_batch_that_cannot_split_across_processes_is_refused():
    run = make_run(algorithm={"group_size": 8}, train={"batch_size": 2, "micro_batch_size": 16})
    with pytest.raises(ConfigError, match="cannot be split"):
        grpo_args(run, OUT, world_size=2)


@pytest.mark.parametrize("micro", [4, None])
def test_to_grpo_config_builds_a_real_grpo_config(micro):
    from trl import GRPOConfig

    run = make_run(algorithm={"group_size": 8, "cliprange_high": 0.28},
                   train={"batch_size": 2, "micro_batch_size": micro, "gradient_checkpointing": True})
    config = to_grpo_config(run, OUT)
    assert isinstance(config, GRPOConfig)
    assert config.generation_batch_size == run.train.batch_size * run.algorithm.group_size == 16
    args = grpo_args(run, OUT)
    assert config.per_device_train_batch_size == args["per_device_train_batch_size"]
    assert config.gradient_accumulation_steps == args["gradient_accumulation_steps"]
    assert config.steps_per_generation == config.gradient_accumulation_steps  # one generation round per step
    assert config.num_generations == 8 and config.epsilon == 0.2 and config.epsilon_high == 0.28
    assert config.gradient_checkpointing is True
    assert config.use_cpu is True and config.bf16 is False and config.fp16 is False


def test_to_grpo_config_from_the_default_composition():
    run, _ = preflight.load([])
    config = to_grpo_config(run, OUT)
    assert config.generation_batch_size == run.train.batch_size * run.algorithm.group_size
    assert config.reward_weights == [1.0] and config.max_steps == run.train.max_steps


def test_grpo_args_refuses_a_non_grpo_config():
    run, _ = compose.load(["algorithm=dpo"])
    with pytest.raises(TypeError):
        grpo_args(run, OUT)


# --- backend.trl_args ----------------------------------------------------------------------------

def test_trl_args_real_field_passes_through():
    run = make_run(backend=schema.BackendConfig(name="trl", trl_args={"top_k": 50, "repetition_penalty": 1.1}))
    args = grpo_args(run, OUT)
    assert args["top_k"] == 50 and args["repetition_penalty"] == 1.1
    config = to_grpo_config(run, OUT)
    assert config.top_k == 50 and config.repetition_penalty == 1.1


def test_trl_args_from_the_command_line():
    run, _ = compose.load(["+backend.trl_args.top_k=50"])
    assert grpo_args(run, OUT)["top_k"] == 50


def test_trl_args_unknown_field_suggests_the_real_one():
    run = make_run(backend=schema.BackendConfig(trl_args={"top_kk": 50}))
    with pytest.raises(ConfigError) as err:
        grpo_args(run, OUT)
    msg = str(err.value)
    assert "backend.trl_args.top_kk" in msg and "GRPOConfig" in msg
    assert "Did you mean" in msg and "top_k" in msg


@pytest.mark.parametrize("field", sorted(set(MAPPED_FIELDS.values()) | {"learning_rate", "per_device_train_batch_size",
                                                                         "gradient_accumulation_steps", "seed"}))
def test_trl_args_may_not_set_a_mapped_field(field):
    run = make_run(backend=schema.BackendConfig(trl_args={field: 1}))
    with pytest.raises(ConfigError, match="already maps"):
        grpo_args(run, OUT)


def test_trl_rejection_becomes_a_config_error():
    # generation_batch_size must be a multiple of num_generations (TRL's own check).
    run = make_run(algorithm={"group_size": 8}, backend=schema.BackendConfig(trl_args={"generation_batch_size": 12}))
    with pytest.raises(ConfigError, match="TRL rejected"):
        to_grpo_config(run, OUT)


# --- every config field reaches GRPOConfig (no silent no-op keys) -----------------------------------

BASE = dict(algorithm={"group_size": 8}, train={"batch_size": 2})

# field -> (a different valid value, the GRPOConfig key it must change)
ALGORITHM_VARIATIONS = {
    "group_size": (4, "num_generations"),
    "beta": (0.0, "beta"),
    "cliprange": (0.3, "epsilon"),
    "cliprange_high": (0.3, "epsilon_high"),
    "temperature": (1.0, "temperature"),
    "top_p": (0.9, "top_p"),
    "max_completion_length": (32, "max_completion_length"),
    "num_iterations": (2, "num_iterations"),
    "loss_type": ("dr_grpo", "loss_type"),
    "scale_rewards": ("batch", "scale_rewards"),
    "importance_sampling_level": ("sequence", "importance_sampling_level"),
    "mask_truncated_completions": (True, "mask_truncated_completions"),
    "kl_estimator": ("k3_is", "use_bias_correction_kl"),
    "num_mini_batches": (2, "steps_per_generation"),
    "overlong_buffer": (4, "reward_weights"),  # adds DAPO's overlong punishment as one more reward
}
TRAIN_VARIATIONS = {
    "batch_size": (3, "per_device_train_batch_size"),
    "micro_batch_size": (4, "per_device_train_batch_size"),
    "learning_rate": (1e-5, "learning_rate"),
    "num_epochs": (2.0, "num_train_epochs"),
    "max_steps": (5, "max_steps"),
    "lr_scheduler": ("cosine", "lr_scheduler_type"),
    "warmup_ratio": (0.1, "warmup_steps"),
    "weight_decay": (0.01, "weight_decay"),
    "max_grad_norm": (0.5, "max_grad_norm"),
    "gradient_checkpointing": (True, "<checkpointing field>"),  # resolved in the test (transformers version)
    "logging_steps": (5, "logging_steps"),
    "eval_steps": (10, "eval_steps"),
    "save_steps": (10, "save_strategy"),
    "save_total_limit": (5, "save_total_limit"),
    "log_completions": (True, "log_completions"),
}
# Fields that legitimately do not reach GRPOConfig, with where they are used instead.
NOT_MAPPED = {
    ("algorithm", "name"): "selects the schema and the engine (core/registry.BACKENDS); grpo_args refuses non-GRPO",
    ("train", "log_samples"): "aligntune's own RunRecorder writes that many completions to samples.jsonl",
    ("train", "on_nonfinite"): "aligntune's NonFiniteGuard callback (aligntune/run/guards.py, tests/run/test_reliability.py)",
    ("train", "shared_prefix"): "routes the built trainer's scoring (backends/trl/shared_prefix.py, tests/backends/trl/test_shared_prefix.py)",
    ("train", "keep_freed_memory"): "the job tunes the process's allocator (run/memory.py, tests/run/test_memory.py)",
    ("algorithm", "variant"): "records the preset (configs/algorithm/<variant>.yaml); its settings are the other fields",
    ("algorithm", "overlong_penalty"): "scales the reward grpo.overlong_reward builds (tests/backends/trl/test_grpo_variants.py)",
    ("algorithm", "dynamic_sampling"): "grpo.build picks DynamicSamplingGRPOTrainer (tests/backends/trl/test_grpo_variants.py)",
    ("algorithm", "dynamic_sampling_max_retries"): "that trainer's retry bound (tests/backends/trl/test_grpo_variants.py)",
}
SILENT_NO_OPS: dict = {}  # (group, field) -> reason; empty: every field reaches grpo_args


def test_the_variation_tables_cover_every_field():
    algo_fields = {f.name for f in dataclasses.fields(schema.GRPOAlgorithmConfig)}
    train_fields = {f.name for f in dataclasses.fields(schema.TrainConfig)}
    assert algo_fields == set(ALGORITHM_VARIATIONS) | {n for g, n in NOT_MAPPED if g == "algorithm"}, \
        "a GRPOAlgorithmConfig field was added or removed: add it to ALGORITHM_VARIATIONS or NOT_MAPPED"
    assert train_fields == set(TRAIN_VARIATIONS) | {n for g, n in NOT_MAPPED if g == "train"}, \
        "a TrainConfig field was added or removed: add it to TRAIN_VARIATIONS or NOT_MAPPED"


def _field_params():
    for group, table in (("algorithm", ALGORITHM_VARIATIONS), ("train", TRAIN_VARIATIONS)):
        for name, (value, key) in table.items():
            marks = [pytest.mark.xfail(strict=True, reason=SILENT_NO_OPS[(group, name)])] \
                if (group, name) in SILENT_NO_OPS else []
            yield pytest.param(group, name, value, key, id=f"{group}.{name}", marks=marks)


@pytest.mark.parametrize("group,name,value,key", list(_field_params()))
def test_every_field_influences_grpo_args(group, name, value, key):
    if key == "<checkpointing field>":
        key = common._checkpointing_field()
    base_run = make_run(**BASE)
    base = grpo_args(base_run, OUT, has_eval=True)  # has_eval: so the held-out keys (train.eval_steps) can show
    section = getattr(base_run, group)
    assert getattr(section, name) != value, "the variation must differ from the base value"
    changed_section = dataclasses.replace(section, **{name: value})  # re-runs the schema's checks
    try:
        changed = grpo_args(dataclasses.replace(base_run, **{group: changed_section}), OUT, has_eval=True)
    except ConfigError as err:  # refused out loud, naming the key: not a silent no-op either
        assert f"{group}.{name}" in str(err)
        return
    assert changed != base, f"{group}.{name}={value!r} left every GRPOConfig argument unchanged"
    assert changed.get(key) != base.get(key), f"{group}.{name} did not change GRPOConfig.{key}"


@pytest.mark.parametrize("field,value", [("seed", 7), ("device", "auto"), ("verbose", True)])
def test_run_level_fields_influence_grpo_args(monkeypatch, field, value):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # so device=auto differs from device=cpu
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    base_run = make_run(device="cpu", dtype="auto", **BASE)
    changed = grpo_args(dataclasses.replace(base_run, **{field: value}), OUT)
    assert changed != grpo_args(base_run, OUT)


# --- warmup actually warms up ----------------------------------------------------------------------

def _first_step_lr(run: schema.RunConfig) -> float:
    """The learning rate of the first optimizer step under the scheduler transformers builds from the config."""
    import torch
    from transformers import get_scheduler

    config = to_grpo_config(run, OUT)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    steps = config.max_steps
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.get_warmup_steps(steps),
                              num_training_steps=steps)
    return scheduler.get_last_lr()[0]


@pytest.mark.parametrize("scheduler", [
    "constant_with_warmup",
    "linear",
    "cosine",
    "constant",
])
def test_warmup_ratio_warms_up(scheduler):
    try:
        run = make_run(train={"lr_scheduler": scheduler, "warmup_ratio": 0.2, "max_steps": 10, "learning_rate": 1e-3})
        lr = _first_step_lr(run)
    except ConfigError as err:  # refusing the combination out loud is fine too
        assert "warmup" in str(err)
        return
    assert lr < 1e-3
