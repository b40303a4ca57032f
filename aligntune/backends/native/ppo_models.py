"""The three models of PPO for language models: policy, critic (value model) and frozen reference.

- Critic: a separate decoder with a scalar head, `*ForSequenceClassification` with num_labels=1, read
  at every position (the head applied to each token's hidden state, as TRL's former PPOTrainer did),
  so V(s_t) is the value of the prefix ending at token t. `algorithm.value_model=policy` (default)
  copies the policy's backbone weights into a fresh model with a zero-initialised head (first values 0:
  a neutral baseline); a path loads a sequence-classification checkpoint, e.g. a reward model trained
  with `algorithm=reward` (Ouyang et al. 2022 initialise the value function from the reward model).
  Deviation: the critic is a full copy of the backbone even with LoRA on (Ziegler et al. 2019 and
  TRL did the same; a shared trunk would need a joint loss scale).
- Reference: with LoRA, the policy with its adapters disabled (no second copy); otherwise a frozen deep
  copy of the initial policy in eval mode.
- Dropout is switched off in all three (Huang et al. 2022, detail "disable dropout"): with dropout the
  log-probabilities of the rollout and of the update would differ even before any update.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aligntune import hub
from aligntune.errors import ConfigError, ModelError
from aligntune.models import tiny
from aligntune.models.heads import backbone, sequence_classifier_from, value_head


@dataclass
class PPOModels:
    policy: nn.Module  # a PeftModel when LoRA is on
    critic: nn.Module
    reference: nn.Module | None  # None: the adapter-disabled policy is the reference
    lora: bool


def _what(name: str) -> str:
    return f"algorithm.value_model={name!r}"


def check_value_model(name: str, tokenizer, trust_remote_code: bool = False) -> str:
    """Resolve a value-model checkpoint and check, from its config and tokenizer only (no weights), that it is a
    sequence-classification model with one label whose vocabulary is the policy's. Returns its location."""
    from transformers import AutoConfig, AutoTokenizer

    fix = "Use a checkpoint written by `aligntune train algorithm=reward` (its run's model/ folder), or value_model=policy."
    if tiny.is_tiny(name):
        raise ModelError(f"{_what(name)} is a causal-LM preset, not a sequence-classification (value) model.", fix)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{_what(name)} is a directory without config.json, so it is not a model directory.", fix)
        location = str(path.resolve())
    elif hub.looks_like_hub_id(name) and not name.startswith((".", "/", "~")):
        hub.require(name, "model", "algorithm.value_model", fix)
        location = name
    else:
        raise ConfigError(f"{_what(name)} does not exist: it is not a directory (looked in {Path.cwd()}) or a hub id.", fix)
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelError(f"{_what(name)} is a {', '.join(architectures) or 'model of unknown architecture'} checkpoint, "
                         "not a sequence-classification model, so it has no scalar head to serve as the critic.", fix)
    if config.num_labels != 1:
        raise ModelError(f"{_what(name)} has num_labels={config.num_labels}; a value model outputs one scalar "
                         "(num_labels=1).", fix)
    try:
        theirs = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code).get_vocab()
    except (OSError, ValueError):
        theirs = None  # no tokenizer files: compare vocabulary sizes only
    ours = tokenizer.get_vocab()
    same = theirs == ours if theirs is not None else getattr(config, "vocab_size", None) == len(ours)
    if not same:
        raise ModelError(f"{_what(name)} uses a different tokenizer than the policy (vocabularies of {len(theirs or {})} "
                         f"and {len(ours)} tokens differ). The critic reads the policy's token ids, so both must share "
                         "one tokenizer.", "Train the value model from the policy's checkpoint (algorithm=reward "
                         "model.name_or_path=<policy>), or use value_model=policy.")
    return location


def critic_from_policy(policy: nn.Module, trust_remote_code: bool = False) -> nn.Module:
    """A critic with the policy's backbone weights and a zero-initialised value head."""
    return sequence_classifier_from(policy, zero_head=True, trust_remote_code=trust_remote_code)


def load_critic(location: str, trust_remote_code: bool = False) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    critic = AutoModelForSequenceClassification.from_pretrained(location, dtype=torch.float32,
                                                                trust_remote_code=trust_remote_code)
    value_head(critic)
    return critic


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(getattr(model, "config", None), key, None), float):
            setattr(model.config, key, 0.0)


def build_models(model: nn.Module, peft_config, value_location: str | None, cfg) -> PPOModels:
    """Policy (LoRA-wrapped when `peft_config`), critic and reference, on cfg.device, dropout off."""
    critic = load_critic(value_location, cfg.trust_remote_code) if value_location else critic_from_policy(model, cfg.trust_remote_code)
    if value_location and critic.config.vocab_size != model.config.vocab_size:
        raise ModelError(f"The value model's embedding has {critic.config.vocab_size} rows but the policy's has "
                         f"{model.config.vocab_size}.", "Use a value model trained from the policy's checkpoint.")
    disable_dropout(model)
    disable_dropout(critic)
    if peft_config is not None:
        from peft import get_peft_model

        policy, reference = get_peft_model(model, peft_config), None
    else:
        policy, reference = model, copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:
        for m in (policy, critic):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            m.config.use_cache = False
    device = torch.device(cfg.device)
    for m in (policy, critic, reference):
        if m is not None:
            m.to(device)
    return PPOModels(policy=policy, critic=critic, reference=reference, lora=peft_config is not None)


def values_of(critic: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """V for every position: the scalar head applied to each token's last hidden state. [batch, seq]."""
    hidden = backbone(critic)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state
    return value_head(critic)(hidden).squeeze(-1).float()
