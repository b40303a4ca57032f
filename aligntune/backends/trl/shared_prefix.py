"""`train.shared_prefix`: score each distinct prompt once in a GRPO/RLOO batch.

A GRPO or RLOO batch holds every prompt `group_size` times, once with each of its completions, and TRL scores it
(the policy's log-probs with a graph for the loss; the reference's and the old policy's without) by running the
model over every row's prompt + completion. The prompt part of a row does not depend on its completion (causal
attention), so the `group_size` rows of a prompt compute the same prompt states `group_size` times. With the
switch on, `_get_per_token_logps_and_entropies` runs each distinct prompt once (all but its last token, with a
key/value cache), gives each row its prompt's cache (an index, so the backward sums the rows' gradients into the
shared prompt states) and runs the rows' last prompt token and completions against it through TRL's own fused LM
head. That is the same function with the same positions (TRL numbers a row's tokens 0..n-1, as the cache does):
at the default job's 4 prompts x 4 completions of 32 tokens after ~43 prompt tokens, 684 tokens go through the
model instead of 1,200.

It leaves a call to TRL's own method when there is nothing to share (every prompt once) and where the shared form
is not known to be the same: multimodal inputs, token type ids, MoE router losses, sliding-window or hybrid
layers, gradient checkpointing (its recomputation would write the cache twice), dropout in training (the rows of a
prompt would share one dropout mask), and more than one process (DDP's reducer expects one forward per backward).
"""

from __future__ import annotations

import functools

# keywords of TRL's _get_per_token_logps_and_entropies that carry inputs the shared form does not handle
_PLAIN = {"batch_size", "compute_entropy", "compute_aux_loss"}


def _groups(ids, mask) -> tuple[list[int], list[int]]:
    """(the first row of each distinct prompt, each row's index into those): rows are the same prompt when their
    unpadded tokens and padding agree (the pad token may also be a real token, so the mask takes part)."""
    first, index, seen = [], [], {}
    for row, key in enumerate(ids.masked_fill(mask == 0, -1).tolist()):
        slot = seen.setdefault(tuple(key), len(first))
        if slot == len(first):
            first.append(row)
        index.append(slot)
    return first, index


def _cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # an older transformers: no per-layer kinds to take from the config
        return DynamicCache()


def _shared(trainer, model, ids, mask, logits_to_keep: int, compute_entropy: bool):
    """Log-probs (and entropies) of the completions of rows `ids` with their prompts run once each; None when every
    prompt is distinct."""
    import torch

    from aligntune.models.decoding import _forward_keywords

    prompt = ids.size(1) - logits_to_keep
    first, index = _groups(ids[:, :prompt], mask[:, :prompt])
    if len(first) == ids.size(0):
        return None
    keyword, extra = _forward_keywords(model)
    cache = _cache(model)
    rows = torch.tensor(index, device=ids.device)
    head = torch.tensor(first, device=ids.device)
    tail = ids[:, prompt - 1:]  # each row's last prompt token, then its completion
    labels = tail.masked_fill(mask[:, prompt - 1:] == 0, -100)
    labels[:, 0] = -100  # the last prompt token is not scored; the fused head shifts labels by one
    with trainer.accelerator.autocast():
        model(input_ids=ids[head, :prompt - 1], attention_mask=mask[head, :prompt - 1], use_cache=True, **extra,
              **{keyword: cache})
        cache.batch_select_indices(rows)
        out = model(input_ids=tail, attention_mask=mask, labels=labels, fused_lm_head=True, **{keyword: cache})
    return out.log_probs[:, -logits_to_keep:], (out.entropy[:, -logits_to_keep:] if compute_entropy else None)


def shared_logps(trainer, original, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
    """TRL's `_get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, ...)` with each
    distinct prompt run once per chunk of `batch_size` rows (see the module docstring); `original` itself for the
    calls the shared form does not cover."""
    import torch

    batch_size = kwargs.get("batch_size") or input_ids.size(0)
    compute_entropy = bool(kwargs.get("compute_entropy"))
    if (args or kwargs.get("compute_aux_loss") or any(v is not None for k, v in kwargs.items() if k not in _PLAIN)
            or not 2 <= input_ids.size(1) - logits_to_keep or logits_to_keep < 1):
        return original(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        scored = _shared(trainer, model, ids, mask, logits_to_keep, compute_entropy)
        if scored is None:
            scored = original(model, ids, mask, logits_to_keep, batch_size=ids.size(0),
                              compute_entropy=compute_entropy)[:2]
        logps.append(scored[0])
        entropies.append(scored[1])
    return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None)


def unsupported(trainer) -> str | None:
    """Why the shared form cannot score this trainer's batches, or None."""
    import torch

    model = trainer.model
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if trainer.accelerator.num_processes > 1:
        return "it runs in one process only (DDP's reducer expects one forward per backward)"
    if getattr(trainer.args, "gradient_checkpointing", False):
        return "gradient checkpointing recomputes each layer, which would write the prompt cache twice"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "the model has sliding-window or other non-full attention layers"
    if getattr(config, "output_router_logits", False):
        return "the model's router loss counts every token"
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()) or \
            float(getattr(config, "attention_dropout", 0) or 0) > 0:
        return "dropout is on in training (a prompt's rows would share one dropout mask)"
    return None


def use_shared_prefix(trainer, setting: bool | None, device: str) -> bool:
    """`train.shared_prefix` for a built trainer: null turns it on for CPU runs (measured faster there; not measured
    on CUDA, where it stays off), true wherever the shared form applies. Returns whether it is on. Raises ConfigError
    for true where `unsupported` says why it cannot apply; with null that is logged and TRL's scoring kept."""
    import logging

    from trl import GRPOTrainer, RLOOTrainer

    if setting is False or (setting is None and device != "cpu") or not isinstance(trainer, (GRPOTrainer, RLOOTrainer)):
        return False
    reason = unsupported(trainer)
    if reason is not None:
        if setting:
            from aligntune.errors import ConfigError

            raise ConfigError(f"train.shared_prefix=true scores each distinct prompt once, and here {reason}.",
                              "Drop train.shared_prefix (null keeps TRL's own scoring where it cannot apply).")
        logging.getLogger("aligntune").info("train.shared_prefix: off, because %s", reason)
        return False
    method = trainer._get_per_token_logps_and_entropies
    trainer._get_per_token_logps_and_entropies = functools.partial(shared_logps, trainer, method)
    logging.getLogger("aligntune").info("train.shared_prefix: on (log-probs run each distinct prompt once per batch)")
    return True
