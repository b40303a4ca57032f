"""bench/gpu_check.py --dry-run works on a CPU machine: it prints every row, including the rows that need vllm and
bitsandbytes (rollout engines, 4-bit QLoRA), composes every run's config, and trains nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_dry_run_plans_every_row_on_a_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for row in ("train grpo:", "train dpo:", "eval:", "exact, LoRA merge:", "throughput qwen3_0_6b:",
                "rollout hf: aligntune train experiment=smoke", "rollout vllm:", "rollout.engine=vllm",
                "rollout.vllm.mode=colocate", "QLoRA 4-bit:", "model.quantization=4bit"):
        assert row in out, row
    assert "every run's config composes; nothing was trained" in out
    assert not any(tmp_path.iterdir())  # no run directory, no results file


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None or importlib.util.find_spec("vllm") is not None,
                    reason="vllm or bitsandbytes is installed here")
def test_rows_needing_a_missing_package_are_skipped_not_failed(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert gpu_check.missing("hf") is None and gpu_check.missing("vllm") == "vllm is not installed"
    assert gpu_check.check_qlora(tmp_path) == {"check": "QLoRA 4-bit DPO step (model.quantization=4bit)", "ok": None,
                                               "detail": "skipped: bitsandbytes is not installed", "seconds": None}
    assert not any(tmp_path.iterdir())  # nothing was trained
