"""train.shared_prefix: GRPO/RLOO/DPO scoring with each distinct prompt run once (backends/trl/shared_prefix.py).

The equivalence tests run in fp32 on the tiny model: the shared form is the same function, computed with the
prompt in other batch shapes (4 rows instead of 12, the cache concatenated instead of one sequence), so the two
differ only by the order of fp32 accumulations, ~1e-6 relative. 1e-4 absolute on log-probs of size ~5-10 and 1e-5
relative on the gradient leave room for that and for nothing else (a wrong position or mask moves them by 1e-2 or
more).
"""

from __future__ import annotations

import functools

import pytest
import torch

from aligntune.backends.trl import shared_prefix
from aligntune.core.backend_factory import create_rl_trainer
from aligntune.errors import ConfigError

COMPLETION = 6


def _trainer(workdir, **overrides):
    return create_rl_trainer(experiment="smoke", max_steps=1, output_dir=workdir / "run",
                             **{"model.dtype": "fp32", "eval.after_training": False, **overrides}).trainer


def _batch(prompts: int, group: int, seed: int = 0, shuffle: bool = True):
    """`prompts` left-padded prompts of different lengths, each `group` times with its own completions (some padded
    after an early end), the rows shuffled as TRL shuffles a generation batch (or in order)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for p in range(prompts):
        length = 5 + p
        prompt = torch.randint(3, 50, (length,), generator=g)
        for _ in range(group):
            rows.append((prompt, torch.randint(3, 50, (COMPLETION,), generator=g), int(torch.randint(2, 7, (1,), generator=g))))
    width = 5 + prompts - 1
    ids = torch.zeros(len(rows), width + COMPLETION, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (prompt, completion, ends) in enumerate(rows):
        ids[i, width - len(prompt):width], mask[i, width - len(prompt):width] = prompt, 1
        ids[i, width:], mask[i, width:width + ends] = completion, 1
    order = torch.randperm(len(rows), generator=g) if shuffle else torch.arange(len(rows))
    return ids[order], mask[order]


def _score(trainer, method, ids, mask, **kwargs):
    """Log-probs, entropies and the gradient of a GRPO-like loss on them."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    logps, entropies, _ = method(model, ids, mask, COMPLETION, compute_entropy=True, **kwargs)
    keep = mask[:, -COMPLETION:]
    ((logps * keep).sum() / keep.sum() + 0.1 * (entropies * keep).sum() / keep.sum()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logps.detach() * keep, entropies.detach() * keep, grad


def _forward_rows(monkeypatch, model):
    """The shapes of input_ids each forward of the model's backbone gets (TRL's fused head and the model's own
    forward both run it)."""
    seen = []
    backbone = model.base_model
    real = type(backbone).forward

    @functools.wraps(real)
    def spy(self, *args, **kwargs):
        seen.append(tuple(kwargs["input_ids"].shape))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(backbone), "forward", spy)
    return seen


def _shared_on(trainer) -> bool:
    return hasattr(trainer.model, "_aligntune_unshared_forward")


def test_shared_scoring_equals_trls_and_runs_each_prompt_once(workdir, monkeypatch):
    trainer = _trainer(workdir)
    assert _shared_on(trainer)  # null on CPU: on
    ids, mask = _batch(prompts=3, group=4)
    trainer.model.train()
    with shared_prefix.unshared(trainer):
        expected = _score(trainer, trainer._get_per_token_logps_and_entropies, ids, mask)
    seen = _forward_rows(monkeypatch, trainer.model)
    shared = _score(trainer, trainer._get_per_token_logps_and_entropies, ids, mask)
    width = ids.shape[1] - COMPLETION
    assert seen == [(3, width - 1), (12, COMPLETION + 1)]  # the prompts once, then each row's last prompt token on
    assert torch.allclose(shared[0], expected[0], atol=1e-4, rtol=0)
    assert torch.allclose(shared[1], expected[1], atol=1e-4, rtol=0)
    assert expected[0].abs().max() > 1  # real log-probs, not zeros
    assert ((shared[2] - expected[2]).norm() / expected[2].norm()) < 1e-5
    assert expected[2].norm() > 0


def test_shared_scoring_groups_within_each_chunk_and_leaves_distinct_prompts_to_trl(workdir, monkeypatch):
    trainer = _trainer(workdir)
    ids, mask = _batch(prompts=2, group=4, seed=1, shuffle=False)
    with torch.no_grad():
        with shared_prefix.unshared(trainer):
            expected = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION, batch_size=3)[0]
        seen = _forward_rows(monkeypatch, trainer.model)
        chunked = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION, batch_size=3)[0]
        width = ids.shape[1] - COMPLETION
        # rows p0 p0 p0 | p0 p1 p1 | p1 p1: each chunk's distinct prompts once, then its rows
        assert seen == [(1, width - 1), (3, COMPLETION + 1), (2, width - 1), (3, COMPLETION + 1), (1, width - 1),
                        (2, COMPLETION + 1)]
        keep = mask[:, -COMPLETION:].bool()
        assert torch.allclose(chunked[keep], expected[keep], atol=1e-4, rtol=0)
        seen.clear()
        distinct, distinct_mask = _batch(prompts=4, group=1, seed=2)
        trainer._get_per_token_logps_and_entropies(trainer.model, distinct, distinct_mask, COMPLETION)
        assert seen == [tuple(distinct.shape)]  # nothing to share: TRL's own single forward


