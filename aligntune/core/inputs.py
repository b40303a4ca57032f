"""What a builder gets and what it gives back: the contract between the job (core/job.py) and the engines' builders
(the registry's in-process targets, `build(inputs: BuildInputs) -> Built`).

    BuildInputs  what the job has set up (config, device, precision, tokenizer, callbacks, checkpoint dir, world
                 size, the sample book) and the loaders of what costs to load (the policy, the data splits, the
                 rewards, the fp32 base), each run on demand, so an algorithm pays only for what it uses
    Policy       what load_policy loaded: the model, its PEFT config, and the precision facts the job needs later
    Built        what a builder returns: the engine's trainer, plus what the job reads back (the master weights)

A builder never sees the job and sets nothing on it; BuildInputs holds no reference to the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligntune.config.schema import RunConfig

if TYPE_CHECKING:
    from aligntune.run.samples import SampleBook


@dataclass(frozen=True)
class Policy:
    """The policy model as load_policy loaded it. `master_weights`: its weights are in a low-precision weight dtype
    and the optimizer keeps fp32 masters (models.precision); `fp32_originals`: {parameter name: fp32 tensor} a
    full-weight low-precision policy was rounded from (the masters-to-be), empty otherwise."""

    model: Any
    peft_config: Any | None = None
    master_weights: bool = False
    fp32_originals: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Built:
    """A builder's result: the engine's trainer (e.g. `trl.GRPOTrainer`, the native PPOTrainer) and what the job
    needs back from the build. `master_weights`/`fp32_originals` as in Policy (the job gives the optimizer fp32
    masters, and saves them instead of their rounding)."""

    trainer: Any
    master_weights: bool = False
    fp32_originals: dict = field(default_factory=dict)

    @classmethod
    def of(cls, trainer: Any, policy: Policy) -> Built:
        """The result of a build that trains `policy`."""
        return cls(trainer, master_weights=policy.master_weights, fp32_originals=policy.fp32_originals)


@dataclass(frozen=True, kw_only=True)
class BuildInputs:
    """Everything a builder reads. The job constructs it after loading the tokenizer and setting up its callbacks.

    `checkpoint_dir` is the engine's output directory (<run dir>/checkpoints); `callbacks` the job's own callbacks
    (recorder, phase timer, progress), which the builder hands to its trainer; `book` records what the rewards saw
    (reward_functions wraps each reward with it); `is_main`: this is the process that logs and writes."""

    config: RunConfig
    device: str
    precision: str
    tokenizer: Any
    callbacks: list
    checkpoint_dir: Path
    book: SampleBook
    world_size: int = 1
    is_main: bool = True
    on_data_lengths: Callable[[int], None] | None = None  # called with the longest training sequence, once measured

    def load_policy(self, fp32_weights: bool = False) -> Policy:
        """The policy model and its PEFT config (None without LoRA). Its weights are in the compute precision's
        weight dtype (bf16 for bf16 on a CPU, with fp32 master copies kept by the optimizer; see models.precision),
        or fp32 with `fp32_weights` (engines that run autocast themselves).

        For bf16 weights of a full-weight run the model loads in fp32 and is rounded here, keeping the fp32 tensors
        as the optimizer's masters-to-be (so an untouched weight is saved exactly as loaded); a LoRA run's frozen
        base loads in bf16 directly (the merged model is built from an fp32 base at the end: the job's
        `_save_merged`)."""
        import torch

        from aligntune.models.loading import load_model, peft_config
        from aligntune.models.precision import to_low_precision, weight_dtype

        dtype = torch.float32 if fp32_weights else weight_dtype(self.precision, self.device)
        master_weights = dtype != torch.float32
        lora = peft_config(self.config.model)
        if not master_weights or lora is not None:
            return Policy(load_model(self.config.model, dtype, device=self.device), lora, master_weights)
        model = load_model(self.config.model, torch.float32, device=self.device)
        originals = to_low_precision(model, dtype, keep=True)
        return Policy(model, lora, master_weights, originals)

    def prompt_data(self):
        """Rows with a `prompt` column (plus the columns rewards read), shuffled with the run seed."""
        return self.prompt_splits()[0]

    def prompt_splits(self):
        """(train, held-out or None) prompt rows, each fitted to the model's context (data/lengths.py)."""
        return self._data("prompts")

    def preference_data(self):
        """(train, held-out or None) preference pairs: prompt/chosen/rejected, checked against the context."""
        return self._data("preferences")

    def unpaired_data(self):
        """(train, held-out or None) unpaired rows (prompt, completion, label), for KTO."""
        return self._data("unpaired")

    def sft_data(self):
        """(train, held-out or None) demonstrations: prompt/completion or messages, checked against the context."""
        return self._data("sft")

    def _data(self, kind: str):
        from aligntune.data.lengths import fitter
        from aligntune.data.loading import load

        measured: dict = {}
        splits = load(self.config.dataset, self.config.seed, kind, fit=fitter(self.config, self.tokenizer, kind, measured))
        if measured.get("longest") and self.on_data_lengths is not None:
            self.on_data_lengths(measured["longest"])  # the job refines its memory estimate before weights load
        return splits

    def reward_functions(self, rows: list[dict] | None = None) -> list:
        """The configured rewards in TRL's signature, each called once on a few dataset rows first (a broken
        reward fails before training), and recorded for samples.jsonl. `rows`: default the first 4 prompt rows."""
        from aligntune.rewards.check import check_rewards
        from aligntune.rewards.registry import bind
        from aligntune.rewards.watchdog import with_timeout

        bound = {name: with_timeout(name, bind(name, spec.fn or name, spec.args), spec.timeout_s)
                 for name, spec in self.config.rewards.items()}
        if rows is None:
            data = self.prompt_data()
            rows = [data[i] for i in range(min(len(data), 4))]
        check_rewards(bound, rows)
        return [self.book.wrap(name, fn, self.config.rewards[name].weight) for name, fn in bound.items()]

    def load_fp32_base(self):
        """The policy's starting weights in fp32 (what a merge adds an adapter's delta to)."""
        import torch

        from aligntune.models.loading import load_model

        return load_model(self.config.model, torch.float32, quantize=False)
