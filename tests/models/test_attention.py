"""model.attn_implementation=auto on CPU: the per-call kernel choice (models/attention.py)."""

import json

import pytest
import torch

from aligntune.config import schema
from aligntune.models import attention, loading


def _tiny(impl: str, dtype=torch.float32, device="cpu"):
    return loading.load_model(schema.ModelConfig(name_or_path="aligntune:tiny", attn_implementation=impl), dtype,
                              device=device)


def test_auto_on_cpu_picks_the_per_call_kernel_and_explicit_choices_are_kept():
    assert _tiny("auto").config._attn_implementation == attention.NAME
    assert _tiny("auto", device=None).config._attn_implementation == "sdpa"  # device unknown: transformers' choice
    assert _tiny("auto", device="cuda").config._attn_implementation == "sdpa"  # CUDA: transformers' choice
    assert _tiny("sdpa").config._attn_implementation == "sdpa"
    assert _tiny("eager").config._attn_implementation == "eager"


def test_eager_runs_only_for_short_16_bit_calls_with_a_graph(monkeypatch):
    calls = []
    real = attention._eager_function

    def spy(module):
        fn = real(module)
        return lambda *a, **k: calls.append(a[2].shape[-2]) or fn(*a, **k)

    monkeypatch.setattr(attention, "_eager_function", spy)
    model = _tiny("auto", torch.bfloat16)
    ids = torch.tensor([[10, 11, 12, 13]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls and set(calls) == {4}  # every layer, keys of length 4
    calls.clear()
    with torch.no_grad():
        model(input_ids=ids)
    assert calls == []  # no graph: SDPA
    monkeypatch.setattr(attention, "MATH_MAX_KEYS", 3)
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls == []  # longer than MATH_MAX_KEYS: SDPA
    monkeypatch.setattr(attention, "MATH_MAX_KEYS", 128)
    model32 = _tiny("auto", torch.float32)
    model32(input_ids=ids, labels=ids).loss.backward()
    assert calls == []  # fp32: not measured faster, SDPA


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_auto_computes_what_sdpa_computes_with_padding(dtype, tolerance):
    """Same function, same masks (left padding included; the loss reads no prediction made at a padding position,
    as in training): fp32 runs SDPA either way (identical); bf16 agrees to its 8-bit mantissa over two layers
    (3e-2 of the largest gradient)."""
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    grads, losses = {}, {}
    for impl in ("sdpa", "auto"):
        model = _tiny(impl, dtype)
        labels = ids.clone()
        labels[0, :5] = -100  # positions 0-4 are predicted from padding (or nothing)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        losses[impl] = out.loss.item()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.float()
    scale = grads["sdpa"].abs().max()
    assert (grads["sdpa"] - grads["auto"]).abs().max() <= tolerance * scale
    assert losses["auto"] == pytest.approx(losses["sdpa"], rel=tolerance)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_decode_attention_is_attention_over_each_key_value_heads_group(mask_kind):
    """fp32 against SDPA with the key/value heads repeated (grouped-query attention, 9 query heads on 3 key/value
    heads as SmolLM2): the same function, summed in another order (1e-6 of values of size ~1)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    q, k, v = torch.randn(5, 9, 1, 16), torch.randn(5, 3, 7, 16), torch.randn(5, 3, 7, 16)
    keep = torch.ones(5, 1, 1, 7, dtype=torch.bool)
    keep[1, ..., :3] = False  # left padding on one sequence
    mask = {"none": None, "bool": keep,
            "additive": torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)}[mask_kind]
    out = attention.decode_attention(q, k, v, mask, scaling=0.3)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                          attn_mask=keep if mask_kind != "none" else None, scale=0.3)
    assert out.shape == (5, 1, 9, 16)
    assert torch.allclose(out, want.transpose(1, 2), atol=1e-6)
    low = attention.decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                     mask if mask is None or mask.dtype == torch.bool else mask.bfloat16(), scaling=0.3)
    assert low.dtype == torch.bfloat16  # bf16 inputs: within bf16 rounding of inputs and result (~2e-2 here)
    assert torch.allclose(low.float(), want.transpose(1, 2), atol=5e-2)


def test_decoding_steps_in_16_bit_take_decode_attention_and_nothing_else_does(monkeypatch):
    monkeypatch.setattr(attention, "DECODE_MIN_ROWS", 2)
    calls = []
    real = attention.decode_attention
    monkeypatch.setattr(attention, "decode_attention", lambda q, *a, **k: calls.append(q.shape) or real(q, *a, **k))
    ids = torch.tensor([[10, 11, 12, 13], [0, 0, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    for dtype in (torch.float32, torch.bfloat16):
        for impl in ("auto", "eager"):
            calls.clear()
            model = _tiny(impl, dtype)
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
            layers = model.config.num_hidden_layers
            expected = 4 * layers if (dtype, impl) == (torch.bfloat16, "auto") else 0  # 4 steps after the prefill
            assert len(calls) == expected and all(shape[-2] == 1 for shape in calls)
    model = _tiny("auto", torch.bfloat16)
    calls.clear()
    model(input_ids=ids[:, :1], labels=ids[:, :1]).loss.backward()
    assert calls == []  # one query, but a graph to train through: the eager branch
    monkeypatch.setattr(attention, "DECODE_MIN_ROWS", 3)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert calls == []  # fewer sequences than DECODE_MIN_ROWS: SDPA


def test_a_saved_model_records_no_attention_implementation(tmp_path):
    model = _tiny("auto")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert attention.NAME not in json.dumps(saved)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
