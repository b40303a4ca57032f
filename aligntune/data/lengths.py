"""Token lengths of the training data against the model's context, measured before training.

Without this, a prompt of 100,000 characters on `model=tiny` (512 positions) fails in the middle of the first
step asking for hundreds of GB of attention memory. Every row the run will use (after shuffling, splitting and
`max_samples`, with the system prompt) is tokenized in batches, as the engine will tokenize it:

* Prompts (grpo, rloo, ppo): text through the tokenizer (with its special tokens on TRL, without them on the
  native engine), chat prompts through the chat template with the generation prompt. A prompt must leave
  `algorithm.max_completion_length` positions of the model's context (its config's `max_position_embeddings`)
  for the completion. A longer one stops the run with its row, its length and the limit, unless
  `dataset.max_prompt_length` is set: then prompts longer than that are cut to it and the count is reported.
  `dataset.truncation_mode=keep_end` (the default) cuts the start of the prompt, since a task's question
  usually ends it; `keep_start` cuts the end. Chat prompts are cut inside the message contents (for keep_end
  the earliest non-system message first, for keep_start the last first), so every turn and the template stay.
* Sequences (dpo, reward, sft, kto): prompt + chosen / rejected / completion (or the messages), as TRL tokenizes
  them. TRL truncates DPO, SFT and KTO sequences longer than `algorithm.max_length` and drops such reward-model
  pairs (and DPO pairs whose prompt alone fills it, with keep_start, and KTO rows whose prompt alone fills it);
  those are counted and reported, a run
  left without rows is refused, and so is a sequence that still exceeds the context (max_length above it).

Rows are named by their position in the dataset's file (its split), as the other data errors name them. A
model whose config states no context length is measured against `dataset.max_prompt_length` only.
"""

from __future__ import annotations

import logging

from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError, DataError

log = logging.getLogger("aligntune")
BATCH = 256  # rows per tokenizer call
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(run: RunConfig) -> int | None:
    """The model's context (positions), from its config; None when the config does not say."""
    from transformers import AutoConfig

    from aligntune.models.loading import model_location

    config = AutoConfig.from_pretrained(model_location(run.model), trust_remote_code=run.model.trust_remote_code)
    for cfg in (getattr(config, "text_config", None), config):
        for key in CONTEXT_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def fitter(run: RunConfig, tokenizer, kind: str, measured: dict | None = None):
    """The `fit` hook of data.loading.load for `kind` (prompts | preferences | sft) on this run's model. `measured`,
    if given, receives `longest`: the longest training sequence after TRL's truncation (sequence kinds), or the
    longest training prompt (after any cut) plus algorithm.max_completion_length (prompts)."""
    context = context_length(run)

    def fit(ds, rows: list[int], split: str):
        if kind == "prompts":  # the native engine tokenizes prompts without special tokens, TRL with them
            found: dict = {}
            ds = fit_prompts(ds, rows, split, run, tokenizer, context, special=run.algorithm.name != "ppo",
                             measured=found)
            if measured is not None and split == "train" and found.get("longest"):
                measured["longest"] = found["longest"] + run.algorithm.max_completion_length
            return ds
        longest = check_sequences(ds, rows, split, run, tokenizer, context, kind)
        if measured is not None and split == "train" and longest:
            measured["longest"] = longest
        return ds

    return fit


def count_tokens(tokenizer, items: list, special: bool = True, generation_prompt: bool = False) -> list[int]:
    """Token counts of texts (`special`: with the tokenizer's special tokens) or conversations (chat template)."""
    counts: list[int] = []
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        if chunk and isinstance(chunk[0], list):
            ids = tokenizer.apply_chat_template(chunk, add_generation_prompt=generation_prompt, tokenize=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer(chunk, add_special_tokens=special)["input_ids"]
        counts += [len(x) for x in ids]
    return counts


def _warn(text: str) -> None:
    from aligntune.run.console import console

    log.warning(text)
    console.print(f"[yellow]warning[/yellow]: {text}")


def _rows(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:10])) + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


# --- prompts ------------------------------------------------------------------------------------------------

