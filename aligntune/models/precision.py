"""Compute precision: what `model.dtype=auto` picks, and bf16 compute with fp32 master weights.

The rule of `auto` (the fastest precision measured for the model on the device, never one measured slower):
- CUDA: bf16 where the device supports it, else fp16 (mixed precision: fp32 weights, autocast).
- CPU with native bf16 (AVX512-BF16 or AMX-BF16): bf16 for models at least `BF16_CPU_MIN_HIDDEN` wide, fp32 for
  narrower ones. `bench/dtype_choice.py` on a 2-core AMD EPYC (Zen 4: AVX512-BF16, no AMX): SmolLM2-135M (hidden
  576) runs a GRPO step's generation 1.88x and its forward+backward 1.78x faster in bf16; the 64-wide test model
  runs 0.89x (slower: its matrices are too small for the bf16 kernels to pay for the casts). Unknown width (a hub id not in the cache): bf16.
- Other CPUs (AVX2, most laptops, ARM): fp32. bf16 matrix products are emulated through fp32 there and run
  several times *slower*. (TRL's own default, `bf16=True` whenever fp16 is off, takes bf16 autocast on such CPUs too.)

bf16 on a CPU runs as mixed precision with fp32 master weights (Micikevicius et al. 2018, "Mixed Precision
Training"; the layout of DeepSpeed's and Megatron's bf16 optimizers): the model's weights are bf16,
so the forward, the backward and, above all, rollout generation run in bf16 without per-op casts
(autocast re-casts every weight on every call and leaves `generate` in fp32, which is why TRL's
`bf16=True` barely speeds up a GRPO step on CPU); the optimizer holds an fp32 copy of every trainable
bf16 weight and its states in fp32, steps that copy with the bf16 gradients upcast, and writes the
result back rounded to bf16. An update of 1e-6 relative size, which bf16 weights (8 bits of
mantissa) would drop, accumulates in the fp32 copy. The copies start from the weights as loaded (fp32), not
from their bf16 rounding, so a weight that receives no update is saved bit-identical to the checkpoint.
Deviation from those optimizers: gradients are accumulated across a step's micro-batches in bf16 (the trainer's
own accumulation), not fp32.

On CUDA, bf16 is the trainer's own mixed precision (TrainingArguments `bf16=True`: fp32 weights, bf16 autocast),
which accelerate, DeepSpeed and FSDP understand; the master-weight wrapper above is for CPUs only, where it is
measured faster than autocast (bench/precision_speed.py). fp16 keeps fp32 weights under autocast with loss scaling
on every device (fp16's range is too small for weights).
"""

from __future__ import annotations

import functools
from pathlib import Path

LOW_PRECISION_WEIGHTS = {"bf16"}  # precisions run with low-precision weights + fp32 master copies (on CPU)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# auto takes bf16 on a native-bf16 CPU from this hidden size up (measured: 64 slower, 576 faster; see the docstring)
BF16_CPU_MIN_HIDDEN = 512


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


def resolve_dtype(dtype: str, device: str, hidden_size: int | None = None, native_bf16_cpu: bool | None = None) -> str:
    """The compute precision (fp32|bf16|fp16) for `model.dtype` on `device` (cpu|cuda|...), for a model
    `hidden_size` wide (None: unknown). The rule of `auto` is in the module docstring."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        native = cpu_has_native_bf16() if native_bf16_cpu is None else native_bf16_cpu
        wide = hidden_size is None or hidden_size >= BF16_CPU_MIN_HIDDEN
        return "bf16" if native and wide else "fp32"
    return "fp32"


def low_precision_weights(precision: str, device: str) -> bool:
    """Whether the weights themselves are held in bf16 (with fp32 master copies in the optimizer): bf16 on a CPU.
    Everywhere else the weights stay fp32 and the trainer runs autocast (bf16/fp16 on CUDA, fp16 on CPU)."""
    return precision in LOW_PRECISION_WEIGHTS and device == "cpu"


def weight_dtype(precision: str, device: str = "cpu"):
    """The torch dtype the policy's weights are held in for `precision` on `device`."""
    import torch

    return torch.bfloat16 if low_precision_weights(precision, device) else torch.float32


def describe(precision: str, device: str) -> str:
    """One line for the console: the device, the compute precision and how it is run."""
    if low_precision_weights(precision, device):
        how = "bf16 weights, fp32 master copies in the optimizer"
    elif precision in ("bf16", "fp16"):
        how = f"fp32 weights, {precision} autocast"
    else:
        how = "fp32 weights"
    return f"{device}, {precision} ({how})"


