"""Score only the labelled positions in TRL's fused LM head on CPU.

TRL 1.16 computes per-token log-probabilities (GRPO, RLOO, DPO, SFT) with a fused LM head
(`trl.trainer.utils.add_fused_lm_head`). On CUDA/XPU it projects only the positions that carry a
label (the completion tokens); on every other device it projects *all* positions, prompt included,
because on Neuron a varying number of positions would recompile the kernel. CPUs do not compile,
so that rule only costs time there: for SmolLM2-135M (vocabulary 49,152) and a GRPO batch of
16 x 76 tokens of which 16 x 32 are completion, the head's forward+backward takes 3.35 s scoring all
positions and 1.22 s scoring the labelled ones (measured on 2 AVX2 cores; bench/precision_speed.py
shows the whole step).

The labelled-only ("compact") path is TRL's own, the one it runs on GPUs; this changes only the
device test that picks it, for CPU. Nothing else in TRL reads that test.
"""

from __future__ import annotations

import functools


def compact_fused_head_on_cpu() -> bool:
    """Make TRL's fused LM head take its compact path on CPU. Idempotent; False (and nothing changed)
    if this TRL has no such switch."""
    try:
        from trl.trainer import utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        return False
    original = getattr(utils, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "_aligntune_cpu_compact", False):
        return True

    @functools.wraps(original)
    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    compact._aligntune_cpu_compact = True
    utils._use_triton = compact
    return True
