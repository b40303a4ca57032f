"""Dynamic sampling (DAPO: Yu et al. 2025, arXiv:2503.14476, Sec. 3.2) on top of TRL's GRPOTrainer.

A group whose completions all got the same reward has zero advantage, so it adds nothing to the policy
gradient and only dilutes the batch. DAPO drops such groups and samples more prompts until the rollout
again holds `train.batch_size` groups that carry a signal (the constraint 0 < |{o_i correct}| < G on
DAPO's objective).

`fill_rollout` is that algorithm, pure and bounded: it sees groups only through their rewards, asks a
`draw(n)` callback for n more groups per round, and after `max_retries` extra rounds stops and fills the
shortfall with dropped groups. Those pad rows are made inert (advantage 0 and loss mask 0), so the step
keeps its configured shape but trains on what was kept; the counts are logged per rollout as
`dynamic_sampling/{filtered_groups,retries,padded_groups,sampled_groups}`.

Inert rows carry no loss tokens, but TRL's `grpo` and `sapo` losses average per-row means over every row
of a micro-batch and `dr_grpo` divides by rows x max_completion_length, so they would still count in the
denominator and shrink the kept rows' gradient by kept/total. For those three the micro-batch loss is
divided by the rollout's kept-row fraction (`KEPT_FRACTION`, a scalar that travels with the batch), which
makes a rollout's gradient equal that of the kept rows alone. It is a rollout-wide factor, like the token
count TRL's `dapo` loss normalises by: exact per optimizer step with one mini-batch per rollout, exact
over the rollout (and per step in expectation) with several. `dapo`, `cispo` (normalised by the rollout's
loss tokens, recomputed here) and `bnpo` (by the micro-batch's loss tokens) never counted inert rows.
The factor would scale TRL's entropy bonus and MoE router loss too, so those are refused with it.

Deviations from the paper and its released recipe (verl recipe/dapo), on purpose:
- The filter tests the total weighted reward, which is what advantages are computed from, rather than
  accuracy alone. With a single correctness reward the two coincide; with a shaping reward added, a group
  whose answers are all right but differ in length is kept, because its advantages are not zero.
- Each extra round samples exactly the missing number of prompts (verl generates whole batches of 3x the
  training batch and discards the surplus), so no informative group is generated only to be discarded.
- At the bound verl stops with an error; here training goes on with what was kept (see above), counted.
- Refill prompts come from the training set in a seeded order of their own, not from the trainer's data
  loader, so the epoch's order and length are unchanged.
- One process only: TRL may split a group across processes. More processes are refused.
- TRL's own per-round metrics (reward, reward_std, completion lengths) describe every sampled completion,
  dropped groups included; evaluation is never filtered. With scale_rewards=batch each round's advantages
  are scaled by that round's std (group and none, DAPO's choices, are per group and unaffected).

How it sits on TRL, least fragile first: the trainer subclass overrides `_generate_and_score_completions`
(the hook TRL's `_prepare_inputs` calls once per rollout, rows in, loss tensors out) and calls the parent
once per round; it reads each round's rewards by wrapping `_calculate_rewards` (its return value only);
it merges the rounds' tensors by selecting rows and re-padding (prompts on the left, completions on the
right, as TRL pads them), refusing any output key it does not know; it reports through the public `log`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl import GRPOTrainer

from aligntune.errors import ConfigError

ATOL = 1e-6  # rewards closer than this count as equal

# --- the algorithm (pure) -------------------------------------------------------------------------


def informative(rewards: Sequence[float], atol: float = ATOL) -> bool:
    """True when a group's rewards are not all equal (NaN, an unscorable completion, is ignored)."""
    scored = [r for r in rewards if not math.isnan(r)]
    return len(scored) >= 2 and max(scored) - min(scored) > atol


@dataclass(frozen=True)
class Rollout:
    """The outcome of `fill_rollout`. Groups are named (round, index within that round's draw)."""

    picks: tuple[tuple[int, int], ...]  # the groups to train on: the kept ones, then the padding
    kept: int  # informative groups in picks
    padded: int  # dropped groups put back to fill the rollout after the retry bound (inert)
    filtered: int  # groups dropped because all their rewards were equal
    retries: int  # generation rounds after the first
    sampled: int  # groups generated in all rounds

    @property
    def padding(self) -> tuple[tuple[int, int], ...]:
        return self.picks[self.kept:]

    def metrics(self) -> dict[str, int]:
        return {"dynamic_sampling/filtered_groups": self.filtered, "dynamic_sampling/retries": self.retries,
                "dynamic_sampling/padded_groups": self.padded, "dynamic_sampling/sampled_groups": self.sampled}