def test_key_turns_it_off_and_training_runs_with_it(workdir, monkeypatch):
    calls = []
    real = shared_prefix._shared_forward
    monkeypatch.setattr(shared_prefix, "_shared_forward",
                        lambda *a, **k: calls.append(k.get("fused_lm_head")) or real(*a, **k))
    job = create_rl_trainer(experiment="smoke", max_steps=2, output_dir=workdir / "on", **{"eval.after_training": False})
    before = {n: p.detach().clone() for n, p in job.trainer.model.named_parameters()}
    summary = job.train()
    assert summary["status"] == "completed" and summary["timing/forward_backward"] > 0
    assert calls.count(True) >= 2  # each step's loss went through the shared scoring
    assert any(not torch.equal(p, before[n]) for n, p in job.trainer.model.named_parameters())
    assert not _shared_on(_trainer(workdir / "off", **{"train.shared_prefix": False}))


@pytest.mark.parametrize("overrides, needle", [
    ({"train.gradient_checkpointing": True}, "gradient checkpointing"),
    ({"model.lora.enabled": True, "model.lora.dropout": 0.1}, "dropout"),
])
def test_true_is_refused_where_it_cannot_apply_and_null_keeps_trls_scoring(workdir, overrides, needle):
    with pytest.raises(ConfigError, match=needle) as refused:
        _trainer(workdir / "true", **{"train.shared_prefix": True, **overrides})
    assert "Drop train.shared_prefix" in refused.value.fix
    assert not _shared_on(_trainer(workdir / "null", **overrides))


def test_dpo_loss_and_gradient_equal_trls_with_each_pair_prompt_run_once(workdir, monkeypatch):
    """DPO's rows are [chosen..., rejected...] of the same prompts (right-padded): the policy and the reference
    model each run a pair's prompt once. fp32 tolerances as above."""
    assert not _shared_on(create_rl_trainer(algorithm="dpo", experiment="dpo_smoke", max_steps=1,
                                            output_dir=workdir / "null", **{"eval.after_training": False}).trainer)
    job = create_rl_trainer(algorithm="dpo", experiment="dpo_smoke", max_steps=1, output_dir=workdir / "dpo",
                            **{"model.dtype": "fp32", "eval.after_training": False, "train.shared_prefix": True})
    trainer = job.trainer
    assert _shared_on(trainer)  # DPO: with true (null leaves it off, not measured faster)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    model.train()

    def loss_and_grad():
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    with shared_prefix.unshared(trainer):
        expected = loss_and_grad()
    seen = _forward_rows(monkeypatch, model)
    shared = loss_and_grad()
    rows = inputs["input_ids"].shape[0]
    # policy and reference: the shared prefix once per distinct one (at most one per pair: prompts may also start
    # alike), then every row's rest
    assert len(seen) == 4 and seen[0] == seen[2] and seen[1] == seen[3] and seen[1][0] == rows
    assert seen[0][0] <= rows // 2 and seen[0][1] + seen[1][1] == inputs["input_ids"].shape[1]
    assert torch.allclose(shared[0], expected[0], atol=1e-5, rtol=0)
    assert ((shared[1] - expected[1]).norm() / expected[1].norm()) < 1e-5 and expected[1].norm() > 0


@pytest.mark.parametrize("flags, setting, dtype, shares", [
    ({"avx512_bf16", "amx_bf16"}, None, "bf16", False),  # measured slower there: 0.86-0.90x
    ({"avx512_bf16", "amx_bf16"}, True, "bf16", True),  # true asks for it everywhere
    ({"avx512_bf16", "amx_bf16"}, None, "fp32", True),  # fp32 on that CPU: 1.41x
    ({"avx512_bf16"}, None, "bf16", True),  # Zen 4: 1.14-1.28x
])
def test_gradient_free_scoring_shares_where_it_was_measured_faster(workdir, monkeypatch, flags, setting, dtype, shares):
    from aligntune.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda *a: set(flags))
    trainer = _trainer(workdir, **{"model.dtype": dtype, "train.shared_prefix": setting})
    assert shared_prefix.shares_without_grad(setting, trainer.model) is shares
    ids, mask = _batch(prompts=2, group=4)
    seen = _forward_rows(monkeypatch, trainer.model)
    with torch.no_grad():
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION)
    width = ids.shape[1] - COMPLETION
    assert seen == ([(2, width - 1), (8, COMPLETION + 1)] if shares else [tuple(ids.shape)])
    seen.clear()
    trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, COMPLETION)  # with a graph: always shared
    assert seen == [(2, width - 1), (8, COMPLETION + 1)]
