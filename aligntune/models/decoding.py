"""Rollouts on CPU: every linear layer of the policy as one matmul on weights prepared once per generation.

Decoding reads every weight once per new token, for a handful of rows (the rollout's sequences), so on a CPU its
cost is the weights' trip from memory, not arithmetic. Two things waste that trip, and `prepared_linears` removes
both for the duration of one `generate` call (`rollout.prepared_weights`, on by default on CPU):

- **LoRA's unmerged adapters.** A peft LoRA layer runs the base matmul, then casts the input to the adapters'
  dtype for two more small matmuls and an add: three kernel calls and two casts per layer and token. Here the
  adapter is merged into a *copy* of the base weight (W + s * B @ A, in fp32, rounded once to the weight dtype;
  peft's own `get_delta_weight`), so the base weight itself is never modified (peft's merge/unmerge round trip
  is not exact in bf16) and the copy is dropped when generation ends.
- **oneDNN re-packing the weight on every call.** A bf16 matmul on CPU reorders the weight into oneDNN's blocked
  layout each time it runs. The weight is reordered once (`torch.ops.mkldnn._reorder_linear_weight`) and every
  decode step uses the packed copy (`torch.ops.mkldnn._linear_pointwise`): the same kernel, so full-weight runs
  generate bit-identical tokens (tests/models/test_decoding.py). Only calls of at most the rows it was packed for
  use it: for a prefill's hundreds of rows an AMX Xeon's oneDNN picks another kernel than for the packed layout
  (SmolLM2's logits then differ by rounding), so a full weight's prefill runs the module's own forward.

`bench/decoding.py` measures it side by side. It costs one extra copy of the linear weights while a rollout runs
(in the weight dtype). DoRA and other LoRA variants, layers with their own forward override (accelerate hooks,
offloading) and calls that record a graph keep their normal forward.

A GRPO/RLOO rollout decodes each prompt `group_size` times, and transformers' generate runs the prompt's prefill
once per row. `shared_prefill` (`rollout.shared_prefill`) runs it once per distinct prompt and gives each row a copy
of its prompt's key/value cache: a quarter of the prefill at group_size 4 (`bench/decoding.py`, the default job's
LoRA rollout of 16 x 32 tokens: 2.91 s -> 2.61 s, median of 8). The prompt's last token is decoded as the first
step instead of inside the prefill, so the rows differ from generate's own by rounding.

Distinct prompts often start alike too: a chat template's system turn is the first 16 of the ~41 tokens of every
shipped arith prompt. Where the tokens all prompts of a batch start with would save at least `MIN_COMMON_TOKENS`,
they run once, in one row; that cache is laid out under each row's left padding (the same positions, so the same
keys and values) and the rows' rest runs against it. The held-out evaluation's prefill of 100 distinct prompts
(3.1 s of its ~7 s) shrinks by that share: 1.17-1.18x for the whole generation (`bench/decoding.py --eval`). Caches
with sliding-window or recurrent layers, and right-padded batches, keep the plain prefill.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager


def _packs(weight) -> bool:
    """Whether oneDNN packing applies: a bf16 weight on CPU, in a PyTorch built with oneDNN, on a CPU where oneDNN
    runs bf16 (AVX512-BF16/AMX; on an AVX2-only CPU it refuses, and the weight runs as a plain matmul)."""
    import torch

    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and _onednn_bf16())


@functools.cache
def _onednn_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _lora_weight(module):
    """The weight a peft LoRA Linear computes with (base + active adapters), or None if it cannot be one matmul."""
    import torch

    base = module.base_layer
    if not isinstance(base, torch.nn.Linear) or getattr(module, "fan_in_fan_out", False):
        return None
    if module.disable_adapters or module.merged:
        return base.weight
    active = [a for a in module.active_adapters if a in module.lora_A]
    if any(a in getattr(module, "lora_variant", {}) for a in active):  # DoRA and friends: not a plain delta
        return None
    if not active:
        return base.weight
    merged = base.weight.float()
    for adapter in active:
        merged = merged + module.get_delta_weight(adapter).float()
    return merged.to(base.weight.dtype)


def _targets(model):
    """(module, weight, bias) for every linear layer of `model` that can run as one prepared matmul."""
    import torch

    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency; without it there are no LoRA layers to merge
        LoraLinear = ()
    wrapped = set()
    out = []
    for module in model.modules():
        if "forward" in vars(module):  # somebody (accelerate, a user) already replaced its forward
            continue
        if LoraLinear and isinstance(module, LoraLinear):
            wrapped.add(id(module.base_layer))
            weight = _lora_weight(module)
            if weight is not None:
                out.append((module, weight, module.base_layer.bias))
        elif type(module) is torch.nn.Linear and id(module) not in wrapped:  # subclasses (quantised layers) keep theirs
            out.append((module, module.weight, module.bias))
    return [(m, w, b) for m, w, b in out if _whole(w)]


def _whole(weight) -> bool:
    """A whole weight held by this process: not a DTensor shard (FSDP2) nor the empty placeholder that ZeRO-3 and
    FSDP1 leave in a module between gathers."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        DTensor = ()
    return weight.numel() > 0 and not (DTensor and isinstance(weight, DTensor))