def fill_rollout(draw: Callable[[int], Sequence[Sequence[float]]], groups: int, max_retries: int,
                 atol: float = ATOL) -> Rollout:
    """Keep informative groups until `groups` are kept or `max_retries` extra rounds are spent.

    `draw(n)` generates and scores n new groups and returns their rewards (one list per group); round r
    is the r-th call. The first round asks for `groups`, each later round for the number still missing.
    If the bound is hit, the rollout is completed with dropped groups, first dropped first.
    """
    if groups < 1 or max_retries < 0:
        raise ValueError(f"fill_rollout needs groups >= 1 and max_retries >= 0, got {groups} and {max_retries}")
    kept: list[tuple[int, int]] = []
    dropped: list[tuple[int, int]] = []
    sampled, round_, need = 0, 0, groups
    while True:
        rewards = draw(need)
        if len(rewards) != need:
            raise ValueError(f"draw({need}) returned {len(rewards)} groups")
        sampled += need
        for i, group in enumerate(rewards):
            (kept if informative(group, atol) else dropped).append((round_, i))
        if len(kept) == groups or round_ == max_retries:
            break
        round_ += 1
        need = groups - len(kept)
    padding = dropped[:groups - len(kept)]
    return Rollout(picks=tuple(kept + padding), kept=len(kept), padded=len(padding), filtered=len(dropped),
                   retries=round_, sampled=sampled)


def mean_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """Per-rollout means over a logging window (TRL averages its own metrics the same way)."""
    rows = [r.metrics() for r in rollouts]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


# --- merging the rounds' tensors ---------------------------------------------------------------------

# Output keys of GRPOTrainer._generate_and_score_completions for text models, by how they are padded.
LEFT_PADDED = {"prompt_ids": None, "prompt_mask": 0}  # None: the tokenizer's pad token
RIGHT_PADDED = {"completion_ids": None, "completion_mask": 0, "tool_mask": 1, "old_per_token_logps": 0.0,
                "ref_per_token_logps": 0.0, "sampling_per_token_logps": 0.0, "importance_sampling_ratio": 0.0}
PER_ROW = {"advantages"}
KEPT_FRACTION = "dynamic_sampling_kept_fraction"  # our own 0-dim key: kept rows / rows of the rollout
RECOMPUTED = {"num_items_in_batch", KEPT_FRACTION}
ROW_NORMALISED = ("grpo", "sapo", "dr_grpo")  # TRL losses whose normaliser counts rows, so inert ones dilute them


def select_groups(rounds: Sequence[dict], picks: Sequence[tuple[int, int]], group_size: int, pad_token_id: int,
                  inert: Sequence[tuple[int, int]] = ()) -> dict:
    """One batch of the picked groups' rows from several rounds' outputs; `inert` groups get advantage 0
    and loss mask 0. `num_items_in_batch` (the loss-token count, TRL's dapo normaliser) is recomputed, and
    `KEPT_FRACTION` says which share of the rows is not inert (0-dim: TRL's split gives it to every chunk)."""
    known = set(LEFT_PADDED) | set(RIGHT_PADDED) | PER_ROW | RECOMPUTED
    unknown = sorted({k for out in rounds for k in out} - known)
    if unknown:
        raise ConfigError(f"Dynamic sampling cannot merge the trainer's {', '.join(unknown)} (multimodal or tool "
                          "inputs): it supports text prompts only.", "Set algorithm.dynamic_sampling=false.")
    keys = [k for k in rounds[0] if k not in RECOMPUTED]
    rows = {key: [out[key][g * group_size:(g + 1) * group_size] for r, g in picks for out in [rounds[r]]]
            for key in keys}
    batch = {}
    for key, pieces in rows.items():
        if key in PER_ROW:
            batch[key] = torch.cat(pieces)
            continue
        left = key in LEFT_PADDED
        value = (LEFT_PADDED if left else RIGHT_PADDED)[key]
        value = pad_token_id if value is None else value
        width = max(p.size(1) for p in pieces)
        batch[key] = torch.cat([F.pad(p, (width - p.size(1), 0) if left else (0, width - p.size(1)), value=value)
                                for p in pieces])
    inert = set(inert)
    inert_rows = [i * group_size + j for i, pick in enumerate(picks) if pick in inert for j in range(group_size)]
    if inert_rows:
        index = torch.tensor(inert_rows, device=batch["advantages"].device)
        batch["advantages"] = batch["advantages"].index_fill(0, index, 0.0)
        batch["completion_mask"] = batch["completion_mask"].index_fill(0, index, 0)
    loss_mask = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
    batch["num_items_in_batch"] = loss_mask.sum()
    batch[KEPT_FRACTION] = torch.tensor(1.0 - len(inert_rows) / (len(picks) * group_size))
    return batch


