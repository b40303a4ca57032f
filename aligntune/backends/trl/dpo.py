"""DPO on TRL: the ONE mapping from RunConfig to `trl.DPOConfig`, and the trainer build.

Direct Preference Optimization, Rafailov et al. 2023 (arXiv:2305.18290). `train.batch_size`
counts preference pairs per optimizer step; `train.micro_batch_size` pairs go through one
forward/backward. With LoRA, TRL uses the adapter-disabled base as the reference (no copy).

Reference-free mode (the paper's Eq. 7 without pi_ref, as TRL offered before 1.x): TRL 1.16 has no
switch for it, so we take the reference log-probs as 0 through TRL's own precomputed-reference
path: the trainer reads `ref_chosen_logps`/`ref_rejected_logps` columns, which we fill with zeros
instead of running a reference pass. No reference model is loaded.

Label smoothing on the sigmoid loss is conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy
preferences and relationship to IPO"): with x = beta * (chosen - rejected log-ratio) and flip probability eps,

    cDPO(x) = -(1 - eps) log sigmoid(x) - eps log sigmoid(-x).

TRL 1.16's sigmoid loss is -log sigmoid(x) and ignores label_smoothing (it reads it only for robust,
exo_pair, aot and aot_unpaired). Rather than override TRL's private loss method, `loss_terms` writes cDPO
as a weighted sum of two losses TRL does compute, through its public loss_type/loss_weights. Since
log sigmoid(x) - log sigmoid(-x) = x,

    sigmoid(x) = -log sigmoid(x)                      cDPO(x)   = -log sigmoid(x) + eps * x
    robust(x)  = -log sigmoid(x) - eps x / (1 - 2 eps)      (rDPO, Chowdhury et al. 2024)
    => cDPO = (2 - 2 eps) * sigmoid - (1 - 2 eps) * robust,

exactly, with the same f-divergence, length-desensitisation and WPO weighting as TRL's other terms. So each
sigmoid weight w becomes (2 - 2 eps) w, and one robust term weighted -(1 - 2 eps) times their sum is appended.
tests/backends/trl/test_dpo.py checks the trainer's loss and gradients against cDPO computed by hand, which also fails if
TRL's robust formula ever changes.
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
from aligntune.core.inputs import BuildInputs, Built

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


def loss_terms(loss_type: list[str], loss_weights: list[float] | None, label_smoothing: float):
    """(TRL loss_type, loss_weights) for aligntune's loss types: sigmoid with label_smoothing > 0 becomes
    conservative DPO, as a weighted sum of TRL's sigmoid and robust terms (see the module docstring)."""
    types = list(loss_type)
    weights = list(loss_weights) if loss_weights is not None else None
    eps = label_smoothing
    if eps == 0 or "sigmoid" not in types:
        return types, weights
    weights = weights if weights is not None else [1.0] * len(types)
    sigmoid_weight = sum(w for t, w in zip(types, weights, strict=True) if t == "sigmoid")
    weights = [w * (2 - 2 * eps) if t == "sigmoid" else w for t, w in zip(types, weights, strict=True)]
    return types + ["robust"], weights + [-(1 - 2 * eps) * sigmoid_weight]


def dpo_args(run: RunConfig, output_dir: str, has_eval: bool, world_size: int = 1) -> dict:
    """The keyword arguments of `trl.DPOConfig` for `run`. Pure: unit-tested key by key."""
    algo = run.algorithm
    if not isinstance(algo, DPOAlgorithmConfig):
        raise TypeError(f"dpo_args needs a DPO config, got {type(algo).__name__}")
    args = {**common_args(run, output_dir), **step_batches(run, world_size, "pairs")}
    loss_type, loss_weights = loss_terms(algo.loss_type, algo.loss_weights, algo.label_smoothing)
    args.update(
        beta=algo.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
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


def build(inputs: BuildInputs) -> Built:
    """A `trl.DPOTrainer` (reference-free when asked) for the run's preference pairs."""
    run = inputs.config
    train, held_out = inputs.preference_data()
    args = to_dpo_config(run, str(inputs.checkpoint_dir), has_eval=held_out is not None, world_size=inputs.world_size)
    policy = inputs.load_policy()
    trainer_class = _trainer_class(run.algorithm.reference_free)
    trainer = trainer_class(model=policy.model, args=args, train_dataset=train, eval_dataset=held_out,
                            processing_class=inputs.tokenizer, peft_config=policy.peft_config, callbacks=inputs.callbacks)
    return Built.of(trainer, policy)