def _prepared_forward(original, weight, bias, packed: int, exact: bool, x, *args, **kwargs):
    """`packed`: the rows the weight was packed for (0: not packed). `exact`: the weight is the module's own (no
    adapter merged into it); then a call with more rows than `packed` (a prefill) takes the module's own forward.
    oneDNN may pick another kernel for many rows than for the packed layout (an AMX Xeon does at a few hundred rows:
    SmolLM2's 8 x 43-token prefill), and so the tokens stay those generate decodes without preparation."""
    import torch

    if args or kwargs or torch.is_grad_enabled():  # a call the prepared matmul does not cover: the module's own
        return original(x, *args, **kwargs)
    if packed:
        if exact and x.numel() > packed * x.shape[-1]:
            return original(x)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


@contextmanager
def prepared_linears(model, rows: int = 1):
    """Within the block, the linear layers of `model` run on prepared weights (see the module docstring); `rows`:
    the number of sequences decoded together (oneDNN's packing hint). Restores every forward on exit."""
    import torch

    changed = []
    try:
        with torch.no_grad():
            for module, weight, bias in _targets(model):
                packed = max(1, rows) if _packs(weight) else 0
                exact = weight is module.weight  # peft's LoRA layers answer `weight` with their base layer's
                if packed:
                    weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), packed)
                module.forward = functools.partial(_prepared_forward, module.forward, weight.detach(),
                                                   None if bias is None else bias.detach(), packed, exact)
                changed.append(module)
        yield len(changed)
    finally:
        for module in changed:
            del module.forward


def _inverse_cdf_multinomial(original, probs, num_samples, replacement=False, *, generator=None, out=None):
    """`torch.multinomial` for one sample per row of a 2-D CPU float tensor, by inverse-CDF sampling: one uniform
    per row and a search in the row's cumulative sum, instead of an exponential variate for every vocabulary entry.
    Same distribution; a zero-probability entry is never drawn (the uniform lies in (0, 1]). Anything else goes to
    the original."""
    import torch

    if (num_samples != 1 or out is not None or probs.dim() != 2 or probs.device.type != "cpu"
            or not probs.dtype.is_floating_point):
        return original(probs, num_samples, replacement, generator=generator, out=out)
    cdf = probs.float().cumsum(-1)
    uniform = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float32)
    drawn = torch.searchsorted(cdf, uniform * cdf[:, -1:])
    return drawn.clamp_(max=probs.shape[1] - 1)


@contextmanager
def inverse_cdf_sampling():
    """Within the block, transformers' sampling step (`torch.multinomial(probs, num_samples=1)` over the whole
    vocabulary) draws by inverse CDF. On CPU the original spends its time on one exponential variate per vocabulary
    entry: 16 ms of every decode step for 16 x 49,152 probabilities (a SmolLM2 rollout), against well under 1 ms
    for this. The draws differ from torch.multinomial's for the same seed (another use of the random stream); their
    distribution is the same (tests/models/test_decoding.py checks it on a known one)."""
    import torch

    original = torch.multinomial
    torch.multinomial = functools.partial(_inverse_cdf_multinomial, original)
    try:
        yield
    finally:
        torch.multinomial = original