# --- the trainer -------------------------------------------------------------------------------------


class PromptStream:
    """Row indices of the training set in a seeded random order, reshuffled at every pass."""

    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.order = size, random.Random(seed), []

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(self.size))
                self.rng.shuffle(self.order)
            out.append(self.order.pop())
        return out


class DynamicSamplingGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` whose training rollouts hold only groups with unequal rewards (see the module doc)."""

    def __init__(self, *args, max_retries: int, **kwargs):
        super().__init__(*args, **kwargs)
        if self.accelerator.num_processes > 1:
            raise ConfigError(f"algorithm.dynamic_sampling runs in one process, and this run has "
                              f"{self.accelerator.num_processes}.", "Launch one process, or set algorithm.dynamic_sampling=false.")
        if not hasattr(self.train_dataset, "__getitem__") or not hasattr(self.train_dataset, "__len__"):
            raise ConfigError("algorithm.dynamic_sampling needs a map-style training set to draw refill prompts from.",
                              "Load the dataset without streaming, or set algorithm.dynamic_sampling=false.")
        if self.loss_type in ROW_NORMALISED and (self._entropy_bonus_enabled or self.aux_loss_enabled):
            extra = "TRL's entropy bonus (entropy_coef)" if self._entropy_bonus_enabled else "the model's router auxiliary loss"
            raise ConfigError(f"algorithm.dynamic_sampling with algorithm.loss_type={self.loss_type} reweights the loss of "
                              f"a padded rollout by rows / kept rows, which would scale {extra} too.",
                              "Use algorithm.loss_type=dapo, bnpo or cispo (token-normalised: nothing to reweight), or "
                              "drop the entropy bonus from backend.trl_args.")
        self.max_retries = max_retries
        self.refill = PromptStream(len(self.train_dataset), self.args.seed + 1)
        self.rollouts: list[Rollout] = []  # since the last log
        self._round_scores: torch.Tensor | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        scores = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._round_scores = scores  # (completions, reward functions); NaN where a function gave None
        return scores

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation scores every held-out prompt
            return super()._generate_and_score_completions(inputs)
        generate = super()._generate_and_score_completions
        size = self.num_generations
        outputs: list[dict] = []

        def draw(n: int) -> list[list[float]]:
            rows = inputs if not outputs else [self.train_dataset[i] for i in self.refill.take(n) for _ in range(size)]
            self._round_scores = None
            outputs.append(generate(rows))
            scores = self._round_scores
            if scores is None:  # TRL no longer scores through _calculate_rewards: fail loudly, never train unfiltered
                raise RuntimeError("Dynamic sampling did not see this round's rewards (trl.GRPOTrainer._calculate_rewards "
                                   "was not called); this TRL version is not supported with algorithm.dynamic_sampling.")
            totals = (scores * self.reward_weights.to(scores.device)).nansum(dim=1)
            totals[torch.isnan(scores).all(dim=1)] = math.nan
            return totals.view(-1, size).tolist()

        rollout = fill_rollout(draw, len(inputs) // size, self.max_retries)
        self.rollouts.append(rollout)
        return select_groups(outputs, rollout.picks, size, self.processing_class.pad_token_id, rollout.padding)

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        kept = inputs.get(KEPT_FRACTION)
        if kept is not None and self.loss_type in ROW_NORMALISED and 0 < float(kept) < 1:
            loss = loss / kept.to(loss.device)  # the kept rows' mean, not diluted by the inert ones (module doc)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.rollouts and not any(key.startswith("eval_") for key in logs):
            logs = {**logs, **mean_metrics(self.rollouts)}
            self.rollouts = []
        super().log(logs, start_time)
