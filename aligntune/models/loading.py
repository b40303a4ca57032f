"""Policy model and tokenizer: resolve the source (no torch), then load.

`model.name_or_path` is a shipped preset (`aligntune:tiny`), a local Hugging Face directory, or a
hub id (checked for reachability first, so offline runs fail in seconds, not after retries).
`model.dtype` is the compute precision (aligntune.models.precision): for bf16 the weights load in bf16
and the optimizer keeps fp32 master copies; otherwise they load in fp32 (fp16 runs under autocast).
"""

from __future__ import annotations

from pathlib import Path

from aligntune import hub
from aligntune.config.schema import ModelConfig
from aligntune.errors import ConfigError, ModelError
from aligntune.models import smollm2, tiny

# Shipped models: name -> a function returning the cached Hugging Face directory (built on first use).
SHIPPED = {**{name: (lambda n=name: tiny.resolve(n)) for name in tiny.preset_names()}, smollm2.PRESET: smollm2.resolve}


def resolve_source(name: str) -> str:
    """Return a loadable location (local directory or hub id), or raise a ConfigError. No torch."""
    if name.startswith(tiny.TINY_PREFIX):
        if name not in SHIPPED:
            raise ConfigError(f"model.name_or_path={name!r} is not a shipped model.", f"Shipped models: {', '.join(SHIPPED)}.")
        if name == smollm2.PRESET:
            smollm2.gguf_file()  # raises with the install command when the package is missing
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name_or_path={name!r} is a directory without config.json, so it is not a Hugging Face "
                              "model directory.", "Point it at a directory written by save_pretrained (or a run's model/ folder).")
        return str(path.resolve())
    if hub.looks_like_hub_id(name) and not name.startswith((".", "/", "~")):
        hub.require(name, "model", "model.name_or_path",
                    "Use model=tiny (offline, random-init, for smoke runs) or a local directory (model.name_or_path=/path/to/model).")
        return name
    raise ConfigError(f"model.name_or_path={name!r} does not exist: it is not a local directory (looked in {Path.cwd()}), "
                      "a shipped preset, or a hub id.", f"Check the path, or use model=tiny ({', '.join(tiny.preset_names())}).")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but no CUDA device is visible to torch.", "Use device=auto or device=cpu.")
    return device


def hidden_size(name_or_path: str) -> int | None:
    """The model's width (hidden size) without loading it or converting anything: shipped presets know theirs, a
    local directory or a cached hub checkpoint has it in config.json. None when it cannot be read here."""
    import json

    if name_or_path == smollm2.PRESET:
        return smollm2.HIDDEN_SIZE
    if tiny.is_tiny(name_or_path):
        spec = tiny.PRESETS.get(name_or_path[len(tiny.TINY_PREFIX):])
        return spec.hidden_size if spec else None
    config = Path(name_or_path).expanduser() / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json") if hub.looks_like_hub_id(name_or_path) else None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        fields = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    for section in (fields, fields.get("text_config") or {}):
        for key in ("hidden_size", "n_embd", "d_model"):
            if isinstance(section.get(key), int):
                return section[key]
    return None


def compute_precision(cfg: ModelConfig, device: str) -> str:
    """The compute precision (fp32|bf16|fp16) of `model.dtype` for this model on `device` (resolved: cpu|cuda)."""
    from aligntune.models.precision import resolve_dtype

    return resolve_dtype(cfg.dtype, device, hidden_size(cfg.name_or_path) if cfg.dtype == "auto" else None)


def model_location(cfg: ModelConfig) -> str:
    """A loadable location of `cfg.name_or_path`: a local directory (shipped models built or converted on first use)
    or a hub id. Raises ConfigError/ModelError with the fix when there is none."""
    source = resolve_source(cfg.name_or_path)
    return str(SHIPPED[source]()) if source in SHIPPED else source


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    location = model_location(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise ModelError(f"Cannot load a tokenizer from {location}: {type(exc).__name__}: {exc}.",
                         "The model directory needs its tokenizer files (save the tokenizer with the model).") from exc
    tok.padding_side = "left"  # generation appends on the right
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"The tokenizer of {location} has neither a pad nor an EOS token.",
                             "Add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it with the model.")
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, dtype=None):
    """The policy on CPU with weights in `dtype` (default fp32); the trainer places it on the device."""
    import torch
    from transformers import AutoModelForCausalLM

    location = model_location(cfg)
    try:
        return AutoModelForCausalLM.from_pretrained(location, dtype=dtype or torch.float32,
                                                    trust_remote_code=cfg.trust_remote_code)
    except ValueError as exc:
        raise ModelError(f"{location} is not a causal language model that transformers can load ({exc}).",
                         "model.name_or_path must name a causal LM (e.g. a *ForCausalLM checkpoint).") from exc
    except OSError as exc:
        raise ModelError(f"Cannot load model weights from {location}: {exc}.",
                         "Check the directory holds the weights (model.safetensors) written by save_pretrained.") from exc


def peft_config(cfg: ModelConfig):
    """A peft.LoraConfig for `model.lora`, or None when LoRA is off."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else list(targets))
