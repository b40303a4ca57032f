"""GRPO on TRL: the ONE mapping from RunConfig to `trl.GRPOConfig`, and the trainer build.

Batch arithmetic (global): one rollout samples `train.batch_size` prompts, each `algorithm.group_size`
times, and is split into `algorithm.num_mini_batches` optimizer steps (1 by default: one step learns
from B x G completions). TRL counts completions per device and forward pass
(`per_device_train_batch_size`), so we pass the micro-batch there, accumulate the rest of a step, and
set `steps_per_generation` = accumulation steps x mini-batches, so one generation round feeds them.

The variants (configs/algorithm/{dr_grpo,dapo,gspo}.yaml) are GRPO configs too and map here. Two of
their techniques are aligntune's, on top of TRL: DAPO's soft overlong punishment (`overlong_reward`,
added to the rewards when `algorithm.overlong_buffer` is set) and dynamic sampling
(`dynamic_sampling.DynamicSamplingGRPOTrainer`, when `algorithm.dynamic_sampling` is true).
"""

from __future__ import annotations

from collections.abc import Callable

from aligntune.backends.trl.common import (
    VLLM_FIELDS,
    common_args,
    held_out_schedule,
    make_config,
    micro_batches,
    rollout_engine_args,
    with_trl_args,
)
from aligntune.config.schema import GRPOAlgorithmConfig, RunConfig
from aligntune.core.inputs import BuildInputs, Built
from aligntune.errors import ConfigError

# aligntune key -> the GRPOConfig field it sets; trl_args may not set these a second way.
MAPPED_FIELDS = {
    "algorithm.group_size": "num_generations",
    "algorithm.beta": "beta",
    "algorithm.kl_estimator": "use_bias_correction_kl",
    "algorithm.cliprange": "epsilon",
    "algorithm.cliprange_high": "epsilon_high",
    "algorithm.temperature": "temperature",
    "algorithm.top_p": "top_p",
    "algorithm.max_completion_length": "max_completion_length",
    "algorithm.num_iterations": "num_iterations",
    "algorithm.num_mini_batches": "steps_per_generation",
    "algorithm.loss_type": "loss_type",
    "algorithm.scale_rewards": "scale_rewards",
    "algorithm.importance_sampling_level": "importance_sampling_level",
    "algorithm.mask_truncated_completions": "mask_truncated_completions",
    "algorithm.overlong_buffer": "reward_weights",
    "dataset.shuffle": "shuffle_dataset",
    "train.eval_steps": "eval_steps",
    "rewards.<name>.weight": "reward_weights",
    **VLLM_FIELDS,
}
OVERLONG = "overlong"  # the name DAPO's overlong punishment runs under (metrics: rewards/overlong/mean)
MIN_STEP_COMPLETIONS = 16  # with num_mini_batches > 1, fewer completions per optimizer step than this are warned about


def rollout_batches(run: RunConfig, world_size: int = 1) -> tuple[int, int, int]:
    """(per-device micro-batch, accumulation steps, steps per generation) for a group-sampling algorithm."""
    algo = run.algorithm
    rollout = run.train.batch_size * algo.group_size  # completions per rollout; num_mini_batches divides it (schema)
    micro, accumulation = micro_batches(rollout // algo.num_mini_batches, run.train.micro_batch_size, world_size,
                                        "completions")
    return micro, accumulation, accumulation * algo.num_mini_batches


