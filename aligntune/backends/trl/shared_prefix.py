"""`train.shared_prefix`: run each distinct prompt of a batch once when TRL scores it (GRPO, RLOO, DPO).

A GRPO or RLOO batch holds every prompt `group_size` times, once with each of its completions; a DPO batch holds
each prompt twice, with its chosen and its rejected answer. TRL scores a batch (the policy's log-probs with a graph
for the loss; the reference's and the old policy's without) by running the model over every row's prompt +
completion, through the fused LM head it puts on the model's forward. The prompt part of a row does not depend on
its completion (causal attention), so the rows of a prompt compute the same prompt states again and again.

With the switch on, that forward runs the batch's shared prefix (every row's tokens before the last one ahead of
its first scored token) once per distinct prefix into a key/value cache, gives each row its prefix's cache (an
index, so the backward sums the rows' gradients into the shared states) and runs the rest of each row against it
through TRL's own fused head, whose per-token outputs get zeros for the prefix's positions (TRL's own value for
unscored positions). That is the same function with the same positions (TRL numbers a row's tokens 0..n-1, as the
cache does). At the default job's 4 prompts x 4 completions of 32 tokens after ~43 prompt tokens, 684 tokens go
through the model instead of 1,200.

It leaves a forward to TRL when there is nothing to share (every prefix once) and where the shared form is not
known to be the same: inputs other than ids and mask (multimodal, token types), MoE router losses, sliding-window
or hybrid layers, gradient checkpointing (its recomputation would write the cache twice), dropout in training (the
rows of a prompt would share one dropout mask), and more than one process (DDP's reducer expects one forward per
backward).
"""

from __future__ import annotations

import functools
import types
from contextlib import contextmanager

# the keywords of TRL's scoring forwards the shared form handles; any other input that is set (PEFT passes its
# unset ones as None) leaves the call to TRL
_PLAIN = {"input_ids", "attention_mask", "use_cache"}
# TRL's fused head's per-token outputs (FusedCausalLMOutput)
_PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def _groups(ids, mask) -> tuple[list[int], list[int]]:
    """(the first row of each distinct prefix, each row's index into those): rows share a prefix when their
    unpadded tokens and padding agree (the pad token may also be a real token, so the mask takes part)."""
    first, index, seen = [], [], {}
    for row, key in enumerate(ids.masked_fill(mask == 0, -1).tolist()):
        slot = seen.setdefault(tuple(key), len(first))
        if slot == len(first):
            first.append(row)
        index.append(slot)
    return first, index


