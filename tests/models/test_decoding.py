"""Rollouts on prepared weights and inverse-CDF sampling (models/decoding.py)."""

import pytest
import torch

from aligntune.config import schema
from aligntune.models import decoding, loading


def _tiny(dtype=torch.bfloat16):
    return loading.load_model(schema.ModelConfig(name_or_path="aligntune:tiny"), dtype, device="cpu").eval()


def _generate(model, seed=0, **kwargs):
    torch.manual_seed(seed)
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12,
                              pad_token_id=0, **kwargs)


def _no_overrides(model):
    return not any("forward" in vars(m) for m in model.modules())


def test_full_weight_bf16_decoding_on_packed_weights_is_bit_identical():
    model = _tiny()
    plain = _generate(model, do_sample=True, temperature=0.7)
    with torch.no_grad():
        logits = model(input_ids=plain).logits
    with decoding.prepared_linears(model, rows=2) as changed:
        assert changed == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        prepared = _generate(model, do_sample=True, temperature=0.7)
        with torch.no_grad():
            prepared_logits = model(input_ids=plain).logits
    assert torch.equal(plain, prepared)
    assert torch.equal(logits, prepared_logits)
    assert _no_overrides(model)


@pytest.mark.skipif(not decoding._onednn_bf16(), reason="oneDNN runs no bf16 here (AVX2-only CPU): nothing is packed")
def test_a_prefill_of_more_rows_than_packed_takes_the_modules_own_forward(monkeypatch):
    """oneDNN may compute many rows with another kernel than the packed layout's (an AMX Xeon does for SmolLM2's
    344-row prefill), so a full weight's prefill runs nn.Linear's own F.linear and decoding steps the packed copy;
    a merged LoRA weight (not the module's own) runs packed at any size."""
    from peft import LoraConfig, get_peft_model

    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: calls.append(a[0].shape) or linear(*a, **k))
    model = _tiny()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.no_grad(), decoding.prepared_linears(model, rows=2):
        model(input_ids=torch.tensor([[11], [12]]))  # a decoding step: 2 rows
        assert calls == []
        model(input_ids=torch.tensor([[11, 12, 13], [21, 22, 23]]))  # a prefill: 6 rows
        assert len(calls) == linears and all(shape[:2] == (2, 3) for shape in calls)
    lora = get_peft_model(_tiny(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    calls.clear()
    with torch.no_grad(), decoding.prepared_linears(lora, rows=2):
        lora(input_ids=torch.tensor([[11, 12, 13], [21, 22, 23]]))
    assert len(calls) == 1  # the LM head only: peft's all-linear leaves it unadapted, so it is its own weight


def test_lora_decodes_on_its_merged_weights_without_touching_the_base():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    ids = torch.randint(5, 100, (2, 7))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits.float()
        with decoding.prepared_linears(model, rows=2):
            merged = model(input_ids=ids).logits.float()
        exact = model(input_ids=ids).logits.float()
    assert torch.equal(unmerged, exact)  # back to peft's own forward
    # bf16: (W + s B A) rounded once against W x + s B (A x) in fp32 adapters; the logits of this 2-layer model agree
    # to a few bf16 ulps of their scale
    assert (merged - unmerged).abs().max() <= 0.05 * unmerged.abs().max()
    assert not torch.equal(merged, _tiny_logits(ids))  # the adapter counts
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert _no_overrides(model)


def _tiny_logits(ids):
    with torch.no_grad():
        return _tiny()(input_ids=ids).logits.float()


def test_without_onednn_bf16_the_weights_run_as_plain_matmuls(monkeypatch):
    """An AVX2-only CPU: oneDNN refuses bf16, so nothing is packed and decoding is still bit-identical."""
    monkeypatch.setattr(decoding, "_onednn_bf16", lambda: False)
    model = _tiny()
    plain = _generate(model)
    with decoding.prepared_linears(model, rows=2):
        assert not any(isinstance(m.forward.args[1], torch.Tensor) and m.forward.args[1].is_mkldnn
                       for m in model.modules() if "forward" in vars(m))
        assert torch.equal(_generate(model), plain)


def test_calls_with_a_graph_and_failures_keep_the_modules_own_forward():
    model = _tiny(torch.float32)
    ids = torch.tensor([[10, 11, 12]])
    with decoding.prepared_linears(model, rows=1):
        out = model(input_ids=ids, labels=ids)  # grad enabled: the original forward, so it trains
        out.loss.backward()
        assert model.lm_head.weight.grad is not None
    with pytest.raises(RuntimeError, match="boom"):
        with decoding.prepared_linears(model, rows=1):
            raise RuntimeError("boom")
    assert _no_overrides(model)


def test_inverse_cdf_sampling_draws_the_right_distribution_and_never_a_zero():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0]]).repeat(50_000, 1)
    torch.manual_seed(0)
    with decoding.inverse_cdf_sampling():
        drawn = torch.multinomial(probs, num_samples=1)
        assert torch.multinomial(probs[:4], 2).shape == (4, 2)  # not one sample per row: torch's own
    assert drawn.shape == (100_000, 1) and drawn.dtype == torch.int64
    first = torch.bincount(drawn[0::2, 0], minlength=4).float() / 50_000
    # 50,000 draws: the binomial standard error of a frequency is at most 0.0023; 5 of them is 0.011
    assert torch.allclose(first, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.011)
    assert first[1] == 0
    assert torch.all(drawn[1::2] == 3)
    assert torch.multinomial is not decoding.inverse_cdf_sampling  # restored
    assert "partial" not in type(torch.multinomial).__name__


