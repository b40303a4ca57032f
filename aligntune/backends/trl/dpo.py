"""DPO on TRL: the ONE mapping from RunConfig to `trl.DPOConfig`, and the trainer build.

Direct Preference Optimization, Rafailov et al. 2023 (arXiv:2305.18290). `train.batch_size`
counts preference pairs per optimizer step; `train.micro_batch_size` pairs go through one
forward/backward. With LoRA, TRL uses the adapter-disabled base as the reference (no copy).

Reference-free mode (the paper's Eq. 7 without pi_ref, as TRL offered before 1.x): TRL 1.16 has no
switch for it, so we take the reference log-probs as 0 through TRL's own precomputed-reference
path: the trainer reads `ref_chosen_logps`/`ref_rejected_logps` columns, which we fill with zeros
instead of running a reference pass. No reference model is loaded.
"""

from __future__ import annotations

from aligntune.backends.trl.common import (
    common_args,
    held_out_schedule,
    make_config,
    step_batches,
    with_trl_args,
)
from aligntune.config.schema import DPOAlgorithmConfig, RunConfig

MAPPED_FIELDS = {
    "algorithm.beta": "beta",
    "algorithm.loss_type": "loss_type",
    "algorithm.loss_weights": "loss_weights",
    "algorithm.label_smoothing": "label_smoothing",
    "algorithm.max_length": "max_length",
    "algorithm.truncation_mode": "truncation_mode",
    "algorithm.precompute_ref_log_probs": "precompute_ref_log_probs",
    "algorithm.reference_free": "precompute_ref_log_probs",
    "train.eval_steps": "eval_steps",
}


def dpo_args(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1) -> dict:
    """The keyword arguments of `trl.DPOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, DPOAlgorithmConfig):
        raise TypeError(f"dpo_args needs a DPO config, got {type(algo).__name__}")
    args = {**common_args(run, output_dir), **step_batches(run, world_size, "pairs")}
    args.update(
        beta=algo.beta,
        loss_type=list(algo.loss_type),
        loss_weights=list(algo.loss_weights) if algo.loss_weights is not None else None,
        label_smoothing=algo.label_smoothing,
        max_length=algo.max_length,
        truncation_mode=algo.truncation_mode,
        precompute_ref_log_probs=algo.precompute_ref_log_probs or algo.reference_free,
        **held_out_schedule(run, has_eval),
    )
    return with_trl_args("DPOConfig", args, run, set(MAPPED_FIELDS.values()))


def to_dpo_config(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1):
    return make_config("DPOConfig", dpo_args(run, output_dir, has_eval, world_size), "DPO")


def _trainer_class(reference_free: bool):
    from trl import DPOTrainer

    if not reference_free:
        return DPOTrainer

    class ReferenceFreeDPOTrainer(DPOTrainer):
        """DPO with reference log-probs fixed at 0 (see the module docstring)."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    return ReferenceFreeDPOTrainer


def build(run: RunConfig, job) -> object:
    train, held_out = job.preference_data()
    args = to_dpo_config(run, str(job.checkpoint_dir), has_eval=held_out is not None, world_size=job.world_size)
    model, peft_config = job.load_policy()
    trainer_class = _trainer_class(run.algorithm.reference_free)
    return trainer_class(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                         processing_class=job.tokenizer, peft_config=peft_config, callbacks=job.callbacks)