# generate() keywords shared_prefill leaves to generate itself when present (anything beyond these: multimodal
# inputs, a cache of the caller's, assistant models)
_PLAIN_GENERATE_KWARGS = {"input_ids", "attention_mask", "generation_config", "disable_compile", "max_new_tokens",
                          "min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "pad_token_id"}


def _forward_keywords(model) -> tuple[str, dict]:
    """(the keyword the model's forward and generate take a key/value cache by, the prefill's other keywords): the
    cache is `cache` from transformers 5.2x (which deprecates `past_key_values`), `past_key_values` before; the
    prefill asks for the last position's logits only where the forward takes `logits_to_keep`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in names else "past_key_values"), ({"logits_to_keep": 1} if "logits_to_keep" in names
                                                                   else {})


def new_cache(model):
    """An empty DynamicCache shaped by the model's config (its per-layer kinds), for a prefill to fill."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # an older transformers: no per-layer kinds to take from the config
        return DynamicCache()


# Fewest prompt tokens the common-prefix prefill must save (its length x the other prompts) to be worth its own
# forward call, which reads every weight once more. SmolLM2 bf16, 16 shared tokens of 43-token arith prompts: 48
# saved (4 prompts) 0.97-1.03x, 112 saved (8 prompts) 1.17-1.20x, 1,584 saved (the evaluation's 100) 1.17-1.18x of
# the whole generation.
MIN_COMMON_TOKENS = 64


def _common_prefix(ids, mask) -> int:
    """How many leading real tokens every row of a left-padded batch shares (0 when the rows are not left-padded or
    share none); at most the shortest row's length."""
    import torch

    if ids.shape[0] < 2 or bool((mask[:, 1:] < mask[:, :-1]).any()):  # a 1 before a 0: not left padding
        return 0
    lengths = mask.sum(-1)
    shortest = int(lengths.min())
    if shortest == 0:
        return 0
    starts = ids.shape[1] - lengths
    columns = starts[:, None] + torch.arange(shortest, device=ids.device)  # each row's first `shortest` tokens
    tokens = ids.gather(1, columns)
    differs = (tokens != tokens[:1]).any(0)
    return int(differs.float().argmax()) if bool(differs.any()) else shortest


def _prefill(model, ids, mask, keyword: str, extra: dict, common: int = 0):
    """A key/value cache of `ids` (left-padded prompts without their last token), positions numbered as generate
    numbers them. `common`: how many tokens every row starts with that run once, in one row (0: none); their cache
    is laid out under each row's padding, and the rows' rest runs against it."""
    import torch
    from transformers.cache_utils import DynamicLayer

    cache = new_cache(model)
    positions = (mask.long().cumsum(-1) - 1).masked_fill_(mask == 0, 0)
    start = ids.shape[1] - int(mask.sum(-1).max())  # the longest row's first column
    width = start + common  # columns [0, width) of row r: its padding, then the prefix from its first real column
    layers = getattr(cache, "layers", None)
    if (not common or width >= ids.shape[1] or not layers
            or not all(type(layer) is DynamicLayer for layer in layers)):  # sliding or recurrent layers: no re-layout
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra, **{keyword: cache})
        return cache
    prefix = ids[:1, ids.shape[1] - int(mask[0].sum()):][:, :common]
    model(input_ids=prefix, attention_mask=torch.ones_like(prefix), position_ids=torch.arange(common)[None].to(ids.device),
          use_cache=True, **extra, **{keyword: cache})
    source = torch.arange(width, device=ids.device)[None] - (ids.shape[1] - mask.sum(-1))[:, None]
    source = source.clamp_(0, common - 1).flatten()  # padding columns take any prefix entry: masked out
    for layer in cache.layers:
        for name in ("keys", "values"):
            kv = getattr(layer, name)[0]  # (heads, common, dim)
            setattr(layer, name, kv.index_select(1, source).view(kv.shape[0], ids.shape[0], width, kv.shape[-1])
                    .transpose(0, 1).contiguous())
    model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions[:, width:], use_cache=True, **extra,
          **{keyword: cache})
    return cache


