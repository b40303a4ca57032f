"""Preflight memory estimate, before any weights are loaded: warn when the run will not fit the machine.

The model is built from its config on the `meta` device (no memory, no weights read), which gives the exact
parameter count and shapes. Bytes, in the run's compute precision (models/precision.py; w = 2 for bf16 weights on a
CPU, else 4):

  weights     w x parameters (policy); with bf16 weights on a CPU also the fp32 master copies, 4 x trainable
  gradients   4 x trainable parameters (all, or LoRA's adapters); with bf16 weights on a CPU the bf16 gradients
              and their fp32 upcast, 6 x trainable
  optimizer   8 x trainable parameters (AdamW: two fp32 moments)
  reference   w x parameters when the algorithm keeps a frozen copy (GRPO/RLOO with beta > 0, DPO unless
              reference-free or precomputed, KTO unless precomputed, PPO); none with LoRA (the reference is the
              adapter-disabled base)
  critic      PPO: a second policy-sized model with its gradients and optimizer state
  rollout     GRPO/RLOO/PPO rollouts on prepared weights (rollout.prepared_weights, on for CPU): w x the linear
              layers' weights, the copy they decode on
  activations per micro-batch of sequences: layers x tokens x hidden x 34 bytes (Korthikanti et al. 2022,
              "Reducing Activation Recomputation", 16-bit; doubled for fp32; attention scores only with eager
              attention, SDPA keeps none) plus the logits (tokens x vocab x 4 x 2) where they are materialised:
              TRL's trainers (GRPO, RLOO, DPO, KTO, SFT) score through its fused LM head, in tiles, and keep none;
              with gradient checkpointing only each layer's input is kept. Tokens per sequence: the configured
              maximum (algorithm.max_length, or prompt + completion), an upper bound of what the data holds,
              then the data's measured longest (`batch_shape`: GRPO/RLOO/PPO prompts count at least PROMPT_TOKENS
              without dataset.max_prompt_length, and longer ones at their length); with train.shared_prefix a
              GRPO/RLOO micro-batch's distinct prompts count once each.

An estimate, not a measurement: allocator overhead, CUDA context and generation's KV cache are left out,
so a warning is issued only when the estimate alone exceeds the memory available. bench/memory_estimate.py compares
it (plus the libraries' resident memory when it is made) with the peak RSS of real runs.

The process's allocator (glibc): `keep_freed_memory` keeps the pages freed tensors leave for the next step's
(`train.keep_freed_memory`), and `return_freed_memory` hands them back between phases (after training, after each
evaluated model).
"""

from __future__ import annotations

import logging
import os
import sys

from aligntune.config.schema import RunConfig

log = logging.getLogger("aligntune")
PROMPT_TOKENS = 256  # assumed prompt length of online algorithms without dataset.max_prompt_length


def _meta_model(run: RunConfig):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aligntune.errors import ModelError
    from aligntune.models.loading import model_location

    location = model_location(run.model)
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=run.model.trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=run.model.trust_remote_code), config
    except ValueError as exc:  # as models.loading.load_model reports it
        first_line = str(exc).strip().splitlines()[0]  # the rest lists every causal-LM config class transformers has
        raise ModelError(f"{location} is not a causal language model that transformers can load ({first_line}).",
                         "model.name_or_path must name a causal LM (e.g. a *ForCausalLM checkpoint).") from exc


def _lora_params(model, run: RunConfig) -> int:
    import torch

    targets = run.model.lora.target_modules
    total = 0
    for name, module in model.named_modules():
        targeted = targets == ["all-linear"] or any(name.split(".")[-1] == t for t in targets)
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name and targeted:
            total += run.model.lora.r * (module.in_features + module.out_features)
    return total


