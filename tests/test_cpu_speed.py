"""TRL's fused LM head on CPU scores only the completion positions (aligntune.patches), with the
same log-probabilities and gradients as scoring every position."""

from __future__ import annotations

import torch
from trl.trainer import utils as trl_utils

from aligntune.patches import compact_fused_head_on_cpu


def _fused_logps(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out.log_probs.detach(), grads


def test_cpu_scores_only_labelled_positions_with_identical_results(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(0, 97, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt: only the last 5 tokens (the completion) are scored
    from trl.kernels import chunked_logprob

    original = chunked_logprob._use_triton  # TRL's own test (trl.trainer.utils' copy may be patched already)
    assert not original(torch.device("cpu"))  # TRL itself scores every position on CPU
    monkeypatch.setattr(trl_utils, "_use_triton", original)

    full_logps, full_grads = _fused_logps(model, ids, labels)
    rows_seen = []
    projection = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        rows_seen.append(hidden.shape[0])
        return projection(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    assert compact_fused_head_on_cpu() and compact_fused_head_on_cpu()  # idempotent
    compact_logps, compact_grads = _fused_logps(model, ids, labels)

    assert rows_seen == [3 * 5]  # 15 labelled positions projected, not 3 x 11
    assert torch.allclose(full_logps, compact_logps, atol=1e-6)
    assert (compact_logps[:, :6] == 0).all() and (compact_logps[:, 6:] != 0).all()
    for a, b in zip(full_grads, compact_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_cpu_sized_logprob_tiles_give_the_same_log_probs_and_gradients(monkeypatch):
    """TRL's vocabulary tiles of 32,768 against aligntune's CPU size (patches.CPU_LOGPROB_CHUNK): the online
    log-sum-exp runs in another order, so they agree to fp32 rounding (1e-5 on log-probs of a 5,000-word head and
    on the gradients)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligntune import patches

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=5000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(0, 5000, (2, 9))
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    theirs, their_grads = _fused_logps(model, ids, ids)
    assert patches.cpu_logprob_tiles() and trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == patches.CPU_LOGPROB_CHUNK
    assert 5000 > patches.CPU_LOGPROB_CHUNK  # the head really is split into several tiles
    mine, my_grads = _fused_logps(model, ids, ids)
    assert torch.allclose(theirs, mine, atol=1e-5)
    for a, b in zip(their_grads, my_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
