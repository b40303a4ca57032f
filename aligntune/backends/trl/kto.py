"""KTO on TRL: the ONE mapping from RunConfig to `trl.KTOConfig`, and the trainer build.

Kahneman-Tversky Optimization, Ethayarajh et al. 2024 (arXiv:2402.01306). Each row is a prompt, one completion and
a label (desirable or not); with r = log pi(y|x) - log pi_ref(y|x) and the reference point z0 = KL(pi || pi_ref),
the loss of Eq. 7 is lambda_D (1 - sigmoid(beta (r - z0))) for desirable rows and lambda_U (1 - sigmoid(beta (z0 - r)))
for undesirable ones. `train.batch_size` counts rows per optimizer step; `train.micro_batch_size` rows go through
one forward/backward. With LoRA, TRL uses the adapter-disabled base as the reference (no copy).

Deviations, as TRL implements it: z0 is estimated per micro-batch from mismatched pairs (each prompt with the
previous row's completion), clamped at 0 and not differentiated (the paper's choice too, Section 4.1). So TRL reads
the training rows in order (`train_sampling_strategy="sequential"`, mapped from loss_type): aligntune's loader has
shuffled them with the run seed, and a micro-batch needs at least 2 rows (schema.RunConfig refuses fewer). Every
epoch sees the same order. `loss_type=apo_zero_unpaired` (APO-zero, D'Oosterlinck et al. 2024) has no KL term:
there the sampler is random when `dataset.shuffle` (the default), as for the other trainers.
"""

from __future__ import annotations

from aligntune.backends.trl.common import (
    common_args,
    held_out_schedule,
    make_config,
    step_batches,
    with_trl_args,
)
from aligntune.config.schema import KTOAlgorithmConfig, RunConfig
from aligntune.core.inputs import BuildInputs, Built

MAPPED_FIELDS = {
    "algorithm.beta": "beta",
    "algorithm.desirable_weight": "desirable_weight",
    "algorithm.undesirable_weight": "undesirable_weight",
    "algorithm.loss_type": "loss_type",
    "algorithm.max_length": "max_length",
    "algorithm.precompute_ref_log_probs": "precompute_ref_log_probs",
    "dataset.shuffle": "train_sampling_strategy",  # and algorithm.loss_type: the KL estimate needs rows in order
    "train.eval_steps": "eval_steps",
}


def sampling_strategy(algo: KTOAlgorithmConfig, shuffle: bool) -> str:
    """The KL term's estimate pairs each row with its neighbour in the (already shuffled) order: sequential."""
    return "random" if algo.loss_type == "apo_zero_unpaired" and shuffle else "sequential"


def kto_args(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1) -> dict:
    """The keyword arguments of `trl.KTOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, KTOAlgorithmConfig):
        raise TypeError(f"kto_args needs a KTO config, got {type(algo).__name__}")
    args = {**common_args(run, output_dir), **step_batches(run, world_size, "rows")}
    args.update(
        beta=algo.beta,
        desirable_weight=algo.desirable_weight,
        undesirable_weight=algo.undesirable_weight,
        loss_type=algo.loss_type,
        max_length=algo.max_length,
        precompute_ref_log_probs=algo.precompute_ref_log_probs,
        train_sampling_strategy=sampling_strategy(algo, run.dataset.shuffle),
        **held_out_schedule(run, has_eval),
    )
    return with_trl_args("KTOConfig", args, run, set(MAPPED_FIELDS.values()))


def to_kto_config(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1):
    return make_config("KTOConfig", kto_args(run, output_dir, has_eval, world_size), "KTO")


def build(inputs: BuildInputs) -> Built:
    """A `trl.KTOTrainer` for the run's unpaired rows."""
    from trl import KTOTrainer

    run = inputs.config
    train, held_out = inputs.unpaired_data()
    args = to_kto_config(run, str(inputs.checkpoint_dir), has_eval=held_out is not None, world_size=inputs.world_size)
    policy = inputs.load_policy()
    trainer = KTOTrainer(model=policy.model, args=args, train_dataset=train, eval_dataset=held_out,
                         processing_class=inputs.tokenizer, peft_config=policy.peft_config, callbacks=inputs.callbacks)
    return Built.of(trainer, policy)
