"""GRPO on TRL: the ONE mapping from RunConfig to `trl.GRPOConfig`, and the trainer build.

Batch arithmetic (global, per optimizer step): `train.batch_size` prompts, each sampled
`algorithm.group_size` times, so one step generates and learns from B x G completions. TRL
counts completions per device and forward pass (`per_device_train_batch_size`), so we pass the
micro-batch there and accumulate B x G / (micro x world) micro-batches per step. TRL then sets
`steps_per_generation` = accumulation steps, so exactly one generation round feeds each step.
"""

from __future__ import annotations

import dataclasses

from aligntune.backends.trl.common import check_trl_args, common_args, micro_batches
from aligntune.config.schema import GRPOAlgorithmConfig, RunConfig
from aligntune.errors import ConfigError

# aligntune key -> the GRPOConfig field it sets; trl_args may not set these a second way.
MAPPED_FIELDS = {
    "algorithm.group_size": "num_generations",
    "algorithm.beta": "beta",
    "algorithm.cliprange": "epsilon",
    "algorithm.cliprange_high": "epsilon_high",
    "algorithm.temperature": "temperature",
    "algorithm.top_p": "top_p",
    "algorithm.max_completion_length": "max_completion_length",
    "algorithm.num_iterations": "num_iterations",
    "algorithm.loss_type": "loss_type",
    "algorithm.scale_rewards": "scale_rewards",
    "algorithm.importance_sampling_level": "importance_sampling_level",
    "algorithm.mask_truncated_completions": "mask_truncated_completions",
    "dataset.shuffle": "shuffle_dataset",
    "train.eval_steps": "eval_steps",
    "rewards.<name>.weight": "reward_weights",
}


def grpo_args(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False) -> dict:
    """The keyword arguments of `trl.GRPOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, GRPOAlgorithmConfig):
        raise TypeError(f"grpo_args needs a GRPO config, got {type(algo).__name__}")
    # One step's completions: train.batch_size prompts x algorithm.group_size samples each.
    completions = run.train.batch_size * algo.group_size
    micro, accumulation = micro_batches(completions, run.train.micro_batch_size, world_size, "completions")
    args = common_args(run, output_dir)
    args.update(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_generations=algo.group_size,
        beta=algo.beta,
        epsilon=algo.cliprange,
        epsilon_high=algo.cliprange_high,
        temperature=algo.temperature,
        top_p=algo.top_p,
        max_completion_length=algo.max_completion_length,
        num_iterations=algo.num_iterations,
        loss_type=algo.loss_type,
        scale_rewards=algo.scale_rewards,
        importance_sampling_level=algo.importance_sampling_level,
        mask_truncated_completions=algo.mask_truncated_completions,
        shuffle_dataset=run.dataset.shuffle,
        reward_weights=[r.weight for r in run.rewards.values()],
        log_completions=False,  # aligntune writes samples.jsonl itself; TRL's printer would flood the console
        # Held-out prompts: generated and scored like training ones (eval_reward); an eval batch holds whole groups.
        eval_strategy="steps" if has_eval and run.train.eval_steps else "no",
        eval_steps=run.train.eval_steps if has_eval and run.train.eval_steps else None,
        per_device_eval_batch_size=algo.group_size * max(1, micro // algo.group_size),
    )
    check_trl_args("GRPOConfig", _grpo_fields(), run.backend.trl_args, set(MAPPED_FIELDS.values()) | set(args))
    args.update(run.backend.trl_args)
    return args


def _grpo_fields() -> set[str]:
    from trl import GRPOConfig

    return {f.name for f in dataclasses.fields(GRPOConfig)}


def to_grpo_config(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False):
    from trl import GRPOConfig

    try:
        return GRPOConfig(**grpo_args(run, output_dir, world_size, has_eval))
    except ValueError as exc:  # TRL's own checks, e.g. on a trl_args value
        raise ConfigError(f"TRL rejected the GRPO configuration: {exc}", "Adjust the named setting.") from exc


def build(run: RunConfig, job) -> object:
    """A `trl.GRPOTrainer` for `run`, wired to the job's callbacks and reward recorder."""
    from trl import GRPOTrainer

    train, held_out = job.prompt_splits()
    args = to_grpo_config(run, str(job.checkpoint_dir), has_eval=held_out is not None)
    reward_funcs = job.reward_functions()
    model, peft_config = job.load_policy()
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train, eval_dataset=held_out,
                       processing_class=job.tokenizer, peft_config=peft_config, callbacks=job.callbacks)
