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


def test_a_saved_model_records_no_attention_implementation(tmp_path):
    model = _tiny("auto")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert attention.NAME not in json.dumps(saved)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
