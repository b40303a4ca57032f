"""Reward modelling on TRL: the ONE mapping from RunConfig to `trl.RewardConfig`, and the trainer build.

A pairwise (Bradley-Terry) reward model as in Stiennon et al. 2020 and Ouyang et al. 2022 (InstructGPT,
arXiv:2203.02155): loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)), optionally plus
`center_rewards_coefficient` x mean((r_chosen + r_rejected)^2) (Eisenstein et al. 2023) to keep scores
centred at 0. `train.batch_size` counts preference pairs per optimizer step.

The model is the policy checkpoint's `*ForSequenceClassification` twin with one output: the backbone weights of
`model.name_or_path` and a freshly initialised scalar head (TRL's RewardTrainer does the same through
`AutoModelForSequenceClassification.from_pretrained(num_labels=1)`; building it from the loaded causal LM lets
every model source aligntune knows work, shipped presets included). The saved `model/` directory is a full
sequence-classification checkpoint (a LoRA adapter is merged first), so PPO (`algorithm.value_model=<dir>`) and
the `reward_model` reward (`rewards.rm.args.model=<dir>`) can load it. Held-out pairwise accuracy (`eval_accuracy`,
the share of held-out pairs with r_chosen > r_rejected) is logged every `train.eval_steps` and at the end.
"""

from __future__ import annotations

import dataclasses

from aligntune.backends.trl.common import (
    common_args,
    held_out_schedule,
    make_config,
    step_batches,
    with_trl_args,
)
from aligntune.config.schema import RewardModelAlgorithmConfig, RunConfig
from aligntune.core.inputs import BuildInputs, Built

MAPPED_FIELDS = {
    "algorithm.max_length": "max_length",
    "algorithm.center_rewards_coefficient": "center_rewards_coefficient",
    "train.batch_size": "per_device_train_batch_size",  # with gradient_accumulation_steps
    "train.micro_batch_size": "per_device_train_batch_size",
    "train.eval_steps": "eval_steps",
}


def reward_args(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1) -> dict:
    """The keyword arguments of `trl.RewardConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, RewardModelAlgorithmConfig):
        raise TypeError(f"reward_args needs a reward-model config, got {type(algo).__name__}")
    args = {**common_args(run, output_dir), **step_batches(run, world_size, "pairs")}
    args.update(
        max_length=algo.max_length,
        center_rewards_coefficient=algo.center_rewards_coefficient,
        **held_out_schedule(run, has_eval),
    )
    return with_trl_args("RewardConfig", args, run, set(MAPPED_FIELDS.values()))


def to_reward_config(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1):
    return make_config("RewardConfig", reward_args(run, output_dir, has_eval, world_size), "reward-model")


def _trainer_class():
    from trl import RewardTrainer

    class AligntuneRewardTrainer(RewardTrainer):
        """RewardTrainer whose saved model is always a standalone sequence-classification checkpoint. `load_fp32_base`
        builds the starting classifier in fp32, which a LoRA adapter is merged into (aligntune.models.merging)."""

        load_fp32_base = None

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
            from peft import PeftModel

            from aligntune.models.merging import merge_into_fp32_base

            if isinstance(self.model, PeftModel) and not _internal_call:  # consumers load a plain checkpoint
                merge_into_fp32_base(self.model, self.load_fp32_base).save_pretrained(output_dir)
                return
            super().save_model(output_dir, _internal_call)

    return AligntuneRewardTrainer


def build(inputs: BuildInputs) -> Built:
    """The run's policy checkpoint as a one-output sequence classifier, in a RewardTrainer that saves it merged."""
    from aligntune.models.heads import sequence_classifier_from

    run = inputs.config
    train, held_out = inputs.preference_data()
    args = to_reward_config(run, str(inputs.checkpoint_dir), has_eval=held_out is not None,
                            world_size=inputs.world_size)
    policy = inputs.load_policy()
    model = sequence_classifier_from(policy.model, zero_head=False, trust_remote_code=run.model.trust_remote_code)
    peft_config, policy = policy.peft_config, dataclasses.replace(policy, model=None)  # the causal LM is not kept
    if peft_config is not None:  # the score head must train (and be saved) too: PEFT's SEQ_CLS task does that
        peft_config = dataclasses.replace(peft_config, task_type="SEQ_CLS")
    trainer = _trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                               processing_class=inputs.tokenizer, peft_config=peft_config, callbacks=inputs.callbacks)
    trainer.load_fp32_base = lambda: sequence_classifier_from(inputs.load_fp32_base(), zero_head=False,
                                                              trust_remote_code=run.model.trust_remote_code)
    return Built.of(trainer, policy)