def test_auto_turns_all_three_on_for_cpu_only_and_the_keys_can_force_them():
    cfg = schema.RolloutConfig()
    assert decoding.choices(cfg, "cpu") == (True, True, True)
    assert decoding.choices(cfg, "cuda") == (False, False, False)
    off = schema.RolloutConfig(prepared_weights=False, sampler="multinomial", shared_prefill=False)
    assert decoding.choices(off, "cpu") == (False, False, False)
    on = schema.RolloutConfig(prepared_weights=True, sampler="inverse_cdf", shared_prefill=True)
    assert decoding.choices(on, "cuda") == (True, True, True)


def test_vllm_rollouts_refuse_the_hf_decoding_keys():
    from aligntune.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.engine=vllm generates in vLLM"):
        schema.RolloutConfig(engine="vllm", sampler="inverse_cdf")
    with pytest.raises(ConfigError, match="rollout.shared_prefill"):
        schema.RolloutConfig(engine="vllm", shared_prefill=True)
    with pytest.raises(ConfigError, match="rollout.sampler"):
        schema.RolloutConfig(sampler="gumbel")


def test_a_grpo_run_decodes_its_rollouts_on_the_fast_path_and_the_keys_turn_it_off(workdir, monkeypatch):
    from aligntune.core.backend_factory import create_rl_trainer

    seen = []
    real = decoding.fast_decoding

    def spy(model, rows, prepared, sampler, shared=False):
        seen.append((prepared, sampler, shared, torch.multinomial))
        return real(model, rows, prepared, sampler, shared)

    monkeypatch.setattr(decoding, "fast_decoding", spy)
    job = create_rl_trainer(experiment="smoke", max_steps=2, output_dir=workdir / "on")
    summary = job.train()
    assert summary["status"] == "completed" and summary["timing/generation"] > 0
    assert len(seen) == 2 and all(s[:3] == (True, True, True) for s in seen)  # one rollout per step, all on (CPU)
    assert torch.multinomial.__module__ == "torch"  # restored after every rollout
    seen.clear()
    job = create_rl_trainer(experiment="smoke", max_steps=1, output_dir=workdir / "off",
                            **{"rollout.prepared_weights": False, "rollout.sampler": "multinomial",
                               "rollout.shared_prefill": False})
    job.train()
    assert seen == []


def test_sharded_or_empty_weights_keep_their_own_forward():
    """ZeRO-3/FSDP1 leave an empty placeholder between gathers; such a layer is not prepared."""
    model = _tiny(torch.float32)
    model.lm_head.weight = torch.nn.Parameter(torch.empty(0))
    with decoding.prepared_linears(model, rows=1) as changed:
        assert "forward" not in vars(model.lm_head)
        assert changed == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) - 1


def _groups(rows_per_prompt: int):
    """Two left-padded prompts, each repeated `rows_per_prompt` times in consecutive rows (as GRPO's sampler
    orders a rollout)."""
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]]).repeat_interleave(rows_per_prompt, 0)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).repeat_interleave(rows_per_prompt, 0)
    return ids, mask


def _forward_batches(model, monkeypatch):
    import functools

    seen = []
    real = type(model).forward

    @functools.wraps(real)  # the signature shared_prefill reads its keywords from
    def spy(self, *args, **kwargs):
        seen.append(kwargs["input_ids"].shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    return seen


def test_shared_prefill_runs_each_prompt_once_and_decodes_what_generate_decodes(monkeypatch):
    """fp32 greedy: the same tokens as transformers' own generate (the prompt's last token is decoded as the first
    step instead of inside the prefill, which changes nothing the argmax can see in fp32 here)."""
    model = _tiny(torch.float32)
    ids, mask = _groups(3)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    seen = _forward_batches(model, monkeypatch)
    with torch.no_grad(), decoding.shared_prefill(model) as on:
        assert on
        shared = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert seen[0] == (2, 4)  # the prefill: one row per prompt, all but its last token
    assert all(shape == (6, 1) for shape in seen[1:])  # every later step decodes one token for each of the 6 rows
    assert torch.equal(plain, shared)
    assert "generate" not in vars(model)  # restored


def test_shared_prefill_leaves_distinct_prompts_and_other_calls_to_generate(monkeypatch):
    model = _tiny(torch.float32)
    seen = _forward_batches(model, monkeypatch)
    ids, mask = _groups(1)
    with torch.no_grad(), decoding.shared_prefill(model):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
        assert seen[0] == (2, 5)  # nothing shared: generate's own prefill
        seen.clear()
        ids, mask = _groups(2)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0,
                       num_beams=2)
        assert seen[0] == (8, 5)  # beam search: generate's own (its beams expand the rows)