def small_step_warning(run: RunConfig) -> str | None:
    """The warning for a rollout split into optimizer steps of fewer than MIN_STEP_COMPLETIONS completions, or None.

    `algorithm.num_mini_batches` is a count of steps per rollout, not a size: DAPO's 16 holds 512 completions a
    step in the paper (512 prompts x 16 samples / 16) but 2 at train.batch_size=2. Pure; builds log it once."""
    algo = run.algorithm
    minis = getattr(algo, "num_mini_batches", 1)
    if not hasattr(algo, "group_size") or minis <= 1:
        return None
    batch, group = run.train.batch_size, algo.group_size
    rollout = batch * group
    per_step = rollout // minis
    if per_step >= MIN_STEP_COMPLETIONS:
        return None
    larger = next(b for b in range(batch, batch + MIN_STEP_COMPLETIONS * minis + 1)
                  if (b * group) % minis == 0 and b * group // minis >= MIN_STEP_COMPLETIONS)
    fewer = max([m for m in range(1, minis) if rollout % m == 0 and rollout // m >= MIN_STEP_COMPLETIONS] or [1])
    return (f"one optimizer step holds only {per_step} completions (train.batch_size={batch} prompts x "
            f"algorithm.group_size={group} / algorithm.num_mini_batches={minis}): num_mini_batches counts optimizer "
            f"steps per rollout, not completions per step, so each step's gradient rests on {per_step} samples (DAPO's "
            f"recipe: 512 prompts x 16 / 16 = 512 completions per step). Raise train.batch_size to {larger} or more, "
            f"or lower algorithm.num_mini_batches to {fewer} ({rollout // fewer} completions per step).")


def warn_small_steps(run: RunConfig, is_main: bool = True) -> None:
    """Log small_step_warning once per job (on the main process)."""
    text = small_step_warning(run)
    if text and is_main:
        from aligntune.run.guards import warn

        warn(text)


def rollout_args(run: RunConfig, output_dir: str, world_size: int, has_eval: bool) -> dict:
    """The fields GRPOConfig and RLOOConfig share: common_args, the rollout's batch arithmetic, sampling,
    the clipped ratio, and the held-out schedule (an eval batch holds whole groups)."""
    algo = run.algorithm
    micro, accumulation, steps_per_generation = rollout_batches(run, world_size)
    args = common_args(run, output_dir)
    args.update(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps_per_generation,
        num_generations=algo.group_size,
        beta=algo.beta,
        epsilon=algo.cliprange,
        epsilon_high=algo.cliprange_high,
        temperature=algo.temperature,
        top_p=algo.top_p,
        max_completion_length=algo.max_completion_length,
        num_iterations=algo.num_iterations,
        mask_truncated_completions=algo.mask_truncated_completions,
        shuffle_dataset=run.dataset.shuffle,
        # rollout.engine / rollout.vllm.* (TRL's vLLM generation) and train.log_completions (TRL's completions
        # table; off by default: aligntune writes samples.jsonl itself)
        **rollout_engine_args(run),
        **held_out_schedule(run, has_eval),
        per_device_eval_batch_size=algo.group_size * max(1, micro // algo.group_size),
    )
    return args


def grpo_args(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False) -> dict:
    """The keyword arguments of `trl.GRPOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, GRPOAlgorithmConfig):
        raise TypeError(f"grpo_args needs a GRPO config, got {type(algo).__name__}")
    weights = [r.weight for r in run.rewards.values()]
    if algo.overlong_buffer is not None:
        clash = [name for name, r in run.rewards.items() if name == OVERLONG or r.fn == OVERLONG]
        if clash:
            raise ConfigError(f"algorithm.overlong_buffer adds DAPO's overlong punishment, and rewards.{clash[0]} is "
                              "one too: it would count twice.",
                              f"Drop one: ~rewards.{clash[0]}, or algorithm.overlong_buffer=null.")
        weights.append(1.0)  # overlong_reward carries overlong_penalty itself, so samples and metrics agree
    args = rollout_args(run, output_dir, world_size, has_eval)
    args.update(
        use_bias_correction_kl=algo.kl_estimator == "k3_is",
        loss_type=algo.loss_type,
        scale_rewards=algo.scale_rewards,
        importance_sampling_level=algo.importance_sampling_level,
        reward_weights=weights,
    )
    return with_trl_args("GRPOConfig", args, run, set(MAPPED_FIELDS.values()))


def to_grpo_config(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False):
    return make_config("GRPOConfig", grpo_args(run, output_dir, world_size, has_eval), "GRPO")


def overlong_reward(algo: GRPOAlgorithmConfig) -> Callable:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13) x `overlong_penalty`: 0 up to
    max_completion_length - overlong_buffer tokens, then linearly down to -overlong_penalty at the limit.
    The limit is the generation limit itself, so the two cannot drift apart.
    Deviation: the paper's ramp ends at -1 against a +-1 correctness reward; aligntune's rewards are 0/1, so
    the preset scales it to the same half of the range (overlong_penalty 0.5): a right answer at the limit
    still beats a short wrong one (0.5 > 0) instead of tying with it (0 = 0)."""
    from aligntune.rewards.registry import bind

    punish = bind(OVERLONG, OVERLONG, {"max_length": algo.max_completion_length, "cache": algo.overlong_buffer})
    penalty = algo.overlong_penalty

    def overlong(completions, completion_ids, **kwargs):
        return [penalty * r for r in punish(completions=completions, completion_ids=completion_ids, **kwargs)]

    overlong.__name__ = OVERLONG
    return overlong


def build(inputs: BuildInputs) -> Built:
    """A `trl.GRPOTrainer` for the run (with dynamic sampling when asked), wired to the job's callbacks and
    reward recorder."""
    from trl import GRPOTrainer

    run = inputs.config
    algo = run.algorithm
    train, held_out = inputs.prompt_splits()
    args = to_grpo_config(run, str(inputs.checkpoint_dir), inputs.world_size, has_eval=held_out is not None)
    warn_small_steps(run, inputs.is_main)
    reward_funcs = inputs.reward_functions(rows=[train[i] for i in range(min(len(train), 4))])
    if algo.overlong_buffer is not None:
        reward_funcs.append(inputs.book.wrap(OVERLONG, overlong_reward(algo), 1.0))
    policy = inputs.load_policy()
    trainer_class, extra = GRPOTrainer, {}
    if algo.dynamic_sampling:
        from aligntune.backends.trl.dynamic_sampling import DynamicSamplingGRPOTrainer

        trainer_class, extra = DynamicSamplingGRPOTrainer, {"max_retries": algo.dynamic_sampling_max_retries}
    trainer = trainer_class(model=policy.model, reward_funcs=reward_funcs, args=args, train_dataset=train,
                            eval_dataset=held_out, processing_class=inputs.tokenizer, peft_config=policy.peft_config,
                            callbacks=inputs.callbacks, **extra)
    return Built.of(trainer, policy)
