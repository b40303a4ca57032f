"""Every use aligntune makes of TRL's and transformers' private APIs, in one place, each with a version guard.

    symbol                                       what aligntune does with it
    trl.trainer.utils._use_triton                replaced: TRL's fused LM head takes its compact path on CPU too
    trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE  set on CPU: the fused head's vocabulary tiles fit the cache
    transformers.Trainer._save_checkpoint        wrapped on the instance: checkpoints written atomically
    transformers.Trainer._get_output_dir         overridden on the instance while a checkpoint is staged
    trl.{DPO,SFT,Reward}Trainer._total_train_tokens  set on resume: the num_tokens count continues
    trl.{GRPO,RLOO}Trainer._generate / _calculate_rewards  wrapped on the instance to time phases (run/phases.py);
                                                 GRPO's _calculate_rewards is overridden by dynamic sampling;
                                                 _generate also runs on prepared weights (models/decoding.py)
    torch.ops.mkldnn._reorder_linear_weight / _linear_pointwise  oneDNN's packed-weight linear (models/decoding.py)

`PRIVATE` lists them with the signature each was written against; tests/test_patches.py checks them against the
installed TRL and transformers, so an upgrade that renames or reshapes one fails loudly in the test suite instead
of quietly changing a run. `guard` refuses a TRL/transformers outside the ranges they were checked on.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from aligntune.errors import AligntuneError

# package -> [lowest, first untested) (major, minor) versions the private symbols below were checked on;
# the same ranges as pyproject.toml's dependencies.
TESTED = {"trl": ((1, 16), (2, 0)), "transformers": ((5, 0), (6, 0))}

# "module:qualname" -> the parameters it had when aligntune's use of it was written (None: an instance attribute,
# checked by name in the class's source).
PRIVATE: dict[str, tuple[str, ...] | None] = {
    "trl.trainer.utils:_use_triton": ("device",),
    "transformers:Trainer._save_checkpoint": ("self", "model", "trial"),
    "transformers:Trainer._get_output_dir": ("self", "trial"),
    "trl:GRPOTrainer._generate": ("self", "prompts"),
    "trl:GRPOTrainer._calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "trl:RLOOTrainer._generate": ("self", "prompts"),
    "trl:RLOOTrainer._calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "trl.trainer.utils:_CHUNKED_LOGPROB_CHUNK_SIZE": None,
    "trl:DPOTrainer._total_train_tokens": None,
    "trl:SFTTrainer._total_train_tokens": None,
    "trl:RewardTrainer._total_train_tokens": None,
}

# trainer class name -> (method, phase) that run/phases.py wraps on the instance to time it
TIMED_METHODS = {
    "GRPOTrainer": [("training_step", "forward_backward"), ("_generate", "generation"), ("_calculate_rewards", "rewards")],
    "RLOOTrainer": [("training_step", "forward_backward"), ("_generate", "generation"), ("_calculate_rewards", "rewards")],
    "DPOTrainer": [("training_step", "forward_backward")],
    "SFTTrainer": [("training_step", "forward_backward")],
    "RewardTrainer": [("training_step", "forward_backward")],
}


class UntestedVersion(AligntuneError):
    """A TRL/transformers outside the versions aligntune's patches were checked on."""


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


@functools.cache
def guard(package: str) -> str:
    """The installed version of `package`, refused if it is outside TESTED's range for it."""
    version = importlib.metadata.version(package)
    low, high = TESTED[package]
    if not low <= _major_minor(version) < high:
        raise UntestedVersion(f"{package} {version} is installed, and aligntune patches private parts of {package} "
                              f"checked on {low[0]}.{low[1]} up to (not including) {high[0]}.{high[1]} "
                              "(aligntune/patches.py).",
                              f"Install a {package} in that range: pip install '{package}>={low[0]}.{low[1]},"
                              f"<{high[0]}.{high[1]}'.")
    return version


