"""Compute precision: what `model.dtype=auto` picks, and bf16 compute with fp32 master weights.

`auto` takes bf16 only where the hardware computes it natively: CUDA devices that report bf16
support (else fp16), and CPUs with AVX512-BF16 or AMX-BF16 instructions. On other CPUs (AVX2, most
laptops, ARM) bf16 matrix products are emulated through fp32 and run several times *slower* than
fp32, so `auto` keeps fp32 there. (TRL's own default, `bf16=True` whenever fp16 is off, takes bf16
autocast on such CPUs too.)

bf16 is run as mixed precision with fp32 master weights (Micikevicius et al. 2018, "Mixed Precision
Training"; the layout of DeepSpeed's and Megatron's bf16 optimizers): the model's weights are bf16,
so the forward, the backward and, above all, rollout generation run in bf16 without per-op casts
(autocast re-casts every weight on every call and leaves `generate` in fp32, which is why TRL's
`bf16=True` barely speeds up a GRPO step on CPU); the optimizer holds an fp32 copy of every trainable
bf16 weight and its states in fp32, steps that copy with the bf16 gradients upcast, and writes the
result back rounded to bf16. An update of 1e-6 relative size, which bf16 weights (8 bits of
mantissa) would drop, accumulates in the fp32 copy. Deviation from those optimizers: gradients are
accumulated across a step's micro-batches in bf16 (the trainer's own accumulation), not fp32.

fp16 keeps fp32 weights under autocast with loss scaling (fp16's range is too small for weights).
"""

from __future__ import annotations

import functools
from pathlib import Path

LOW_PRECISION_WEIGHTS = {"bf16"}  # precisions run with low-precision weights + fp32 master copies
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_dtype(dtype: str, device: str, native_bf16_cpu: bool | None = None) -> str:
    """The compute precision (fp32|bf16|fp16) for `model.dtype` on `device` (cpu|cuda|...)."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        return "bf16" if (cpu_has_native_bf16() if native_bf16_cpu is None else native_bf16_cpu) else "fp32"
    return "fp32"


def weight_dtype(precision: str):
    """The torch dtype the policy's weights are loaded in for `precision`."""
    import torch

    return torch.bfloat16 if precision in LOW_PRECISION_WEIGHTS else torch.float32


def keep_fp32_master_weights(optimizer) -> list:
    """Give `optimizer` fp32 master copies of its low-precision parameters (see the module docstring).

    The optimizer's param groups are switched to the fp32 copies (its states are created in fp32 at the
    first step); a step-pre hook upcasts each model parameter's gradient into its copy, a step-post hook
    writes the updated copy back into the model parameter. `state_dict()` carries the copies (key
    `fp32_master_weights`) and `load_state_dict()` restores them, so a checkpoint resumes exactly.
    Returns the (model parameter, master) pairs; idempotent."""
    import torch

    if hasattr(optimizer, "fp32_master_pairs"):
        return optimizer.fp32_master_pairs
    pairs = []
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if p.dtype in (torch.bfloat16, torch.float16):
                master = p.detach().to(torch.float32).requires_grad_(True)
                pairs.append((p, master))
                params.append(master)
            else:
                params.append(p)
        group["params"] = params

    def upcast_grads(opt, args, kwargs):
        for p, master in pairs:
            master.grad = None if p.grad is None else p.grad.to(torch.float32)

    @torch.no_grad()
    def write_back(opt, args, kwargs):
        for p, master in pairs:
            p.copy_(master)
            master.grad = None

    def save_masters(opt, state_dict):
        state_dict["fp32_master_weights"] = [master.detach().clone() for _, master in pairs]
        return state_dict

    @torch.no_grad()
    def load_masters(opt, state_dict):
        saved = state_dict.pop("fp32_master_weights", None)
        if saved is not None:
            for (p, master), value in zip(pairs, saved, strict=True):
                master.copy_(value)
                p.copy_(value)
        return state_dict

    optimizer.register_step_pre_hook(upcast_grads)
    optimizer.register_step_post_hook(write_back)
    optimizer.register_state_dict_post_hook(save_masters)
    optimizer.register_load_state_dict_pre_hook(load_masters)
    optimizer.fp32_master_pairs = pairs
    return pairs


def use_master_weights(trainer) -> None:
    """Make a transformers/TRL Trainer keep fp32 master weights for its low-precision trainable parameters:
    the optimizer it creates (lazily, at train()) gets `keep_fp32_master_weights`."""
    create = trainer.create_optimizer

    @functools.wraps(create)
    def create_optimizer(*args, **kwargs):
        optimizer = create(*args, **kwargs)
        keep_fp32_master_weights(getattr(optimizer, "optimizer", optimizer))  # accelerate may wrap it
        return optimizer

    trainer.create_optimizer = create_optimizer


def master_pairs(trainer) -> list:
    optimizer = getattr(trainer, "optimizer", None)
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return getattr(optimizer, "fp32_master_pairs", []) if optimizer is not None else []


def restore_fp32_weights(trainer) -> int:
    """Point each trained low-precision parameter at its fp32 master (so the saved model holds the full-precision
    weights, not their bf16 rounding). Returns how many parameters were restored."""
    import torch

    pairs = master_pairs(trainer)
    with torch.no_grad():
        for p, master in pairs:
            p.data = master.detach()
    return len(pairs)
