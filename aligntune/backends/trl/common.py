"""TrainingArguments fields every TRL trainer shares, mapped once from RunConfig."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError
from aligntune.models.loading import compute_precision, resolve_device
from aligntune.models.precision import low_precision_weights
from aligntune.run.trackers import report_args


def common_args(run: RunConfig, output_dir: str) -> dict:
    """transformers.TrainingArguments fields from `run.train`, `run.seed`, `run.model.dtype`, `run.device`."""
    t = run.train
    device = resolve_device(run.device)
    precision = compute_precision(run.model, device)
    return dict(
        output_dir=output_dir,
        seed=run.seed,
        data_seed=run.seed,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        # transformers' plain "constant" schedule ignores warmup; with warmup asked for, warm up then hold.
        lr_scheduler_type="constant_with_warmup" if t.lr_scheduler == "constant" and t.warmup_ratio > 0 else t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        **{_checkpointing_field(): t.gradient_checkpointing},
        logging_steps=t.logging_steps,
        # Compute precision (aligntune.models.precision): bf16 on a CPU runs on bf16 weights with fp32 master copies
        # in the optimizer, so no autocast; on CUDA it is the trainer's mixed precision (fp32 weights, bf16 autocast,
        # which DeepSpeed and FSDP understand). fp16 runs fp32 weights under autocast with loss scaling. (TRL's bf16
        # default is True: it must be set either way.)
        bf16=precision == "bf16" and not low_precision_weights(precision, device),
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        # Trackers (logger=...) through the Trainer's own report_to; output_dir is <run dir>/checkpoints.
        **report_args(run.logger, Path(output_dir).parent.name),
        disable_tqdm=not run.verbose,  # aligntune draws its own progress bar
        # Periodic checkpoints into <run dir>/checkpoints (written atomically: aligntune.run.checkpoints); with
        # save_strategy "no" a checkpoint is still written when the run is interrupted or diverges.
        save_strategy="steps" if t.save_steps is not None else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        log_level="info" if run.verbose else "warning",
    )


# TRL fields aligntune sets from its own keys (the rollout group, train.log_completions), and fields a TRL config
# accepts that must be set through aligntune's keys instead: backend.trl_args may not name them.
VLLM_FIELDS = {"rollout.engine": "use_vllm", "rollout.vllm.mode": "vllm_mode",
               "rollout.vllm.gpu_memory_utilization": "vllm_gpu_memory_utilization",
               "rollout.vllm.tensor_parallel_size": "vllm_tensor_parallel_size",
               "rollout.vllm.enable_sleep": "vllm_enable_sleep_mode", "rollout.vllm.server_host": "vllm_server_host",
               "rollout.vllm.server_port": "vllm_server_port", "rollout.vllm.server_timeout": "vllm_server_timeout",
               "train.log_completions": "log_completions"}
REDIRECTED = {"model_init_kwargs": "aligntune loads the model itself (trl_args.model_init_kwargs would be ignored): "
                                   "use model.dtype, model.attn_implementation, model.revision, model.quantization or "
                                   "model.trust_remote_code"}


def check_rollout_engine(run: RunConfig, device: str | None = None) -> None:
    """rollout.engine=vllm needs vllm installed (checked without torch) and a CUDA device (`device`, when known)."""
    import importlib.util

    if run.rollout.engine != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.engine=vllm generates rollouts with vLLM, which is not installed.",
                          "Install it on a CUDA machine (pip install 'aligntune[vllm]'), or drop rollout.engine (hf).")
    if device is not None and device != "cuda":
        raise ConfigError(f"rollout.engine=vllm runs vLLM on CUDA GPUs, and this run is on {device}.",
                          "Drop rollout.engine on this machine (hf: transformers' generate runs everywhere).")


def rollout_engine_args(run: RunConfig) -> dict:
    """GRPOConfig/RLOOConfig fields of the rollout group (TRL's vLLM generation) and train.log_completions."""
    v = run.rollout.vllm
    args = {"use_vllm": run.rollout.engine == "vllm", "log_completions": run.train.log_completions}
    if run.rollout.engine == "vllm":
        args.update(vllm_mode=v.mode, vllm_gpu_memory_utilization=v.gpu_memory_utilization,
                    vllm_tensor_parallel_size=v.tensor_parallel_size, vllm_enable_sleep_mode=v.enable_sleep,
                    vllm_server_host=v.server_host, vllm_server_port=v.server_port,
                    vllm_server_timeout=v.server_timeout)
    return args


def step_batches(run: RunConfig, world_size: int, unit: str) -> dict:
    """Batch fields of the trainers that step on `train.batch_size` items (pairs, sequences): the per-device
    micro-batch (train and eval) and the gradient accumulation that makes up one optimizer step."""
    micro, accumulation = micro_batches(run.train.batch_size, run.train.micro_batch_size, world_size, unit)
    return {"per_device_train_batch_size": micro, "per_device_eval_batch_size": micro,
            "gradient_accumulation_steps": accumulation}


def micro_batches(batch_size: int, micro: int | None, world_size: int, unit: str) -> tuple[int, int]:
    """(per-device micro-batch, gradient accumulation steps) for `batch_size` items per optimizer step."""
    micro = micro or max(1, batch_size // world_size)
    if batch_size % (micro * world_size):
        raise ConfigError(f"The {batch_size} {unit} of one step cannot be split into micro-batches of "
                          f"{micro} on {world_size} process(es).",
                          "Choose train.micro_batch_size so that micro_batch_size x processes divides train.batch_size.")
    return micro, batch_size // (micro * world_size)


def _checkpointing_field() -> str:
    """transformers renamed gradient_checkpointing to activation_checkpointing (the old name warns)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def held_out_schedule(run: RunConfig, has_eval: bool) -> dict:
    """eval_strategy/eval_steps: evaluate every train.eval_steps when there are held-out rows."""
    periodic = has_eval and run.train.eval_steps is not None
    return {"eval_strategy": "steps" if periodic else "no", "eval_steps": run.train.eval_steps if periodic else None}


def with_trl_args(config_name: str, args: dict, run: RunConfig, mapped: set[str]) -> dict:
    """`args` plus backend.trl_args, each checked against trl.<config_name>'s real fields and refused if
    aligntune already maps it (`mapped`, or any key in `args`)."""
    import trl

    fields = {f.name for f in dataclasses.fields(getattr(trl, config_name))}
    check_trl_args(config_name, fields, run.backend.trl_args, mapped | set(args) | set(VLLM_FIELDS.values()))
    return {**args, **run.backend.trl_args}


def make_config(config_name: str, args: dict, what: str):
    """trl.<config_name>(**args), with TRL's own value checks reported as a ConfigError."""
    import trl

    try:
        return getattr(trl, config_name)(**args)
    except ValueError as exc:  # TRL's own checks, e.g. on a trl_args value
        raise ConfigError(f"TRL rejected the {what} configuration: {exc}", "Adjust the named setting.") from exc


def check_trl_args(config_name: str, fields: set[str], trl_args: dict, mapped: set[str]) -> None:
    """backend.trl_args may only name real fields of the TRL config, and none that aligntune maps itself."""
    for key in trl_args:
        if key in REDIRECTED:
            raise ConfigError(f"backend.trl_args.{key} is not passed to TRL: {REDIRECTED[key]}.",
                              "Set those model.* keys instead (`aligntune train --cfg job` lists them).")
        if key not in fields:
            near = difflib.get_close_matches(key, sorted(fields), n=3)
            raise ConfigError(f"backend.trl_args.{key} is not a field of trl.{config_name}.",
                              f"{'Did you mean ' + ', '.join(near) + '? ' if near else ''}See TRL's {config_name} "
                              "documentation for its fields.")
        if key in mapped:
            raise ConfigError(f"backend.trl_args.{key} sets a field that aligntune already maps from its own config.",
                              "Set it through the aligntune key instead (`aligntune train --cfg job` lists them), so "
                              "there is one place for each setting.")
