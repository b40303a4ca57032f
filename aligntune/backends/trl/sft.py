"""Supervised fine-tuning on TRL: the ONE mapping from RunConfig to `trl.SFTConfig`, and the trainer build.

The first stage of the RLHF pipeline (Ouyang et al. 2022, InstructGPT: "supervised fine-tuning on
demonstrations"): next-token cross-entropy on demonstrations. `train.batch_size` counts sequences per
optimizer step, `train.micro_batch_size` sequences per forward/backward.

Which tokens carry the loss:
- prompt/completion data: the completion only (`algorithm.completion_only_loss`, default true), EOS included
  (TRL appends the tokenizer's EOS to each completion, so the model learns to stop);
- conversational data (messages, or prompt/completion as message lists): the assistant turns only with
  `algorithm.assistant_only_loss` (refused for plain-text data, which has no turns); messages data without it
  train on the whole conversation (`completion_only_loss` has no prompt to mask there).
`algorithm.packing` packs sequences into rows of `algorithm.max_length` tokens (TRL's best-fit decreasing), and
longer sequences are truncated to max_length.
"""

from __future__ import annotations

from aligntune.backends.trl.common import (
    common_args,
    held_out_schedule,
    make_config,
    step_batches,
    with_trl_args,
)
from aligntune.config.schema import RunConfig, SFTAlgorithmConfig
from aligntune.core.inputs import BuildInputs, Built
from aligntune.errors import ConfigError

MAPPED_FIELDS = {
    "algorithm.max_length": "max_length",
    "algorithm.completion_only_loss": "completion_only_loss",
    "algorithm.assistant_only_loss": "assistant_only_loss",
    "algorithm.packing": "packing",
    "dataset.shuffle": "shuffle_dataset",
    "train.batch_size": "per_device_train_batch_size",  # with gradient_accumulation_steps
    "train.micro_batch_size": "per_device_train_batch_size",
    "train.eval_steps": "eval_steps",
}


def sft_args(run: RunConfig, output_dir: str, has_eval: bool, prompt_completion: bool, conversational: bool,
             world_size: int = 1) -> dict:
    """The keyword arguments of `trl.SFTConfig` for `run` and the shape of its data. Pure: unit-tested key by key.

    `prompt_completion`: the data has prompt/completion columns (else messages); `conversational`: its texts are
    message lists (else plain text).
    """
    algo = run.algorithm
    if not isinstance(algo, SFTAlgorithmConfig):
        raise TypeError(f"sft_args needs an SFT config, got {type(algo).__name__}")
    if algo.assistant_only_loss and not conversational:
        raise ConfigError("algorithm.assistant_only_loss=true needs conversational data (chat messages), but "
                          f"dataset {run.dataset.name!r} is plain text, which has no assistant turns.",
                          "Use algorithm.completion_only_loss=true for prompt/completion text (the default), or a "
                          "messages dataset.")
    args = {**common_args(run, output_dir), **step_batches(run, world_size, "sequences")}
    args.update(
        max_length=algo.max_length,
        completion_only_loss=algo.completion_only_loss and prompt_completion,
        assistant_only_loss=algo.assistant_only_loss,
        packing=algo.packing,
        shuffle_dataset=run.dataset.shuffle,
        **held_out_schedule(run, has_eval),
    )
    return with_trl_args("SFTConfig", args, run, set(MAPPED_FIELDS.values()))


def data_shape(dataset) -> tuple[bool, bool]:
    """(prompt_completion, conversational) of a canonical SFT dataset."""
    prompt_completion = "prompt" in dataset.column_names and "completion" in dataset.column_names
    first = dataset[0]["prompt" if prompt_completion else "messages"]
    return prompt_completion, isinstance(first, list)


def to_sft_config(run: RunConfig, output_dir: str, has_eval: bool, prompt_completion: bool, conversational: bool,
                  world_size: int = 1):
    return make_config("SFTConfig", sft_args(run, output_dir, has_eval, prompt_completion, conversational, world_size), "SFT")


def build(inputs: BuildInputs) -> Built:
    """A `trl.SFTTrainer` for the run's demonstrations."""
    from trl import SFTTrainer

    run = inputs.config
    train, held_out = inputs.sft_data()
    args = to_sft_config(run, str(inputs.checkpoint_dir), held_out is not None, *data_shape(train),
                         world_size=inputs.world_size)
    policy = inputs.load_policy()
    try:
        trainer = SFTTrainer(model=policy.model, args=args, train_dataset=train, eval_dataset=held_out,
                             processing_class=inputs.tokenizer, peft_config=policy.peft_config,
                             callbacks=inputs.callbacks)
    except ValueError as exc:  # TRL's checks of data against the options, e.g. a chat template it cannot mark up
        if "assistant" in str(exc) or "chat template" in str(exc):
            raise ConfigError(f"TRL cannot train on the assistant turns only: {exc}",
                              "Set algorithm.assistant_only_loss=false, or use a model whose chat template has "
                              "{% generation %} markers.") from exc
        raise
    return Built.of(trainer, policy)
