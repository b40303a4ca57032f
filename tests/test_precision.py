"""model.dtype=auto and bf16 compute with fp32 master weights (aligntune/models/precision.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from aligntune.models import precision

EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize("cpuinfo,expected", [(EPYC_AVX2, "fp32"), (SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"),
                                              (None, "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native(tmp_path, monkeypatch, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(precision, "cpu_has_native_bf16",
                        lambda: any(f in precision.cpu_flags(path) for f in precision.NATIVE_BF16_CPU_FLAGS))
    assert precision.resolve_dtype("auto", "cpu") == expected
    assert precision.resolve_dtype("fp32", "cpu") == "fp32"  # explicit choices are kept
    assert precision.resolve_dtype("bf16", "cpu") == "bf16"
    assert precision.resolve_dtype("fp16", "cpu") == "fp16"


@pytest.mark.parametrize("supported,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert precision.resolve_dtype("auto", "cuda") == expected


def test_weight_dtypes():
    assert precision.weight_dtype("bf16") is torch.bfloat16
    assert precision.weight_dtype("fp32") is torch.float32
    assert precision.weight_dtype("fp16") is torch.float32  # fp16 runs under autocast on fp32 weights


def test_master_weights_keep_updates_that_bf16_weights_would_drop():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8).to(torch.bfloat16)
    start = {n: p.detach().float().clone() for n, p in layer.named_parameters()}
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-4)
    pairs = precision.keep_fp32_master_weights(optimizer)
    assert precision.keep_fp32_master_weights(optimizer) is pairs  # idempotent
    assert len(pairs) == 2 and all(m.dtype == torch.float32 for _, m in pairs)
    assert all(p.dtype == torch.float32 for g in optimizer.param_groups for p in g["params"])  # the optimizer steps fp32
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    for _ in range(3):
        optimizer.zero_grad()
        layer(x).float().pow(2).mean().backward()
        optimizer.step()
    weight, master = pairs[0]
    assert weight.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16  # compute stays bf16
    moved = (master - start["weight"]).abs()
    assert moved.max() > 0  # the fp32 copy took the 3 small steps ...
    assert moved.max() < 1e-3  # ... each far below bf16's resolution at these magnitudes
    # the bf16 weight is exactly the master's rounding (plain bf16 SGD would have dropped most of these updates)
    assert torch.equal(weight, master.to(torch.bfloat16))
    # checkpoints carry the fp32 copies; loading restores them exactly
    state = optimizer.state_dict()
    assert torch.equal(state["fp32_master_weights"][0], master)
    with torch.no_grad():
        master.add_(1.0)
        weight.add_(1.0)
    optimizer.load_state_dict(state)
    assert torch.equal(master, state["fp32_master_weights"][0]) and torch.equal(weight, master.to(torch.bfloat16))


def test_bf16_grpo_trains_on_bf16_weights_and_saves_the_fp32_masters(tmp_path):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(experiment="smoke", max_steps=2, output_dir=str(tmp_path / "run"),
                            group_size=4, **{"model.dtype": "bf16", "train.learning_rate": 1e-3,
                                                       "algorithm.max_completion_length": 8})
    model = job.trainer.model
    assert job.master_weights and model.dtype == torch.bfloat16
    assert job.trainer.args.bf16 is False  # no autocast: the weights themselves are bf16
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    seen = []
    step = job.trainer.training_step

    def record(*args, **kwargs):  # the dtype the forward/backward actually runs in
        seen.append(next(job.trainer.model.parameters()).dtype)
        return step(*args, **kwargs)

    job.trainer.training_step = record
    summary = job.train()
    assert summary["status"] == "completed" and seen and set(seen) == {torch.bfloat16}
    pairs = precision.master_pairs(job.trainer)
    assert pairs and all(m.dtype == torch.float32 for _, m in pairs)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 2
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the masters, not their bf16 rounding
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(saved[name], before[name])  # trained
    assert not torch.equal(saved[name], saved[name].to(torch.bfloat16).float())  # fp32 detail beyond bf16