def keep_fp32_master_weights(optimizer, originals: dict | None = None) -> list:
    """Give `optimizer` fp32 master copies of its low-precision parameters (see the module docstring).

    `originals` maps `id(parameter)` to the fp32 tensor the parameter was rounded from (its weights as loaded):
    that tensor becomes the master, so an untouched weight stays exact. Other parameters' masters are upcast.

    The optimizer's param groups are switched to the fp32 copies (its states are created in fp32 at the
    first step); a step-pre hook upcasts each model parameter's gradient into its copy, a step-post hook
    writes the updated copy back into the model parameter. `state_dict()` carries the copies (key
    `fp32_master_weights`) and `load_state_dict()` restores them, so a checkpoint resumes exactly.
    Returns the (model parameter, master) pairs; idempotent."""
    import torch

    if hasattr(optimizer, "fp32_master_pairs"):
        return optimizer.fp32_master_pairs
    originals = originals or {}
    pairs = []
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            if p.dtype in (torch.bfloat16, torch.float16):
                original = originals.get(id(p))
                if original is not None and original.shape == p.shape and torch.equal(original.to(p.dtype), p.detach()):
                    master = original.detach().to(torch.float32).requires_grad_(True)
                else:
                    master = p.detach().to(torch.float32).requires_grad_(True)
                pairs.append((p, master))
                params.append(master)
            else:
                params.append(p)
        group["params"] = params

    def upcast_grads(opt, args, kwargs):
        for p, master in pairs:
            master.grad = None if p.grad is None else p.grad.to(torch.float32)
        clip = opt.__dict__.pop(CLIP_PENDING, None)
        if clip is not None:
            opt.grad_scale = 1.0 / clip.to(torch.float32)  # the fused step divides every gradient by it

    @torch.no_grad()
    def write_back(opt, args, kwargs):
        opt.__dict__.pop("grad_scale", None)
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


CLIP_PENDING = "_aligntune_clip_coefficient"  # set by the clip, taken by the optimizer's next step


def clip_in_the_step(optimizer, parameters, max_norm: float, norm_type: float = 2.0):
    """Gradient clipping for an optimizer with fp32 master weights: `torch.nn.utils.clip_grad_norm_`'s norm and
    coefficient, without its pass over the bf16 gradients. Unclipped (the coefficient clamps to 1), nothing is
    multiplied: the same gradients, bit for bit. Clipped, a fused Adam/AdamW divides each upcast gradient by
    1 / coefficient inside its step (its `grad_scale`, as for GradScaler) instead of the gradients being multiplied
    in bf16 first: the same clip, rounded once in fp32 rather than to bf16. Any other optimizer, or parameters
    that are not exactly the optimizer's, are clipped by torch as before. Returns the total norm."""
    import torch

    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters], norm_type)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if bool(coefficient == 1.0):
        return total
    pairs = getattr(optimizer, "fp32_master_pairs", [])
    masters = {id(m) for _, m in pairs}
    trained = {id(p) for p, _ in pairs}
    plain = {id(p) for group in optimizer.param_groups for p in group["params"] if id(p) not in masters}
    fused = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and optimizer.defaults.get("fused")
    if fused and pairs and {id(p) for p in parameters} == trained | plain:
        setattr(optimizer, CLIP_PENDING, coefficient)
    else:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def to_low_precision(model, dtype, keep: bool) -> dict:
    """Cast `model`'s floating-point weights to `dtype` in place. With `keep`, return {parameter name: the fp32
    tensor it was rounded from} (the masters-to-be; no copy: the tensors the model held), else {}."""
    originals = {name: p.detach() for name, p in model.named_parameters()} if keep else {}
    model.to(dtype)
    return originals


def use_master_weights(trainer, originals: dict | None = None) -> None:
    """Make a transformers/TRL Trainer keep fp32 master weights for its low-precision trainable parameters:
    the optimizer it creates (lazily, at train()) gets `keep_fp32_master_weights`. `originals`: {parameter name
    in trainer.model: fp32 tensor as loaded} (`to_low_precision`), matched by name and shape when the optimizer
    is made; consumed then (the masters own those tensors)."""
    create = trainer.create_optimizer
    originals = originals if originals is not None else {}

    @functools.wraps(create)
    def create_optimizer(*args, **kwargs):
        optimizer = create(*args, **kwargs)
        by_id = {id(p): originals[name] for name, p in trainer.model.named_parameters() if name in originals}
        originals.clear()
        keep_fp32_master_weights(getattr(optimizer, "optimizer", optimizer), by_id)  # accelerate may wrap it
        return optimizer

    trainer.create_optimizer = create_optimizer
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None and getattr(accelerator, "distributed_type", None) in ("NO", "MULTI_CPU"):
        clip = accelerator.clip_grad_norm_

        @functools.wraps(clip)
        def clip_grad_norm_(parameters, max_norm, norm_type=2):
            optimizer = getattr(trainer, "optimizer", None)
            optimizer = getattr(optimizer, "optimizer", optimizer)
            if not getattr(optimizer, "fp32_master_pairs", None):
                return clip(parameters, max_norm, norm_type)
            accelerator.unscale_gradients()  # accelerate's own first step (a no-op without a GradScaler)
            return clip_in_the_step(optimizer, parameters, max_norm, norm_type)

        accelerator.clip_grad_norm_ = clip_grad_norm_


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
