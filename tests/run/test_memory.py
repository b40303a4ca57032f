"""The process's allocator keeps the memory freed tensors leave for the next ones (aligntune/run/memory.py
keep_freed_memory, `train.keep_freed_memory`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aligntune.errors import ConfigError
from aligntune.run import memory

# The fp32 master-weight optimizer's pattern: every step upcasts each bf16 gradient into a new fp32 tensor and frees
# it after the update (models/precision.py). The shapes are SmolLM2's (a 576-wide embedding slice, MLP and attention
# weights); mallopt is process-wide and has no undo, so each side runs in a fresh interpreter.
STEPS = """
import json, resource, sys
if sys.argv[1] == "keep":
    from aligntune.run import memory
    assert memory.keep_freed_memory()
import torch
from aligntune.models import precision
shapes = [(8192, 576)] + [(1536, 576)] * 30 + [(576, 576)] * 30
params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.bfloat16)) for s in shapes]
optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
precision.keep_fp32_master_weights(optimizer)
for p in params:
    p.grad = torch.ones_like(p)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "pages": sum(p.numel() for p in params) * 4 // 4096}))
"""


def optimizer_step_faults(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not memory.glibc(), reason="mallopt is glibc's")
def test_kept_memory_spares_each_step_faulting_its_gradients_in_again():
    """glibc's defaults hand the freed fp32 gradients back to the kernel, so every step faults all their pages in
    again (measured: all of them, every step); kept, the steps after the first two reuse them. Thresholds: at least
    half the pages against at most 1% of them (a few pages of Python objects and the allocator's own)."""
    default, kept = optimizer_step_faults("default"), optimizer_step_faults("keep")
    pages = default["pages"]
    assert max(kept["faults"][2:]) <= pages // 100, kept
    if "[always]" not in thp_setting():  # transparent huge pages for every mapping fault 2 MiB at a time
        assert min(default["faults"][2:]) >= pages // 2, default


def thp_setting() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""


def test_the_setting_turns_it_on_for_cpu_runs_only_unless_asked(monkeypatch):
    monkeypatch.setattr(memory, "allocator_set_by_environment", lambda: None)
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "glibc", lambda: True)
    assert memory.use_keep_freed_memory(None, "cpu") and len(calls) == 1
    assert not memory.use_keep_freed_memory(None, "cuda") and len(calls) == 1  # not measured on GPU machines
    assert not memory.use_keep_freed_memory(False, "cpu") and len(calls) == 1
    assert memory.use_keep_freed_memory(True, "cuda") and len(calls) == 2


@pytest.mark.parametrize("name,value", [("MALLOC_TRIM_THRESHOLD_", "131072"), ("MALLOC_MMAP_THRESHOLD_", "65536"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                                        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")])
def test_an_allocator_the_environment_chose_is_left_alone_unless_asked(monkeypatch, name, value):
    for other in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(other, raising=False)
    assert memory.allocator_set_by_environment() is None
    monkeypatch.setenv(name, value)
    assert memory.allocator_set_by_environment() == f"{name}={value}"
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "glibc", lambda: True)
    assert not memory.use_keep_freed_memory(None, "cpu") and not calls
    assert memory.use_keep_freed_memory(True, "cpu") and calls == [1]


def test_asking_for_it_without_glibc_is_refused_and_null_passes(monkeypatch):
    monkeypatch.setattr(memory, "allocator_set_by_environment", lambda: None)
    monkeypatch.setattr(memory, "glibc", lambda: False)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: pytest.fail("mallopt called without glibc"))
    assert memory.use_keep_freed_memory(None, "cpu") is False
    with pytest.raises(ConfigError, match="tunes glibc's allocator") as err:
        memory.use_keep_freed_memory(True, "cpu")
    assert "Drop train.keep_freed_memory" in str(err.value)


def test_a_cpu_job_keeps_freed_memory_and_false_leaves_the_allocator_alone(workdir, monkeypatch):
    from aligntune.core.backend_factory import create_rl_trainer

    seen = []
    real = memory.use_keep_freed_memory
    monkeypatch.setattr(memory, "allocator_set_by_environment", lambda: None)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: True)  # the pytest process's allocator stays as it is
    monkeypatch.setattr(memory, "use_keep_freed_memory", lambda setting, device: seen.append(real(setting, device)))
    create_rl_trainer(experiment="smoke", max_steps=1, output_dir=workdir / "a")
    create_rl_trainer(experiment="smoke", max_steps=1, output_dir=workdir / "b",
                      **{"train.keep_freed_memory": False})
    assert seen == [memory.glibc(), False]


def test_a_launched_backend_refuses_the_setting(workdir, capsys):
    from aligntune import cli

    assert cli.main(["train", "backend=verl", "dry_run=true", "model=tiny", "dataset=letters",
                     "train.keep_freed_memory=false", "hydra.run.dir=run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "train.keep_freed_memory tunes the allocator of the process that trains" in err
    assert "backend=verl, which launches its own processes" in err and "Drop train.keep_freed_memory" in err
    assert not (workdir / "run").exists()