def _shared_prefill_generate(model, generate, *args, **kwargs):
    """`generate(**kwargs)` with the prompt prefill run once for each run of identical consecutive rows, and the
    tokens all prompts start with run once (see the module docstring); generate itself when there is nothing to share
    or the call is not a plain one."""
    import torch

    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    if (args or ids is None or mask is None or ids.dim() != 2 or ids.shape[1] < 2 or set(kwargs) - _PLAIN_GENERATE_KWARGS
            or any(getattr(config, key, None) not in (None, 1) for key in ("num_return_sequences", "num_beams"))
            or getattr(config, "cache_implementation", None) is not None
            or getattr(config, "prompt_lookup_num_tokens", None) is not None):
        return generate(*args, **kwargs)
    first = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)  # each row that starts a new prompt
    first[1:] = (ids[1:] != ids[:-1]).any(-1) | (mask[1:] != mask[:-1]).any(-1)
    head_ids, head_mask = ids[first, :-1], mask[first, :-1]
    common = _common_prefix(head_ids, head_mask)
    if common * (head_ids.shape[0] - 1) < MIN_COMMON_TOKENS:
        common = 0  # too few tokens saved to pay for its own forward call
    if bool(first.all()) and not common:
        return generate(*args, **kwargs)
    keyword, extra = _forward_keywords(model)
    with torch.no_grad():
        cache = _prefill(model, head_ids, head_mask, keyword, extra, common)
    if not bool(first.all()):
        cache.batch_select_indices(first.long().cumsum(0) - 1)  # row i gets its prompt's cache
    return generate(*args, **kwargs, **{keyword: cache})


@contextmanager
def shared_prefill(model):
    """Within the block, `model.generate` prefills each distinct prompt once (see the module docstring). A model
    whose generate is already replaced on the instance keeps it."""
    if "generate" in vars(model):
        yield False
        return
    model.generate = functools.partial(_shared_prefill_generate, model, model.generate)
    try:
        yield True
    finally:
        del model.generate


def choices(rollout, device: str) -> tuple[bool, bool, bool]:
    """(prepared weights, inverse-CDF sampling, shared prefill) for `rollout` (the run's RolloutConfig) on `device`:
    where a setting is left at auto (null / "auto") it is on for CPU, where it is measured faster, and off on CUDA,
    where the weight copy costs GPU memory and none has been measured."""
    prepared = device == "cpu" if rollout.prepared_weights is None else bool(rollout.prepared_weights)
    sampler = rollout.sampler == "inverse_cdf" or (rollout.sampler == "auto" and device == "cpu")
    shared = device == "cpu" if rollout.shared_prefill is None else bool(rollout.shared_prefill)
    return prepared, sampler, shared


@contextmanager
def fast_decoding(model, rows: int, prepared: bool, sampler: bool, shared: bool = False):
    """`prepared_linears`, `inverse_cdf_sampling` and/or `shared_prefill`, as chosen."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        if prepared:
            stack.enter_context(prepared_linears(model, rows))
        if sampler:
            stack.enter_context(inverse_cdf_sampling())
        if shared:
            stack.enter_context(shared_prefill(model))
        yield


def use_fast_decoding(trainer, rollout, device: str) -> bool:
    """Run a trainer's rollout inside `fast_decoding` as `choices` says: a TRL GRPO/RLOO trainer's `_generate` (its
    HF rollout) or the native PPO engine's `_sample`. False where nothing applies (other trainers, vLLM rollouts,
    both switched off)."""
    from aligntune.patches import wrap_generate

    prepared, sampler, shared = choices(rollout, device)
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        prepared = False  # sharded weights: each process holds a slice, which generation gathers as it runs
    if not (prepared or sampler or shared) or getattr(getattr(trainer, "args", None), "use_vllm", False):
        return False
    if hasattr(trainer, "models") and hasattr(trainer, "_sample"):  # aligntune's native PPO engine
        sample, rows = trainer._sample, getattr(trainer.cfg, "batch_size", 1)

        def native(*args, **kwargs):  # one sample per prompt: no prefill to share
            with fast_decoding(trainer.models.policy, rows, prepared, sampler):
                return sample(*args, **kwargs)

        trainer._sample = native
        return True

    rows = getattr(trainer.args, "generation_batch_size", None) or 1

    def around(generate, *args, **kwargs):
        with fast_decoding(trainer.model, rows, prepared, sampler, shared):
            return generate(*args, **kwargs)

    return wrap_generate(trainer, around)
