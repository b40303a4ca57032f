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


def simulate_cpu(monkeypatch, tmp_path, cpuinfo):
    """Make cpu_has_native_bf16 read `cpuinfo` (None: a machine without /proc/cpuinfo)."""
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(precision, "cpu_has_native_bf16",
                        lambda: any(f in precision.cpu_flags(path) for f in precision.NATIVE_BF16_CPU_FLAGS))


# auto on a CPU: bf16 only where it is native AND the model is wide enough for bf16 to be measured faster
# (bench/dtype_choice.py: SmolLM2-135M, 576 wide, 1.82x; the 64-wide tiny model 0.89x).
@pytest.mark.parametrize("cpuinfo,wide,narrow", [(EPYC_AVX2, "fp32", "fp32"), (SAPPHIRE_RAPIDS, "bf16", "fp32"),
                                                 (ZEN4, "bf16", "fp32"), (None, "fp32", "fp32")])
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native_and_pays(tmp_path, monkeypatch, cpuinfo, wide, narrow):
    simulate_cpu(monkeypatch, tmp_path, cpuinfo)
    assert precision.resolve_dtype("auto", "cpu", hidden_size=576) == wide
    assert precision.resolve_dtype("auto", "cpu", hidden_size=None) == wide  # unknown width: a real model
    assert precision.resolve_dtype("auto", "cpu", hidden_size=64) == narrow
    assert precision.resolve_dtype("fp32", "cpu") == "fp32"  # explicit choices are kept
    assert precision.resolve_dtype("bf16", "cpu", hidden_size=64) == "bf16"
    assert precision.resolve_dtype("fp16", "cpu") == "fp16"


@pytest.mark.parametrize("cpuinfo,smollm2", [(EPYC_AVX2, "fp32"), (SAPPHIRE_RAPIDS, "bf16")])
def test_compute_precision_reads_the_models_width(tmp_path, monkeypatch, cpuinfo, smollm2):
    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import compute_precision, hidden_size

    simulate_cpu(monkeypatch, tmp_path, cpuinfo)
    assert hidden_size("aligntune:tiny") == 64 and hidden_size("aligntune:smollm2-135m-instruct") == 576
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 1024}}))
    assert hidden_size(str(local)) == 1024
    assert compute_precision(ModelConfig(name_or_path="aligntune:tiny"), "cpu") == "fp32"  # both CPU kinds
    assert compute_precision(ModelConfig(name_or_path="aligntune:smollm2-135m-instruct"), "cpu") == smollm2
    assert compute_precision(ModelConfig(name_or_path=str(local)), "cpu") == smollm2
    assert compute_precision(ModelConfig(name_or_path="aligntune:tiny", dtype="bf16"), "cpu") == "bf16"


def test_bf16_weights_only_on_a_cpu():
    assert precision.low_precision_weights("bf16", "cpu") and not precision.low_precision_weights("bf16", "cuda")
    assert precision.weight_dtype("bf16", "cuda") is torch.float32  # CUDA: fp32 weights under the trainer's autocast
    assert precision.describe("bf16", "cpu") == "cpu, bf16 (bf16 weights, fp32 master copies in the optimizer)"
    assert precision.describe("bf16", "cuda") == "cuda, bf16 (fp32 weights, bf16 autocast)"


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


