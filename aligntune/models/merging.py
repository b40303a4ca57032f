"""Merging a trained LoRA adapter into its base without losing the base's precision.

A bf16 run on a CPU trains its adapter against a bf16 copy of the frozen base (aligntune.models.precision). Merging
into that copy would save every base weight rounded to bf16, including the ones no adapter touches. Instead the
adapter's trained weights (and PEFT's `modules_to_save`, e.g. a reward model's score head) are put on a fresh PEFT
wrapper of the base as loaded in fp32, and merged there: untouched weights come out exactly as loaded, and the
low-rank delta is added in fp32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable


def merge_into_fp32_base(trained, load_fp32_base: Callable):
    """A plain model: `trained` (a peft.PeftModel) merged into its base. When the base was held in fp32 this is
    PEFT's own merge_and_unload; otherwise the base is loaded again in fp32 (`load_fp32_base()`) and merged there."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    frozen = [p for p in trained.parameters() if not p.requires_grad]
    if all(p.dtype == torch.float32 for p in frozen):
        return trained.merge_and_unload()
    name = trained.active_adapter
    with torch.random.fork_rng():  # the fresh adapter's random init is overwritten: leave the run's RNG alone
        fresh = get_peft_model(load_fp32_base(), copy.deepcopy(trained.peft_config[name]))
    state = {k: v.detach().to(torch.float32) for k, v in get_peft_model_state_dict(trained, adapter_name=name).items()}
    result = set_peft_model_state_dict(fresh, state)
    missing = [k for k in result.unexpected_keys]
    if missing:
        raise RuntimeError(f"merging the adapter into the fp32 base left weights unplaced: {missing[:5]}")
    return fresh.merge_and_unload()
