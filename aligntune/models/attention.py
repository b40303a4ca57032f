"""`model.attn_implementation=auto` on CPU: the attention kernel picked per call, by what the call is.

PyTorch's SDPA on CPU runs its flash kernel whenever it can. At the short sequences of CPU jobs that kernel's
backward is slow: 10.4 ms per layer call of a SmolLM2 bf16 forward+backward at 8 x 80 tokens, 15% of the step. The
model's own eager attention (two matmuls and a softmax, the probabilities kept for the backward) is faster there:
`bench/attention.py` measured the whole forward+backward 1.10-1.19x faster at 8 x 80 and 1.33x at 8 x 128 (bf16,
Zen 4), and not faster in bf16 at 256 and beyond, where the matrices it keeps also grow with the square of the
length.

So on CPU, `auto` registers `cpu_sdpa` with transformers' AttentionInterface: the model's
`eager_attention_forward` for 16-bit calls that record a graph for the backward with keys at most `MATH_MAX_KEYS`
long, and transformers' `sdpa_attention_forward` (its GQA handling and causal rules unchanged) for everything
else: decoding, no-grad scoring (reference and old log-probs), fp32 (not measured faster) and long sequences, with
SDPA's own mask, so those calls are exactly `sdpa`'s. Eager gets that mask as the additive one it expects. The two
compute the same function and round differently in bf16.

`model.attn_implementation=sdpa` (or eager, flash_attention_2, ...) keeps that kernel everywhere. A model without
SDPA support keeps transformers' choice. The choice is made at run time: a saved config.json records no attention
implementation, so a trained model loads anywhere.
"""

from __future__ import annotations

NAME = "cpu_sdpa"
# Longest key length trained with eager attention; beyond it SDPA's flash kernel is as fast and its memory stays
# flat (eager keeps heads x L x L attention probabilities per sequence and layer for the backward).
# Measured in bench/attention.py.
MATH_MAX_KEYS = 128


def _eager_function(module):
    """The model's own eager attention (`eager_attention_forward` in its modeling module: its scaling, soft-capping
    and sinks included), or None for a model without one."""
    import sys

    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _additive_mask(mask, query, key):
    """The additive float mask eager attention adds to its scores, from SDPA's mask: boolean (True: attend), or
    None where SDPA relies on `is_causal` (no padding)."""
    import torch

    if mask is not None and mask.dtype != torch.bool:
        return mask
    low = torch.finfo(query.dtype).min
    if mask is None:
        q, k = query.shape[-2], key.shape[-2]
        return torch.full((q, k), low, dtype=query.dtype, device=query.device).triu(1 + k - q)[None, None]
    return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, low)


def cpu_sdpa_forward(module, query, key, value, attention_mask, **kwargs):
    """The model's eager attention for short 16-bit sequences that need a backward, transformers' SDPA (with its
    own mask, so exactly `attn_implementation=sdpa`) otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if torch.is_grad_enabled() and key.shape[-2] <= MATH_MAX_KEYS and query.dtype in (torch.bfloat16, torch.float16):
        eager = _eager_function(module)
        if eager is not None:
            return eager(module, query, key, value, _additive_mask(attention_mask, query, key), **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> str:
    """Make `NAME` an attention implementation transformers knows (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, cpu_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def choose(requested: str, device: str | None) -> str | None:
    """The attention implementation to load with: `requested` unless it is `auto`; for `auto` on CPU the per-call
    choice above, and None (transformers' own choice) elsewhere or when the device is not known yet."""
    if requested != "auto":
        return requested
    return register() if device == "cpu" else None


def keeps_probabilities(requested: str, precision: str, device: str, keys: int) -> bool:
    """Whether training keeps each layer's attention probabilities (heads x keys x keys per sequence) for the
    backward: eager attention does, SDPA's kernels do not (the memory estimate counts them)."""
    if requested == "eager":
        return True
    return requested == "auto" and device == "cpu" and precision in ("bf16", "fp16") and keys <= MATH_MAX_KEYS


def apply(model, requested: str, device: str | None) -> None:
    """Switch a loaded model to `choose(...)` where transformers picked SDPA for it (a model without SDPA support
    keeps what it has)."""
    wanted = choose(requested, device)
    if wanted is None or wanted == requested or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    model.set_attn_implementation(wanted)