def prompt_budget(run: RunConfig, context: int | None) -> int | None:
    """Prompt tokens a row may have: dataset.max_prompt_length, within what the context leaves the completion."""
    completion = run.algorithm.max_completion_length
    room = context - completion if context is not None else None
    wanted = run.dataset.max_prompt_length
    if room is not None and room < 1:
        raise ConfigError(f"algorithm.max_completion_length={completion} fills the model's whole context of {context} "
                          f"positions ({run.model.name_or_path}), leaving no room for a prompt.",
                          f"Lower algorithm.max_completion_length below {context}.")
    if wanted is not None and room is not None and wanted > room:
        raise ConfigError(f"dataset.max_prompt_length={wanted} plus algorithm.max_completion_length={completion} is "
                          f"more than the model's context of {context} positions ({run.model.name_or_path}).",
                          f"Use dataset.max_prompt_length={room} or less, or lower algorithm.max_completion_length.")
    return wanted if wanted is not None else room


def fit_prompts(ds, rows: list[int], split: str, run: RunConfig, tokenizer, context: int | None, special: bool,
                measured: dict | None = None):
    """`ds` with every prompt within the budget (cut where dataset.max_prompt_length allows), or DataError.
    `measured`, if given, receives `longest`: the longest prompt's tokens once fitted."""
    budget = prompt_budget(run, context)
    if len(ds) == 0:
        return ds
    if budget is None and measured is None:
        return ds
    lengths = count_tokens(tokenizer, ds["prompt"], special, generation_prompt=True)
    over = [i for i, n in enumerate(lengths) if budget is not None and n > budget]
    if measured is not None and lengths:
        measured["longest"] = max(min(n, budget) if budget is not None else n for n in lengths)
    if not over:
        return ds
    name, cfg = run.dataset.name, run.dataset
    if cfg.max_prompt_length is None:
        first = over[0]
        raise DataError(
            f"Row {rows[first]} of dataset {name!r} ({split}) has a prompt of {lengths[first]} tokens, and the model's "
            f"context of {context} positions ({run.model.name_or_path}) leaves {budget} for it after "
            f"algorithm.max_completion_length={run.algorithm.max_completion_length} "
            f"({len(over)} of {len(ds)} prompts are longer: rows {_rows(sorted(rows[i] for i in over))}).",
            f"Set dataset.max_prompt_length={budget} to cut them (dataset.truncation_mode=keep_end keeps their end, "
            "keep_start their start), or shorten or drop those rows.")
    cut = set(over)
    fitter = _PromptCutter(tokenizer, budget, cfg.truncation_mode, special, name, split)
    ds = ds.map(lambda row, i: {"prompt": fitter(row["prompt"], rows[i])} if i in cut else {}, with_indices=True)
    _warn(f"cut {len(over)} of {len(lengths)} prompts of dataset {name} ({split}) to dataset.max_prompt_length="
          f"{budget} tokens ({cfg.truncation_mode}): rows {_rows(sorted(rows[i] for i in over))}.")
    return ds