def _clipped_step(clip, max_norm, fused=True):
    """One AdamW step of a bf16 layer with fp32 masters after `clip`; returns (masters, first moments, norm)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32).to(torch.bfloat16)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=fused)
    pairs = precision.keep_fp32_master_weights(optimizer)
    layer(torch.randn(16, 64, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    norm = clip(optimizer, list(layer.parameters()), max_norm)
    optimizer.step()
    moments = [optimizer.state[m]["exp_avg"].clone() for _, m in pairs]
    assert not hasattr(optimizer, "grad_scale") and not hasattr(optimizer, precision.CLIP_PENDING)
    return [m.detach().clone() for _, m in pairs], moments, norm


def test_clipping_in_the_step_is_torchs_clip_without_the_bf16_pass():
    def torch_clip(optimizer, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # unclipped: the same norm and the same step, bit for bit
    ours, theirs = _clipped_step(precision.clip_in_the_step, 1e6), _clipped_step(torch_clip, 1e6)
    assert torch.equal(ours[2], theirs[2]) and all(torch.equal(a, b) for a, b in zip(ours[0], theirs[0]))
    # clipped (the norm is ~100x max_norm): the fused step saw g * coefficient, rounded once in fp32. torch's clip
    # rounds g * coefficient to bf16 first, so its first moments differ by up to bf16's relative step, 2^-8
    (_, ours, norm), (_, theirs, _) = _clipped_step(precision.clip_in_the_step, 0.5), _clipped_step(torch_clip, 0.5)
    assert norm > 5
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32).to(torch.bfloat16)
    layer(torch.randn(16, 64, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    coefficient = torch.clamp(0.5 / (norm + 1e-6), max=1.0).float()
    exact = [0.1 * p.grad.float() * coefficient for p in layer.parameters()]  # (1 - beta1) * clipped gradient
    assert any(not torch.equal(a, b) for a, b in zip(ours, theirs))  # the clip did not take torch's bf16 pass
    for a, b, e in zip(ours, theirs, exact):
        assert (a - e).abs().max() <= 1e-6 * e.abs().max()
        assert (b - e).abs().max() <= 2 ** -8 * e.abs().max()
    # an optimizer that does not divide by grad_scale is clipped by torch: identical to torch's clip
    ours, theirs = _clipped_step(precision.clip_in_the_step, 0.5, False), _clipped_step(torch_clip, 0.5, False)
    assert all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))


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
    assert job.trainer.accelerator.clip_grad_norm_.__wrapped__  # clipping goes through clip_in_the_step
    summary = job.train()
    assert summary["status"] == "completed" and seen and set(seen) == {torch.bfloat16}
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (written["device"], written["compute_dtype"]) == ("cpu", "bf16") == (summary["device"], summary["compute_dtype"])
    pairs = precision.master_pairs(job.trainer)
    assert pairs and all(m.dtype == torch.float32 for _, m in pairs)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 2
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the masters, not their bf16 rounding
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(saved[name], before[name])  # trained
    assert not torch.equal(saved[name], saved[name].to(torch.bfloat16).float())  # fp32 detail beyond bf16


def test_master_weights_start_from_the_weights_as_loaded():
    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.fill_(1.0 + 2**-12)  # not representable in bf16: rounds to 1.0
    loaded = layer.weight.detach().clone()
    originals = precision.to_low_precision(layer, torch.bfloat16, keep=True)
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, torch.ones(4, 4, dtype=torch.bfloat16))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    pairs = precision.keep_fp32_master_weights(optimizer, {id(layer.weight): originals["weight"]})
    master = dict((id(p), m) for p, m in pairs)[id(layer.weight)]
    assert torch.equal(master, loaded)  # not the bf16 rounding (1.0)
    # an original that does not round to the parameter (e.g. another tensor's) is not taken
    other = torch.nn.Linear(4, 4).to(torch.bfloat16)
    (pair,) = [pr for pr in precision.keep_fp32_master_weights(torch.optim.SGD([other.weight], lr=0.1),
                                                                {id(other.weight): loaded})]
    assert torch.equal(pair[1], other.weight.float())


def test_bf16_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    """A bf16 run's checkpoint holds the fp32 masters (in optimizer.pt): interrupted at step 2 and resumed, it ends
    bit-identical to the uninterrupted run (tolerance 0: the same operations in the same order on a CPU)."""
    import os
    import signal

    from safetensors.torch import load_file

    from aligntune import cli
    from aligntune.run import report
    from aligntune.run.checkpoints import InterruptGuard

    monkeypatch.setattr(report, "write_run_report_or_warn", lambda run_dir: None)
    args = ["train", "experiment=smoke", "train.batch_size=2", "group_size=4", "algorithm.max_completion_length=6",
            "train.max_steps=3", "train.save_steps=1", "model.dtype=bf16", "train.learning_rate=1e-3"]
    assert cli.main([*args, f"hydra.run.dir={tmp_path / 'straight'}"]) == 0
    original = InterruptGuard.on_step_end

    def on_step_end(self, a, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, a, state, control, **kwargs)

    monkeypatch.setattr(InterruptGuard, "on_step_end", on_step_end)
    run = tmp_path / "resumed"
    assert cli.main([*args, f"hydra.run.dir={run}"]) == 130
    monkeypatch.setattr(InterruptGuard, "on_step_end", original)
    assert cli.main(["train", f"resume={run}", f"hydra.run.dir={run}"]) == 0
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert {t.dtype for t in b.values()} == {torch.float32}
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed bf16 run differs from the uninterrupted one"