def batch_shape(run: RunConfig, longest: int | None = None) -> tuple[int, int]:
    """(sequences per forward/backward, tokens per sequence). `longest`: the data's longest sequence (for prompt
    algorithms its longest prompt plus algorithm.max_completion_length), where it has been measured. A configured
    limit caps it. The prompt length assumed without dataset.max_prompt_length (PROMPT_TOKENS) is no limit: longer
    prompts raise the estimate to their length, and shorter ones keep the assumption as a floor. That floor stands
    for what the components do not model and grows with the same shapes: the memory the allocator keeps from the
    rollout and the scoring pass (the default job, 43-token prompts: 0.69x of its peak RSS with the measured length,
    0.83x with the floor; bench/memory_estimate.py --default-job)."""
    seqs, limit = _configured_shape(run)
    if not longest:
        return seqs, limit
    if run.algorithm.name in PROMPT_ALGORITHMS and run.dataset.max_prompt_length is None:
        return seqs, max(limit, longest)
    return seqs, min(limit, longest)


PROMPT_ALGORITHMS = ("grpo", "rloo", "ppo")  # their sequences: a dataset prompt, then a generated completion


def _configured_shape(run: RunConfig) -> tuple[int, int]:
    algo, t = run.algorithm, run.train
    if algo.name in ("grpo", "rloo"):
        per_step = t.batch_size * algo.group_size // algo.num_mini_batches
        return t.micro_batch_size or per_step, (run.dataset.max_prompt_length or PROMPT_TOKENS) + algo.max_completion_length
    if algo.name == "ppo":
        return t.micro_batch_size or t.batch_size, (run.dataset.max_prompt_length or PROMPT_TOKENS) + algo.max_completion_length
    # chosen and rejected go through together; a KTO row goes with its mismatched KL sequence (loss_type kto)
    pairs = 2 if algo.name in ("dpo", "reward") or getattr(algo, "loss_type", None) == "kto" else 1
    return (t.micro_batch_size or t.batch_size) * pairs, algo.max_length


def _needs_reference(run: RunConfig) -> bool:
    algo = run.algorithm
    if run.model.lora.enabled:
        return False
    if algo.name in ("grpo", "rloo"):
        return algo.beta > 0
    if algo.name == "dpo":
        return not (algo.reference_free or algo.precompute_ref_log_probs)
    if algo.name == "kto":
        return not algo.precompute_ref_log_probs
    return algo.name == "ppo"


QUANTIZED_BYTES = {"none": 4, "8bit": 1, "4bit": 0.5}


FUSED_HEAD = ("grpo", "rloo", "dpo", "kto", "sft")  # TRL trainers that score through its fused LM head