def _shared_forward(model, fused, keyword: str, extra: dict, *args, fused_lm_head=False, labels=None,
                    without_grad: bool = True, **kwargs):
    """TRL's fused forward `fused(..., labels=labels, fused_lm_head=True)` with the batch's shared prefix run once per
    distinct prefix (see the module docstring); `fused` itself for every other call, and for gradient-free scoring
    unless `without_grad`."""
    import torch

    from aligntune.models.decoding import new_cache

    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    if (not fused_lm_head or args or labels is None or ids is None or mask is None or ids.dim() != 2
            or not (without_grad or torch.is_grad_enabled())
            or labels.shape != ids.shape or any(v is not None for k, v in kwargs.items() if k not in _PLAIN)):
        return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
    scored = labels != -100
    rows_scored = scored.any(1)
    # the prefix ends before the last token ahead of any row's first scored token (that token's state scores it)
    width = int(scored.float().argmax(1)[rows_scored].min()) - 1 if bool(rows_scored.any()) else 0
    first, index = _groups(ids[:, :width], mask[:, :width]) if width >= 1 else (None, None)
    if first is None or len(first) == ids.size(0):  # no prefix, or nothing to share
        return fused(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
    cache = new_cache(model)
    head = torch.tensor(first, device=ids.device)
    fused(input_ids=ids[head, :width], attention_mask=mask[head, :width], use_cache=True, **extra, **{keyword: cache})
    cache.batch_select_indices(torch.tensor(index, device=ids.device))
    out = fused(input_ids=ids[:, width:], attention_mask=mask, labels=labels[:, width:], fused_lm_head=True,
                **{keyword: cache})
    for name in _PER_TOKEN:  # back to the full rows' [rows, length - 1]: the prefix's positions are unscored
        value = getattr(out, name, None)
        if value is not None:
            setattr(out, name, torch.cat([value.new_zeros(value.size(0), width), value], 1))
    return out


def _fused_modules(trainer) -> list:
    """The models whose forward TRL gave its fused LM head: the policy (inside PEFT's wrapper) and the reference."""
    from peft import PeftModel

    model = trainer.model
    found = [model.get_base_model() if isinstance(model, PeftModel) else model, getattr(trainer, "ref_model", None)]
    return [m for m in found if m is not None and "forward" in vars(m)]


def _share(module, without_grad: bool = True) -> None:
    from aligntune.models.decoding import _forward_keywords

    fused = module.forward
    keyword, extra = _forward_keywords(module)

    @functools.wraps(type(module).forward)  # the signature generate validates its keywords against, as TRL's
    def forward(self, *args, **kwargs):
        return _shared_forward(self, fused, keyword, extra, *args, without_grad=without_grad, **kwargs)

    module.forward = types.MethodType(forward, module)
    module._aligntune_unshared_forward = fused


@contextmanager
def unshared(trainer):
    """Within the block, the trainer's models score as TRL does (benchmarks and tests compare the two)."""
    modules = [m for m in _fused_modules(trainer) if hasattr(m, "_aligntune_unshared_forward")]
    shared = [m.forward for m in modules]
    for m in modules:
        m.forward = m._aligntune_unshared_forward
    try:
        yield
    finally:
        for m, forward in zip(modules, shared):
            m.forward = forward


ALGORITHMS = ("grpo", "rloo", "dpo")  # the TRL trainers whose batches repeat prompts


def _wanted(setting: bool | None, algorithm: str, device: str) -> bool:
    """What `train.shared_prefix` asks for: true, or null for GRPO and RLOO on CPU (measured faster there; not
    measured on CUDA; DPO on the shipped pairs of ~35 prompt tokens and ~12 answer tokens was within noise,
    0.99-1.09x, so DPO takes it with true only)."""
    if setting is not None:
        return setting and algorithm in ALGORITHMS
    return device == "cpu" and algorithm in ("grpo", "rloo")


def shares_without_grad(setting: bool | None, model) -> bool:
    """Whether gradient-free scoring (the reference's and the old policy's log-probs) shares too. With true, yes;
    with null, everywhere but 16-bit weights on a CPU with AMX: there `bench/shared_prefix.py` measured it slower,
    0.86-0.90x (the default job's batch, bf16, 2-core Xeon), while the forward+backward was 1.14-1.17x faster and
    fp32 was 1.41x / 1.39x; on Zen 4 (AVX512-BF16, no AMX) bf16 scoring was 1.14-1.28x faster. The AMX matmuls are
    fast enough that the prefix's own pass and the cache's gather cost more than the prompt rows they save when no
    backward follows."""
    import torch

    from aligntune.models.precision import cpu_flags

    if setting:
        return True
    dtype = getattr(model, "dtype", None)
    return not (dtype in (torch.bfloat16, torch.float16) and "amx_bf16" in cpu_flags())


def expected(run, device: str) -> bool:
    """Whether `train.shared_prefix` will be on for `run` on `device`, from the config alone (the memory pre-flight
    counts activations with it, before anything is built): what `use_shared_prefix` and `unsupported` decide for
    the shipped models."""
    from aligntune.core.registry import resolve_backend

    if resolve_backend(run) != "trl" or not _wanted(run.train.shared_prefix, run.algorithm.name, device):
        return False
    return not (run.train.gradient_checkpointing or run.distributed.num_processes > 1
                or (run.model.lora.enabled and run.model.lora.dropout > 0))


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


def use_shared_prefix(trainer, setting: bool | None, algorithm: str, device: str) -> bool:
    """`train.shared_prefix` for a built TRL trainer of `algorithm`: on where `_wanted` says so and the shared form
    applies. Returns whether it is on. Raises ConfigError for true where `unsupported` says why it cannot apply;
    with null that is logged and TRL's scoring kept."""
    import logging

    if not _wanted(setting, algorithm, device):
        return False
    reason = unsupported(trainer)
    if reason is not None:
        if setting:
            from aligntune.errors import ConfigError

            raise ConfigError(f"train.shared_prefix=true scores each distinct prompt once, and here {reason}.",
                              "Drop train.shared_prefix (null keeps TRL's own scoring where it cannot apply).")
        logging.getLogger("aligntune").info("train.shared_prefix: off, because %s", reason)
        return False
    modules = _fused_modules(trainer)
    without_grad = shares_without_grad(setting, trainer.model)
    for module in modules:
        _share(module, without_grad)
    if modules:
        logging.getLogger("aligntune").info(
            "train.shared_prefix: on (scoring runs each distinct prompt once per batch%s)",
            "" if without_grad else "; gradient-free scoring keeps TRL's form: 16-bit on an AMX CPU, measured slower")
    return bool(modules)
