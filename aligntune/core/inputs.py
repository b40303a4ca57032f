"""What builders ask the job for: the policy, the data splits and the rewards, each loaded on demand, so an
algorithm pays only for what it uses. AlignmentJob (core/job.py) sets what these read: config, device, precision,
tokenizer and the sample book."""

from __future__ import annotations


class JobInputs:
    """The builder-facing half of AlignmentJob."""

    def load_policy(self, fp32_weights: bool = False):
        """The policy model and its PEFT config (None without LoRA). Its weights are in the compute precision's
        weight dtype (bf16 for bf16 on a CPU, with fp32 master copies kept by the optimizer; see models.precision),
        or fp32 with `fp32_weights` (engines that run autocast themselves).

        For bf16 weights of a full-weight run the model loads in fp32 and is rounded here, keeping the fp32 tensors
        as the optimizer's masters-to-be (so an untouched weight is saved exactly as loaded); a LoRA run's frozen
        base loads in bf16 directly (the merged model is built from an fp32 base at the end: `_save_merged`)."""
        import torch

        from aligntune.models.loading import load_model, peft_config
        from aligntune.models.precision import to_low_precision, weight_dtype

        dtype = torch.float32 if fp32_weights else weight_dtype(self.precision, self.device)
        self.master_weights = dtype != torch.float32
        lora = peft_config(self.config.model)
        if not self.master_weights or lora is not None:
            return load_model(self.config.model, dtype), lora
        model = load_model(self.config.model, torch.float32)
        self.fp32_originals = to_low_precision(model, dtype, keep=True)
        return model, lora

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

        return load(self.config.dataset, self.config.seed, kind, fit=fitter(self.config, self.tokenizer, kind))

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
