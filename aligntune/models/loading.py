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


FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def trl_chat_templates() -> Path | None:
    """The folder of chat templates TRL ships (trl/chat_templates/*.jinja), found without importing TRL."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return folder if folder.is_dir() else None


def chat_template_text(value: str) -> str:
    """`model.chat_template`: a Jinja file's text, or the template TRL ships under that name."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    folder = trl_chat_templates()
    shipped = folder / f"{value}.jinja" if folder else None
    if shipped is not None and shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    names = sorted(p.stem for p in folder.glob("*.jinja")) if folder else []
    raise ConfigError(f"model.chat_template={value!r} is neither a file (looked in {Path.cwd()}) nor a chat template TRL "
                      "ships.", f"Give a Jinja file, or one of TRL's: {', '.join(names)}.")


def check_model_options(cfg: ModelConfig, device: str | None = None) -> None:
    """The model.* options that need a package, a hub model or a GPU: refused in one paragraph before anything loads.
    `device` (resolved: cpu|cuda), when known; None checks only what needs no torch."""
    import importlib.util

    if cfg.revision is not None and (tiny.is_tiny(cfg.name_or_path) or Path(cfg.name_or_path).expanduser().is_dir()):
        raise ConfigError(f"model.revision={cfg.revision} picks a branch, tag or commit of a hub model, and "
                          f"{cfg.name_or_path} is a local or shipped model (it has one version).", "Drop model.revision.")
    if cfg.tokenizer is not None:
        resolve_source(cfg.tokenizer)
    if cfg.chat_template is not None:
        chat_template_text(cfg.chat_template)
    needs = []
    if cfg.quantization != "none":
        needs.append((f"model.quantization={cfg.quantization}", "bitsandbytes", "bitsandbytes"))
    if cfg.attn_implementation in FLASH_PACKAGES:
        package = FLASH_PACKAGES[cfg.attn_implementation]
        needs.append((f"model.attn_implementation={cfg.attn_implementation}", package, package.replace("_", "-")))
    for key, module, pip_name in needs:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key} needs the {pip_name} package, which is not installed.",
                              f"Install it on a CUDA machine (pip install {pip_name}), or drop {key.split('=')[0]}"
                              + (" (eager and sdpa attention run everywhere)." if "attn" in key else "."))
        if device is not None and device != "cuda":
            raise ConfigError(f"{key} runs on CUDA GPUs only (its kernels are CUDA's), and this run is on {device}.",
                              f"Drop {key.split('=')[0]} on this machine"
                              + (" (eager and sdpa attention run on CPUs)." if "attn" in key else
                                 " (LoRA on full-precision weights runs everywhere)."))


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    if cfg.tokenizer is not None:
        source = resolve_source(cfg.tokenizer)
        location, revision = (str(SHIPPED[source]()) if source in SHIPPED else source), None
    else:
        location, revision = model_location(cfg), cfg.revision
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=cfg.trust_remote_code,
                                            **({"revision": revision} if revision else {}))
    except Exception as exc:
        raise ModelError(f"Cannot load a tokenizer from {location}: {type(exc).__name__}: {exc}.",
                         "The model directory needs its tokenizer files (save the tokenizer with the model).") from exc
    if cfg.chat_template is not None:
        tok.chat_template = chat_template_text(cfg.chat_template)  # saved with the model: eval/generate use it too
    tok.padding_side = "left"  # generation appends on the right
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"The tokenizer of {location} has neither a pad nor an EOS token.",
                             "Add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it with the model.")
        tok.pad_token = tok.eos_token
    return tok


def load_kwargs(cfg: ModelConfig, dtype, quantize: bool = True) -> dict:
    """from_pretrained's keyword arguments for `model.*` (pure, unit-tested key by key): weight dtype, remote code,
    revision, attention kernel, and with `quantize` the bitsandbytes config (QLoRA) placed on this process's GPU."""
    import torch

    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": cfg.trust_remote_code}
    if cfg.revision is not None:
        kwargs["revision"] = cfg.revision
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.attn_implementation
    if quantize and cfg.quantization != "none":
        import os

        from transformers import BitsAndBytesConfig

        compute = torch.float16 if cfg.dtype == "fp16" else torch.bfloat16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                               bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=compute)
            if cfg.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # bitsandbytes quantises on the GPU
    return kwargs


def load_model(cfg: ModelConfig, dtype=None, quantize: bool = True, device: str | None = None):
    """The policy on CPU with weights in `dtype` (default fp32); the trainer places it on the device. A quantised
    model (model.quantization) loads on the GPU; `quantize=False` loads it in full precision (a merge's base).
    `device` (resolved: cpu|cuda), when known, lets `model.attn_implementation=auto` pick per device
    (models/attention.py)."""
    from transformers import AutoModelForCausalLM

    from aligntune.models import attention

    location = model_location(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **load_kwargs(cfg, dtype, quantize))
    except ValueError as exc:
        raise ModelError(f"{location} is not a causal language model that transformers can load ({exc}).",
                         "model.name_or_path must name a causal LM (e.g. a *ForCausalLM checkpoint).") from exc
    except OSError as exc:
        raise ModelError(f"Cannot load model weights from {location}: {exc}.",
                         "Check the directory holds the weights (model.safetensors) written by save_pretrained.") from exc
    attention.apply(model, cfg.attn_implementation, device)
    return model


def peft_config(cfg: ModelConfig):
    """A peft.LoraConfig for `model.lora`, or None when LoRA is off."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else list(targets),
                      use_dora=cfg.lora.use_dora, use_rslora=cfg.lora.use_rslora,
                      modules_to_save=list(cfg.lora.modules_to_save) or None)
