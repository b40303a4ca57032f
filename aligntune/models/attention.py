"""`model.attn_implementation=auto` on CPU: the attention kernel picked per call, by what the call is.

PyTorch's SDPA on CPU runs its flash kernel whenever it can. At the short sequences of CPU jobs that kernel's
backward is slow: 10.4 ms per layer call of a SmolLM2 bf16 forward+backward at 8 x 80 tokens, 15% of the step. The
model's own eager attention (two matmuls and a softmax, the probabilities kept for the backward) is faster there:
`bench/attention.py` measured the whole forward+backward 1.10-1.19x faster at 8 x 80 and 1.33x at 8 x 128 (bf16,
Zen 4), and not faster in bf16 at 256 and beyond, where the matrices it keeps also grow with the square of the
length.

Decoding has the opposite problem: one query per sequence, and SDPA's bf16 flash kernel costs 1.05 ms per layer
call at 100 sequences x 50 keys (GQA packed by transformers), where two batched matmuls over each key/value head's
group of query heads take 0.41 ms (0.29 against 0.22 ms at 32 sequences; at 8 and 16 the two are within noise of
each other, so SDPA keeps those). On a 2-core AMX Xeon the same choice is neutral: 1.00x at 100 sequences, 0.97-0.99x
at 8-32 (its flash kernel keeps up), and kept there because no row is slower beyond noise; eager attention in
training measured 1.22x at 8 x 80 and 1.18x at 8 x 128 there, 0.99x at 256 (BENCHMARKS.md, 2026-12-02).

So on CPU, `auto` registers `cpu_sdpa` with transformers' AttentionInterface:
- the model's `eager_attention_forward` for 16-bit calls that record a graph for the backward with keys at most
  `MATH_MAX_KEYS` long (it gets SDPA's mask as the additive one it expects);
- `decode_attention` for 16-bit decoding steps of at least `DECODE_MIN_ROWS` sequences (one query each, no graph),
  such as the held-out evaluation's batch: softmax(q k^T * scale) v per
  key/value head, its query heads side by side, the softmax in fp32 as eager's;
- transformers' `sdpa_attention_forward` (its GQA handling and causal rules unchanged) for everything else:
  prefill and no-grad scoring (reference and old log-probs), fp32 (not measured faster) and long sequences, with
  SDPA's own mask, so those calls are exactly `sdpa`'s.
They compute the same function and round differently in bf16.

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
# Fewest sequences a 16-bit decoding step needs for `decode_attention` (below it SDPA is as fast). Measured per call.
DECODE_MIN_ROWS = 32


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


def _plain_decode_step(module, query, key, attention_mask, kwargs) -> bool:
    """Whether this call is one decoding step that `decode_attention` computes exactly as the model defines it: one
    query for each of at least DECODE_MIN_ROWS sequences, no graph, no dropout, no soft-capping, attention sinks or
    position bias, and a mask (if any) shared by all heads."""
    import torch

    return (query.shape[-2] == 1 and query.shape[0] >= DECODE_MIN_ROWS and not torch.is_grad_enabled()
            and query.shape[1] % key.shape[1] == 0
            and not kwargs.get("dropout") and all(kwargs.get(k) is None for k in ("softcap", "position_bias", "s_aux"))
            and getattr(module, "sinks", None) is None
            and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                            and attention_mask.shape[2] == 1)))


def decode_attention(query, key, value, attention_mask, scaling=None):
    """One decoding step's attention: query (batch, heads, 1, dim) against key/value (batch, kv_heads, keys, dim),
    each key/value head with its group of query heads side by side (no repeated keys); mask boolean (True: attend),
    additive, or None. Returns (batch, 1, heads, dim), the layout attention functions return."""
    import torch

    batch, heads, _, dim = query.shape
    groups = key.shape[1]
    scores = torch.matmul(query.reshape(batch, groups, heads // groups, dim), key.transpose(2, 3))
    scores = scores * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).reshape(batch, 1, heads, dim)


def cpu_sdpa_forward(module, query, key, value, attention_mask, **kwargs):
    """The model's eager attention for short 16-bit sequences that need a backward, `decode_attention` for 16-bit
    decoding steps, transformers' SDPA (with its own mask, so exactly `attn_implementation=sdpa`) otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.dtype in (torch.bfloat16, torch.float16):
        if torch.is_grad_enabled() and key.shape[-2] <= MATH_MAX_KEYS:
            eager = _eager_function(module)
            if eager is not None:
                return eager(module, query, key, value, _additive_mask(attention_mask, query, key), **kwargs)
        elif _plain_decode_step(module, query, key, attention_mask, kwargs):
            return decode_attention(query, key, value, attention_mask, kwargs.get("scaling")), None
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
