"""The launch files of `distributed=<strategy>`: accelerate's config YAML (and DeepSpeed's JSON).

Each preset is what accelerate's own `accelerate config` questionnaire would write for that strategy,
so `accelerate launch --config_file <it>` runs it and a user can edit it by hand. Batch sizes,
gradient accumulation, clipping and precision are NOT repeated in the DeepSpeed JSON: they are "auto",
which transformers fills from the TrainingArguments aligntune maps from `train.*` (one source for each
setting, as transformers' DeepSpeed integration intends).

    ddp               distributed_type MULTI_GPU (on a machine without GPUs: the same file, gloo on CPU)
    fsdp              distributed_type FSDP, FSDP2, transformer-block wrapping, full state dict on save
    deepspeed_zero2   distributed_type DEEPSPEED + ZeRO stage 2 (optimizer state and gradients sharded)
    deepspeed_zero3   distributed_type DEEPSPEED + ZeRO stage 3 (parameters too; 16-bit weights gathered on save)

With distributed.config_file (a user's accelerate file or a TRL preset) that file is launched instead: `copy`
writes it into the run directory as it is, but for num_processes, the count aligntune's batch checks used.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from aligntune.config.schema import RunConfig

ACCELERATE_FILE = "accelerate_config.yaml"
DEEPSPEED_FILE = "deepspeed_config.json"
DISTRIBUTED_TYPES = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


def mixed_precision(run: RunConfig) -> str:
    """accelerate's mixed_precision from model.dtype (auto: bf16 where the GPUs have it, decided at run time)."""
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}.get(run.model.dtype, "no")


def deepspeed_config(run: RunConfig) -> dict:
    """DeepSpeed's JSON for ZeRO stage 2 or 3; the "auto" values come from the TrainingArguments."""
    stage = 3 if run.distributed.strategy == "deepspeed_zero3" else 2
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto", "offload_optimizer": {"device": "none"}}
    if stage == 3:
        zero.update(offload_param={"device": "none"}, stage3_prefetch_bucket_size="auto",
                    stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)  # the final model/ is a plain HF checkpoint
    else:
        zero.update(allgather_partitions=True, reduce_scatter=True)
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # aligntune logs the metrics itself
        "wall_clock_breakdown": False,
    }


def accelerate_config(run: RunConfig, deepspeed_file: str | None = None) -> dict:
    """The accelerate config file's fields for `run.distributed` (accelerate's ClusterConfig names)."""
    d = run.distributed
    cfg: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": DISTRIBUTED_TYPES[d.strategy],
        "num_processes": d.num_processes,
        "num_machines": d.num_machines,
        "machine_rank": d.machine_rank,
        "main_process_ip": d.main_process_ip,
        "main_process_port": d.main_process_port,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "use_cpu": run.device == "cpu",
        "debug": False,
        "downcast_bf16": "no",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if d.strategy == "fsdp":
        cfg["mixed_precision"] = mixed_precision(run)
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # wraps the model's _no_split_modules (decoder layers)
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # the final model/ is a plain HF checkpoint
            "fsdp_activation_checkpointing": run.train.gradient_checkpointing,
        }
    elif d.strategy.startswith("deepspeed"):
        # With a DeepSpeed JSON, precision lives in the JSON ("auto": from the TrainingArguments), not here.
        cfg["deepspeed_config"] = {
            "deepspeed_config_file": deepspeed_file,
            "zero3_init_flag": d.strategy == "deepspeed_zero3",
            **({"deepspeed_multinode_launcher": "standard"} if d.num_machines > 1 else {}),
        }
    else:
        cfg["mixed_precision"] = mixed_precision(run)
    return cfg


def write(run: RunConfig, directory: str | Path) -> Path:
    """Write the launch files into `directory`; returns the accelerate config file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ds_file = None
    if run.distributed.strategy.startswith("deepspeed"):
        ds_path = directory / DEEPSPEED_FILE
        ds_path.write_text(json.dumps(deepspeed_config(run), indent=2) + "\n", encoding="utf-8")
        ds_file = str(ds_path.resolve())
    path = directory / ACCELERATE_FILE
    path.write_text(yaml.safe_dump(accelerate_config(run, ds_file), sort_keys=False), encoding="utf-8")
    return path


def copy(run: RunConfig, directory: str | Path) -> Path:
    """distributed.config_file, copied into `directory` with the run's process count; returns the copy."""
    from aligntune.config.accelerate_file import read

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fields = {**read(run.distributed.config_file)[2], "num_processes": run.distributed.num_processes}
    path = directory / ACCELERATE_FILE
    path.write_text(yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return path
