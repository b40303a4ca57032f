"""`model=tiny`: a small random-init causal LM and a character-level tokenizer, built offline.

Deterministic: the same spec and seed give the same weights and vocabulary on every machine. The
built model is cached as a normal Hugging Face directory (`save_pretrained`) under the aligntune
cache, so later runs load it like any local checkpoint. It exists for tests, CI smoke runs and the
offline demo; it knows nothing until trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass
from pathlib import Path

TINY_PREFIX = "aligntune:"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 512
    seed: int = 0


PRESETS = {"tiny": TinySpec()}


def is_tiny(name_or_path: str) -> bool:
    return name_or_path.startswith(TINY_PREFIX)


def preset_names() -> list[str]:
    return [TINY_PREFIX + k for k in PRESETS]


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNTUNE_CACHE", Path.home() / ".cache" / "aligntune"))


def vocabulary() -> list[str]:
    """Special tokens, then every printable ASCII character (space and newline included)."""
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    return SPECIAL_TOKENS + chars


def _build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=SPECIAL_TOKENS[3:])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build(name: str, directory: Path) -> None:
    """Build the preset `name` into `directory` (written atomically: a temp dir, then a rename)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = PRESETS[name]
    tok = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "aligntune_tiny.json").write_text(json.dumps({"preset": name, **asdict(spec)}, indent=2))
    try:
        tmp.rename(directory)
    except OSError:  # another process won the race: its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name_or_path: str) -> Path:
    """Return the cached directory of a tiny preset, building it on first use."""
    name = name_or_path[len(TINY_PREFIX):]
    spec = PRESETS[name]
    digest = hashlib.sha256(json.dumps([asdict(spec), vocabulary(), CHAT_TEMPLATE]).encode()).hexdigest()[:12]
    directory = cache_root() / "models" / f"{name}-{digest}"
    if not (directory / "config.json").exists():
        from aligntune.run.console import one_time_step

        directory.parent.mkdir(parents=True, exist_ok=True)
        with one_time_step(f"building the {name} model and tokenizer (once)", f"built the {name} model in {directory}"):
            build(name, directory)
    return directory
