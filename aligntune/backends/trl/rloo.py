"""RLOO on TRL: the ONE mapping from RunConfig to `trl.RLOOConfig`, and the trainer build.

REINFORCE Leave-One-Out (Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization
for Learning from Human Feedback in LLMs, arXiv:2402.14740). Each prompt is sampled `group_size` times;
a completion's advantage is its reward minus the mean reward of the other group_size - 1 completions;
the KL to the reference (k1, summed over the sequence) is subtracted from the reward first.

TRL's RLOOTrainer optimises PPO's clipped surrogate of the sequence ratio. On-policy (num_iterations = 1
and num_mini_batches = 1, the defaults) the ratio is 1 up to rounding and the clip never binds, so the
update is the paper's REINFORCE; `cliprange` only acts when a rollout is reused. Batch arithmetic is
GRPO's (`grpo.rollout_batches`): `train.batch_size` prompts x `group_size` completions per rollout, in
`num_mini_batches` optimizer steps.
"""

from __future__ import annotations

from aligntune.backends.trl.common import VLLM_FIELDS, make_config, with_trl_args
from aligntune.backends.trl.grpo import rollout_args, warn_small_steps
from aligntune.config.schema import RLOOAlgorithmConfig, RunConfig
from aligntune.core.inputs import BuildInputs, Built

# aligntune key -> the RLOOConfig field it sets; trl_args may not set these a second way.
MAPPED_FIELDS = {
    "algorithm.group_size": "num_generations",
    "algorithm.beta": "beta",
    "algorithm.cliprange": "epsilon",
    "algorithm.cliprange_high": "epsilon_high",
    "algorithm.temperature": "temperature",
    "algorithm.top_p": "top_p",
    "algorithm.max_completion_length": "max_completion_length",
    "algorithm.num_iterations": "num_iterations",
    "algorithm.num_mini_batches": "steps_per_generation",
    "algorithm.normalize_advantages": "normalize_advantages",
    "algorithm.reward_clip": "reward_clip_range",
    "algorithm.mask_truncated_completions": "mask_truncated_completions",
    "dataset.shuffle": "shuffle_dataset",
    "train.eval_steps": "eval_steps",
    "rewards.<name>.weight": "reward_weights",
    **VLLM_FIELDS,
}


def rloo_args(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False) -> dict:
    """The keyword arguments of `trl.RLOOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, RLOOAlgorithmConfig):
        raise TypeError(f"rloo_args needs an RLOO config, got {type(algo).__name__}")
    args = rollout_args(run, output_dir, world_size, has_eval)
    args.update(
        normalize_advantages=algo.normalize_advantages,
        reward_clip_range=(-algo.reward_clip, algo.reward_clip) if algo.reward_clip is not None else None,
        reward_weights=[r.weight for r in run.rewards.values()],
    )
    return with_trl_args("RLOOConfig", args, run, set(MAPPED_FIELDS.values()))


def to_rloo_config(run: RunConfig, output_dir: str, world_size: int = 1, has_eval: bool = False):
    return make_config("RLOOConfig", rloo_args(run, output_dir, world_size, has_eval), "RLOO")


def build(inputs: BuildInputs) -> Built:
    """A `trl.RLOOTrainer` for the run, wired to the job's callbacks and reward recorder."""
    from trl import RLOOTrainer

    run = inputs.config
    train, held_out = inputs.prompt_splits()
    args = to_rloo_config(run, str(inputs.checkpoint_dir), inputs.world_size, has_eval=held_out is not None)
    warn_small_steps(run, inputs.is_main)
    reward_funcs = inputs.reward_functions(rows=[train[i] for i in range(min(len(train), 4))])
    policy = inputs.load_policy()
    trainer = RLOOTrainer(model=policy.model, reward_funcs=reward_funcs, args=args, train_dataset=train,
                          eval_dataset=held_out, processing_class=inputs.tokenizer, peft_config=policy.peft_config,
                          callbacks=inputs.callbacks)
    return Built.of(trainer, policy)