def compact_fused_head_on_cpu() -> bool:
    """Make TRL's fused LM head score only the labelled positions on CPU. Idempotent; False (and nothing changed)
    if this TRL has no such switch.

    TRL 1.16 computes per-token log-probabilities (GRPO, RLOO, DPO, SFT) with a fused LM head
    (`trl.trainer.utils.add_fused_lm_head`). On CUDA/XPU it projects only the positions that carry a label (the
    completion tokens); on every other device it projects *all* positions, prompt included, because on Neuron a
    varying number of positions would recompile the kernel. CPUs do not compile, so that rule only costs time
    there: for SmolLM2-135M (vocabulary 49,152) and a GRPO batch of 16 x 76 tokens of which 16 x 32 are
    completion, the head's forward+backward takes 3.35 s scoring all positions and 1.22 s scoring the labelled
    ones (2 AVX2 cores; bench/precision_speed.py shows the whole step). The compact path is TRL's own, the one it
    runs on GPUs; this changes only the device test that picks it, for CPU. Nothing else in TRL reads that test.
    """
    guard("trl")
    from trl.trainer import utils

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


# Vocabulary columns per tile of TRL's chunked log-prob kernel on CPU (TRL's own: 32,768, sized for GPUs).
CPU_LOGPROB_CHUNK = 2048


def cpu_logprob_tiles() -> bool:
    """Size the tiles of TRL's fused LM head for a CPU's cache. False (nothing changed) if this TRL has no such size.

    Off-GPU, TRL's chunked log-prob kernel runs each `[tokens, chunk]` tile of logits through about ten fp32
    elementwise passes (forward) and as many again (backward). At TRL's 32,768 columns a 512-token tile is 64 MB and
    every pass goes to memory; at 2,048 it is 4 MB and stays in cache. Measured (`bench/logprob_tiles.py`, SmolLM2's
    49,152-word head, bf16, 2 Zen 4 cores): forward+backward 1.27x faster at 128 tokens, 2.30x at 512 and 2.05x at
    2,048. The result differs only by the order of the online log-sum-exp (fp32 rounding:
    tests/test_cpu_speed.py). The size is a module-level value TRL reads at each call: the job sets it for CPU runs
    only, so a later CUDA run in the same process would keep it (not measured on GPUs)."""
    guard("trl")
    from trl.trainer import utils

    if not hasattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        return False
    utils._CHUNKED_LOGPROB_CHUNK_SIZE = CPU_LOGPROB_CHUNK
    return True


def wrap_save_checkpoint(trainer, around: Callable) -> None:
    """Route `trainer._save_checkpoint(model, trial)` through `around(save, model, trial)`, on this instance only
    (transformers' Trainer, or the native PPO engine, which mirrors it)."""
    if hasattr(trainer, "accelerator"):  # a transformers Trainer (the native engine has no accelerator)
        guard("transformers")
    save = trainer._save_checkpoint
    trainer._save_checkpoint = functools.partial(around, save)


def wrap_generate(trainer, around: Callable) -> bool:
    """Route a TRL GRPO/RLOO trainer's `_generate(prompts)` (its rollout) through `around(generate, prompts)`, on
    this instance only. False (nothing changed) for a trainer without one."""
    if not any(c.__name__ in ("GRPOTrainer", "RLOOTrainer") for c in type(trainer).__mro__):
        return False
    guard("trl")
    trainer._generate = functools.partial(around, trainer._generate)
    return True


@contextmanager
def output_dir(trainer, path: Path):
    """While inside, `trainer._get_output_dir()` (where _save_checkpoint writes) answers `path`."""
    trainer._get_output_dir = lambda trial=None: str(path)
    try:
        yield
    finally:
        del trainer._get_output_dir  # back to the class's method


def set_token_count(trainer, count: float) -> bool:
    """TRL's DPO/SFT/reward trainers count `num_tokens` in `_total_train_tokens`, which no checkpoint holds (GRPO
    uses the trainer state's count, which transformers restores): continue it from `count`. False if it has none."""
    if not hasattr(trainer, "_total_train_tokens"):
        return False
    guard("trl")
    trainer._total_train_tokens = type(trainer._total_train_tokens)(count)
    return True
