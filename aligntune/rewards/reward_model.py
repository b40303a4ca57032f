"""`reward_model`: score prompt + completion with a sequence-classification reward model.

The RLHF reward of Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155): a model trained on human
preference pairs (Bradley-Terry) maps a conversation to a scalar. Any Hugging Face
`AutoModelForSequenceClassification` checkpoint works: a hub id (e.g.
OpenAssistant/reward-model-deberta-v3-large-v2) or a local directory, such as the `model/` folder of
an `aligntune train algorithm=reward` run.

Text: the reward model's own tokenizer sees the conversation the way it was trained on it. For
conversational prompts (message lists), prompt + completion messages go through its chat template
when it has one (else "role: content" lines); for plain-text prompts, prompt + completion + the EOS
token, exactly the text TRL's RewardTrainer trains on (it appends EOS to plain-text pairs, so the
score head learned to read the final EOS position; scoring without it reads an untrained position). The score is the logit of output `label` (default 0;
a model with several outputs needs `label` set).

Loading is lazy and happens once per process and (model, device); scoring runs in batches of
`batch_size` under `torch.inference_mode`, on the policy's device (cuda if available, else cpu)
unless `device` says otherwise. Texts longer than `max_length` tokens are truncated from the left,
so the completion (the part being judged) is kept.
"""

from __future__ import annotations

import functools
from pathlib import Path

from aligntune import hub
from aligntune.errors import RewardError
from aligntune.rewards.text import completion_text


def resolve_location(model: str) -> str:
    """A loadable location for `model` (local directory or cached/reachable hub id); RewardError otherwise."""
    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RewardError(f"The reward model directory {path} has no config.json, so it is not a Hugging Face model.",
                              "Point rewards.<name>.args.model at a directory written by save_pretrained (e.g. a run's "
                              "model/ folder from `aligntune train algorithm=reward`).")
        return str(path.resolve())
    if hub.looks_like_hub_id(str(model)) and not str(model).startswith((".", "/", "~")):
        if hub.is_cached(model, "model") or hub.hub_reachable():
            return str(model)
        raise RewardError(f"The reward model {model!r} is a Hugging Face Hub id that is not in the local cache, and the hub "
                          "cannot be reached from this machine (offline, or HF_HUB_OFFLINE=1).",
                          "Set rewards.<name>.args.model to a local reward-model directory (e.g. the model/ folder of an "
                          "`aligntune train algorithm=reward` run), or download the model where there is network and copy "
                          "the Hugging Face cache here.")
    raise RewardError(f"The reward model {model!r} is neither a local directory nor a hub id.",
                      "Set rewards.<name>.args.model to a model directory or a hub id such as "
                      "OpenAssistant/reward-model-deberta-v3-large-v2.")


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=4)
def load(location: str, device: str):
    """(model, tokenizer) for `location` on `device`, loaded once per process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForSequenceClassification.from_pretrained(location)
    except Exception as exc:  # transformers raises many types for a directory that is not a classifier
        raise RewardError(f"Cannot load a sequence-classification reward model from {location}: "
                          f"{type(exc).__name__}: {exc}.",
                          "The directory needs a *ForSequenceClassification model and its tokenizer.") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"  # keep the completion, which is what is being judged
    tokenizer.padding_side = "right"  # real tokens keep positions 0..n-1 (as TRL pads for reward models)
    return model.to(device).eval(), tokenizer


def conversation_text(prompt, completion, tokenizer) -> str:
    """The text the reward model reads for one prompt + completion (see the module docstring)."""
    if isinstance(prompt, list):
        reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion_text(completion)}]
        messages = [*prompt, *reply]
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)
    text = ("" if prompt is None else str(prompt)) + completion_text(completion)
    eos = tokenizer.eos_token
    return text if not eos or text.endswith(eos) else text + eos


def reward_model(completions: list, prompts: list | None = None, model: str | None = None, batch_size: int = 8,
                 max_length: int = 1024, label: int | None = None, device: str | None = None, **kwargs) -> list[float]:
    """Score of a sequence-classification reward model (hub id or local dir, arg `model`) on prompt + completion."""
    import torch

    if not model:
        raise RewardError("The reward_model reward needs the model to score with, and args.model is not set.",
                          "Set rewards.<name>.args.model to a reward-model directory or hub id.")
    rm, tokenizer = load(resolve_location(model), resolve_device(device))
    outputs = rm.config.num_labels
    index = 0 if label is None else int(label)
    if (label is None and outputs != 1) or not 0 <= index < outputs:
        raise RewardError(f"The reward model {model!r} has {outputs} outputs; which one is the reward is ambiguous "
                          f"(label={label}).", f"Set rewards.<name>.args.label to an index in [0, {outputs}).")
    prompts = prompts if prompts is not None else [None] * len(completions)
    texts = [conversation_text(p, c, tokenizer) for p, c in zip(prompts, completions, strict=True)]
    # A chat template writes its own special tokens; plain text gets the tokenizer's usual ones.
    templated = bool(prompts) and isinstance(prompts[0], list) and bool(tokenizer.chat_template)
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length, add_special_tokens=not templated)
            logits = rm(**batch.to(rm.device)).logits
            scores += logits[:, index].float().cpu().tolist()
    return scores