def _prepared_copy(run: RunConfig, device: str, model, w: int) -> int:
    """rollout.prepared_weights: the rollouts of transformers' generate decode on a prepared copy of every linear
    layer's weight (models/decoding.py), w bytes a value, held while a rollout runs."""
    import torch

    from aligntune.core.registry import ROLLOUT_ALGORITHMS
    from aligntune.models.decoding import choices

    if run.algorithm.name not in ROLLOUT_ALGORITHMS or run.rollout.engine != "hf" or not choices(run.rollout, device)[0]:
        return 0
    return w * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def estimate(run: RunConfig, precision: str = "fp32", device: str = "cpu", tokens: int | None = None) -> dict[str, int]:
    """Bytes per component (see the module docstring) and their `total`, for compute `precision` on `device`.
    `tokens`: the longest sequence the data holds, where it has been measured (default: the configured limit)."""
    from aligntune.backends.trl import shared_prefix
    from aligntune.core.registry import resolve_backend
    from aligntune.models.attention import keeps_probabilities
    from aligntune.models.precision import low_precision_weights

    model, config = _meta_model(run)
    params = sum(p.numel() for p in model.parameters())
    lora = run.model.lora.enabled
    trainable = _lora_params(model, run) if lora else params
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    vocab = getattr(config, "vocab_size", 0)
    seqs, tokens = batch_shape(run, tokens)
    # train.shared_prefix: a GRPO/RLOO micro-batch runs each distinct prompt once, then every row's completion
    # (backends/trl/shared_prefix.py); `through` is the tokens per sequence that then go through the model
    through, prefix = tokens, 0
    if run.algorithm.name in ("grpo", "rloo") and shared_prefix.expected(run, device):
        prompts = min(seqs, max(1, run.train.batch_size // run.algorithm.num_mini_batches))
        prefix = tokens - run.algorithm.max_completion_length - 1
        through = (prompts * prefix + seqs * (tokens - prefix)) / seqs
    low = low_precision_weights(precision, device)
    w = 2 if low else 4
    per_value = 1 if precision in ("bf16", "fp16") else 2  # the 34 bytes are 16-bit activations
    if run.train.gradient_checkpointing:
        per_layer = seqs * tokens * hidden * 2 * per_value
        activations = layers * per_layer + seqs * tokens * hidden * 34 * per_value
    else:
        activations = int(layers * seqs * through * hidden * 34 * per_value)
        impl = "eager" if getattr(config, "_attn_implementation", None) == "eager" else run.model.attn_implementation
        if keeps_probabilities(impl, precision, device, tokens):  # SDPA/flash keep no attention matrix
            # queries x keys per sequence: each row's own (all of them, or its completion's against the whole row)
            # and, shared, each prompt's once
            scores = seqs * (tokens - prefix) * tokens + (seqs * through - seqs * (tokens - prefix)) * prefix
            activations += int(layers * 5 * heads * scores * 2)
    fused = resolve_backend(run) == "trl" and run.algorithm.name in FUSED_HEAD
    activations += 0 if fused else seqs * tokens * vocab * 4 * 2
    if run.model.quantization != "none":  # bitsandbytes: 1 byte (8bit), ~0.5 (4bit) a weight; fp32 adapters
        weights = int(QUANTIZED_BYTES[run.model.quantization] * params) + 4 * trainable
    else:
        weights = w * params + (4 * trainable if low or lora else 0)  # fp32 masters (bf16 CPU) or fp32 adapters
    out = {"weights": weights, "gradients": (6 if low and not lora else 4) * trainable, "optimizer": 8 * trainable,
           "reference": w * params if _needs_reference(run) else 0,
           "critic": 16 * params if run.algorithm.name == "ppo" else 0, "activations": activations,
           "rollout": _prepared_copy(run, device, model, w)}
    out["total"] = sum(out.values())
    out["parameters"] = params
    return out


def available(device: str) -> tuple[int, str]:
    """(bytes, what they are) of the device the run trains on."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free, "free GPU memory"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"], "available RAM"
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def process_rss() -> int:
    """This process's resident memory now, in bytes (0 where /proc is missing): what the libraries already hold when
    the estimate is made, before any weights load; bench/memory_estimate.py adds it to compare with the peak RSS."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def return_freed_memory() -> bool:
    """Collect garbage and hand the heap's free pages back to the OS (glibc's `malloc_trim`): without it, memory a
    finished phase freed stays in this process's RSS, and the next phase's allocations land on top of it. False
    where the C library has no malloc_trim (not glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
NO_TRIM = -1  # M_TRIM_THRESHOLD -1: the heap's free top is never trimmed by itself (man mallopt)


def glibc() -> bool:
    """Whether this process's C library is glibc (whose allocator keep_freed_memory tunes)."""
    import platform

    return platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep the memory tensors free for the next ones instead of handing it back to the
    kernel (`train.keep_freed_memory`). By default glibc unmaps every freed block above its mmap threshold (128 KiB,
    raised as blocks are freed, to at most 32 MiB) and trims the heap's free top, so each training step's tensors
    (the fp32 gradient upcast, activations, the rollout's cache) are faulted in afresh: 105k page faults (all of
    the fp32 gradients' pages) per optimizer step of SmolLM2-135M's full weights on a 2-core AMD EPYC Zen 5 under
    KVM, ~1.6 us each. With the threshold at its largest and no automatic trim, the heap keeps the freed pages and
    the next step reuses them: that optimizer step 289 -> 116-132 ms, and side by side in bench/precision_speed.py
    (--steps 6) the full-weight GRPO step 1.10-1.18x, the DPO step 1.26-1.45x; the default job (LoRA: a small
    optimizer) even (BENCHMARKS.md, 2026-12-02 eighth session). Allocation only: the same numbers. Peak RSS moved
    by at most 0.05 GiB (the memory is reused, not added to), and `return_freed_memory` still hands it back between
    phases.
    Process-wide and kept for the process's life (mallopt has no undo). False where the C library is not glibc."""
    import ctypes

    if not glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIM))


def allocator_set_by_environment(environ=os.environ) -> str | None:
    """The environment variable that already chose this process's allocator or its thresholds (glibc's MALLOC_*_
    and GLIBC_TUNABLES glibc.malloc.*, or a malloc library in LD_PRELOAD: jemalloc, tcmalloc, mimalloc), or None."""
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        if environ.get(name):
            return f"{name}={environ[name]}"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return f"GLIBC_TUNABLES={environ['GLIBC_TUNABLES']}"
    if "malloc" in environ.get("LD_PRELOAD", ""):
        return f"LD_PRELOAD={environ['LD_PRELOAD']}"
    return None


def use_keep_freed_memory(setting: bool | None, device: str) -> bool:
    """`train.keep_freed_memory`: null turns keep_freed_memory on for CPU runs where the C library is glibc (off on
    CUDA: not measured there), unless the environment already chose the allocator's behaviour (as an explicit
    OMP_NUM_THREADS keeps the threads: run/threads.py); true turns it on anywhere (refused without glibc); false
    leaves the allocator as it is. Returns whether it is on."""
    if setting is False or (setting is None and device != "cpu"):
        return False
    chosen = allocator_set_by_environment()
    if setting is None and chosen:
        log.info("allocator: left as %s sets it (train.keep_freed_memory=true would override it)", chosen)
        return False
    if not glibc():
        if setting:
            import platform

            from aligntune.errors import ConfigError

            library = " ".join(platform.libc_ver()).strip() or "not glibc"
            raise ConfigError(f"train.keep_freed_memory=true tunes glibc's allocator (mallopt), and this process's C "
                              f"library is {library}.", "Drop train.keep_freed_memory (null leaves other C libraries "
                              "as they are).")
        return False
    on = keep_freed_memory()
    log.info("allocator: freed memory is %s", "kept for reuse (train.keep_freed_memory)" if on else "glibc's default")
    return on


def release_training_state(trainer) -> None:
    """Once training has ended, free what only it needed: the optimizer's moments and the gradients (the model
    and its saved weights stay). The merge and the evaluation after training then load their models into that
    room instead of on top of it. A later `trainer.train()` in the same process starts the moments afresh."""
    optimizer = getattr(trainer, "optimizer", None)
    state = getattr(optimizer, "state", None)
    if hasattr(state, "clear"):
        state.clear()
    model = getattr(trainer, "model", None)
    if model is not None and hasattr(model, "zero_grad"):
        model.zero_grad(set_to_none=True)
    return_freed_memory()


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**27 else f"{n / 2**20:.1f} MB"


def check(run: RunConfig, precision: str = "fp32", device: str | None = None, tokens: int | None = None,
          warn: bool = True) -> dict[str, int]:
    """Estimate, log it, and warn (once, with the breakdown) when it exceeds the memory of `device` (default: the
    run's, resolved). `tokens`: as for `estimate`; the job checks again once the data's lengths are measured (with
    `warn=False` where that estimate can only be lower and the first one already warned)."""
    from aligntune.errors import AligntuneError
    from aligntune.models.loading import resolve_device

    device = device or resolve_device(run.device)
    try:
        est = estimate(run, precision, device, tokens)
    except AligntuneError:
        raise
    except Exception as exc:
        log.warning("memory estimate unavailable: %s: %s", type(exc).__name__, exc)
        return {}
    have, what = available(device)
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in est.items() if k not in ("total", "parameters") and v)
    measured = f", with the data's longest sequence ({tokens} tokens)" if tokens else ""
    log.info("memory estimate%s: %s for %s parameters (%s); %s: %s", measured, _gb(est["total"]), est["parameters"],
             parts, what, _gb(have))
    if est["total"] > have and warn:
        seqs, tokens = batch_shape(run, tokens)
        text = (f"warning: this run needs about {_gb(est['total'])} ({parts}; {seqs} sequences of up to {tokens} tokens "
                f"per forward/backward), more than the {_gb(have)} of {what}. Lower train.micro_batch_size or the "
                "lengths, enable train.gradient_checkpointing or model.lora.enabled, or use a smaller model.")
        print(text, file=sys.stderr, flush=True)
        log.warning(text)
    return est