def _common_start(rows):
    """Left-padded prompts (pad 0) that all start with the same 16 tokens, as a chat template's system turn does."""
    start = list(range(31, 47))
    rows = [start + r for r in rows]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    return ids, (ids != 0).long()


def _shared_decodes_as_generate(model, monkeypatch, ids, mask, tokens: int = 8):
    """Greedy decoding of `ids` within `shared_prefill` gives generate's own tokens; returns the input shapes of the
    model's forward calls under it."""
    kwargs = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": tokens, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        expected = model.generate(**kwargs)
    seen = _forward_batches(model, monkeypatch)
    with torch.no_grad(), decoding.shared_prefill(model):
        decoded = model.generate(**kwargs)
    assert torch.equal(decoded, expected)
    return seen


def test_common_prefix_counts_the_tokens_every_left_padded_row_starts_with():
    ids, mask = _common_start([[41, 42, 43], [44], [41, 45, 46, 47, 48]])
    assert decoding._common_prefix(ids, mask) == 16
    assert decoding._common_prefix(ids[:1], mask[:1]) == 0  # one row: nothing to share
    ids[1, -2] = 49  # the second row's 16th token differs
    assert decoding._common_prefix(ids, mask) == 15
    assert decoding._common_prefix(ids.flip(1), mask.flip(1)) == 0  # right padding: not laid out for it


def test_the_prompts_common_start_is_prefilled_once_and_the_cache_is_generates_own(monkeypatch):
    """fp32: the cache built from one run of the 16 shared tokens (laid out under each row's padding) plus the rows'
    rest holds what one prefill of the whole rows holds at every real position (1e-5: the same function, matmuls of
    other shapes), and greedy decoding from it gives generate's own tokens."""
    from transformers import DynamicCache

    assert 16 * 4 >= decoding.MIN_COMMON_TOKENS  # five prompts sharing 16 tokens save enough to share

    model = _tiny(torch.float32)
    ids, mask = _common_start([[41, 42, 43], [44], [41, 45, 46, 47, 48], [49, 50], [51, 52, 53, 54]])
    keyword, extra = decoding._forward_keywords(model)
    plain = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{keyword: plain})
        shared = decoding._prefill(model, ids, mask, keyword, extra, decoding._common_prefix(ids, mask))
    real = mask.bool()[:, None, :, None]
    for a, b in zip(plain.layers, shared.layers):
        assert a.keys.shape == b.keys.shape
        assert torch.allclose(a.keys * real, b.keys * real, atol=1e-5)
        assert torch.allclose(a.values * real, b.values * real, atol=1e-5)

    seen = _shared_decodes_as_generate(model, monkeypatch, ids, mask)
    assert seen[:2] == [(1, 16), (5, ids.shape[1] - 1 - 16)]  # the shared start once, then each row's rest
    assert all(shape == (5, 1) for shape in seen[2:])


def test_repeated_prompts_with_a_common_start_share_both(monkeypatch):
    """GRPO's layout (each prompt's rows together) with prompts that start alike: the shared start runs once, each
    distinct prompt's rest once, then every row decodes; fp32 greedy tokens are generate's own."""
    model = _tiny(torch.float32)
    ids, mask = _common_start([[41, 42, 43], [44], [41, 45, 46, 47, 48], [49, 50], [51, 52, 53, 54]])
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    seen = _shared_decodes_as_generate(model, monkeypatch, ids, mask)
    assert seen[:2] == [(1, 16), (5, ids.shape[1] - 1 - 16)]
    assert all(shape == (10, 1) for shape in seen[2:])


def test_sampled_evaluation_prefills_each_prompt_once_for_its_samples(monkeypatch):
    from aligntune.evaluation import generate

    model = _tiny(torch.float32)
    tok = loading.load_tokenizer(schema.ModelConfig(name_or_path="aligntune:tiny"))
    tok.padding_side = "left"
    seen = _forward_batches(model, monkeypatch)
    out = generate(model, tok, ["abc", "defgh"], samples=3, temperature=0.7, max_new_tokens=4, seed=0)
    assert [len(group) for group in out] == [3, 3]
    assert seen[0][0] == 2  # two prompts prefilled, six completions
    seen.clear()
    generate(model, tok, ["abc", "defgh"], samples=3, temperature=0.7, max_new_tokens=4, seed=0,
             rollout=schema.RolloutConfig(shared_prefill=False))
    assert seen[0][0] == 6