class _PromptCutter:
    """Cuts one prompt to `budget` tokens. Decoding and re-encoding may merge tokens differently, so each cut is
    measured again and repeated (a few rounds) until the prompt fits."""

    ROUNDS = 8

    def __init__(self, tokenizer, budget: int, mode: str, special: bool, name: str, split: str):
        self.tok, self.budget, self.keep_end, self.special = tokenizer, budget, mode == "keep_end", special
        self.name, self.split = name, split

    def _length(self, prompt) -> int:
        return count_tokens(self.tok, [prompt], self.special, generation_prompt=True)[0]

    def _drop(self, text: str, n: int) -> str:
        """`text` without its first (keep_end) or last (keep_start) n tokens."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        kept = ids[n:] if self.keep_end else ids[:max(len(ids) - n, 0)]
        return self.tok.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def __call__(self, prompt, row: int):
        for _ in range(self.ROUNDS):
            excess = self._length(prompt) - self.budget
            if excess <= 0:
                return prompt
            if isinstance(prompt, str):
                prompt = self._drop(prompt, excess)
                continue
            order = [i for i, m in enumerate(prompt) if m.get("role") != "system" and m.get("content")]
            if not order or not all(isinstance(prompt[i]["content"], str) for i in order):
                break
            target = order[0] if self.keep_end else order[-1]
            prompt = [dict(m) for m in prompt]
            prompt[target]["content"] = self._drop(prompt[target]["content"], excess)
        raise DataError(f"Row {row} of dataset {self.name!r} ({self.split}) cannot be cut to dataset.max_prompt_length="
                        f"{self.budget} tokens: what stays (the chat template, the system prompt, non-text content) "
                        f"is {self._length(prompt)} tokens on its own.",
                        "Raise dataset.max_prompt_length, shorten dataset.system_prompt, or drop that row.")


# --- sequences (dpo, reward, sft, kto) ---------------------------------------------------------------------------------

def _joined(tokenizer, prompt, completion):
    """prompt + completion as TRL joins them: message lists concatenated; text with an EOS at the end."""
    if isinstance(prompt, list):
        return prompt + completion
    eos = tokenizer.eos_token or ""
    text = prompt + completion
    return text if text.endswith(eos) else text + eos


def sequence_lengths(ds, tokenizer, kind: str) -> tuple[list[int], list[int] | None]:
    """(longest sequence of each row, its prompt's length or None) as TRL will tokenize them."""
    if kind == "preferences":
        prompts = ds["prompt"]
        chosen = count_tokens(tokenizer, [_joined(tokenizer, p, c) for p, c in zip(prompts, ds["chosen"])])
        rejected = count_tokens(tokenizer, [_joined(tokenizer, p, r) for p, r in zip(prompts, ds["rejected"])])
        return [max(a, b) for a, b in zip(chosen, rejected)], count_tokens(tokenizer, prompts, generation_prompt=True)
    if kind == "unpaired":
        joined = [_joined(tokenizer, p, c) for p, c in zip(ds["prompt"], ds["completion"])]
        return count_tokens(tokenizer, joined), count_tokens(tokenizer, ds["prompt"], generation_prompt=True)
    if "messages" in ds.column_names:
        return count_tokens(tokenizer, ds["messages"]), None
    return count_tokens(tokenizer, [_joined(tokenizer, p, c) for p, c in zip(ds["prompt"], ds["completion"])]), None


def check_sequences(ds, rows: list[int], split: str, run: RunConfig, tokenizer, context: int | None,
                    kind: str) -> int | None:
    """Report what TRL will cut or drop at algorithm.max_length; refuse what would still exceed the context. Returns
    the longest sequence TRL will keep (after truncation), or None for no rows."""
    if len(ds) == 0:
        return None
    algo, name = run.algorithm, run.dataset.name
    limit = algo.max_length
    lengths, prompts = sequence_lengths(ds, tokenizer, kind)
    dropped = [i for i, n in enumerate(lengths) if n > limit] if algo.name == "reward" else []
    if (algo.name == "dpo" and algo.truncation_mode == "keep_start") or algo.name == "kto":
        dropped = [i for i, n in enumerate(prompts) if n >= limit]
    gone = set(dropped)
    cut = [i for i, n in enumerate(lengths) if n > limit and i not in gone]
    unit = {"sft": "sequences", "kto": "rows"}.get(algo.name, "pairs")
    kept = [i for i in range(len(ds)) if i not in gone]
    too_long = [i for i in kept if min(lengths[i], limit) > context] if context is not None else []
    if too_long:
        first = too_long[0]
        raise DataError(f"Row {rows[first]} of dataset {name!r} ({split}) is {lengths[first]} tokens long, more than the "
                        f"model's context of {context} positions ({run.model.name_or_path}), and algorithm.max_length="
                        f"{limit} does not cut it ({len(too_long)} of {len(ds)} {unit} are that long: rows "
                        f"{_rows(sorted(rows[i] for i in too_long))}).",
                        f"Set algorithm.max_length={context} or less (longer {unit} are then "
                        f"{'dropped' if algo.name == 'reward' else 'truncated'}), or shorten or drop those rows.")
    if dropped and not kept:
        why = "prompt alone fills" if algo.name in ("dpo", "kto") else "is longer than"
        raise DataError(f"Every one of the {len(ds)} {unit} of dataset {name!r} ({split}) would be dropped: each {why} "
                        f"algorithm.max_length={limit} tokens (the longest is {max(lengths)}).",
                        f"Raise algorithm.max_length (up to the model's context, {context}), or use shorter rows.")
    if dropped:
        what = "whose prompt alone fills" if algo.name in ("dpo", "kto") else "longer than"
        _warn(f"{len(dropped)} of {len(ds)} {unit} of dataset {name} ({split}) are dropped by TRL, {what} "
              f"algorithm.max_length={limit} tokens: rows {_rows(sorted(rows[i] for i in dropped))}.")
    if cut:
        mode = f" ({algo.truncation_mode})" if algo.name == "dpo" else ""
        _warn(f"{len(cut)} of {len(ds)} {unit} of dataset {name} ({split}) are longer than algorithm.max_length={limit} "
              f"tokens and are truncated to it{mode}: rows {_rows(sorted(rows[i] for i in cut))}.")
    return max((min(lengths[i], limit) for i in kept), default=None)
