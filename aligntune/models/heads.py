"""Scalar heads on causal LMs: the `*ForSequenceClassification` twin of a decoder, shared by reward-model
training (`algorithm=reward`, a fresh head) and PPO's critic (a zero-initialised head)."""

from __future__ import annotations

import copy

from torch import nn

from aligntune.errors import ModelError


def backbone(model: nn.Module) -> nn.Module:
    """The transformer trunk of a *ForCausalLM / *ForSequenceClassification model (e.g. LlamaModel)."""
    return getattr(model, model.base_model_prefix)


def value_head(critic: nn.Module) -> nn.Linear:
    head = getattr(critic, "score", None)
    if not isinstance(head, nn.Linear):
        raise ModelError(f"The value model ({type(critic).__name__}) has no linear `score` head over token states, so "
                         "it cannot give per-token values.", "Use a decoder-only *ForSequenceClassification checkpoint "
                         "(as written by algorithm=reward), or value_model=policy.")
    return head


def sequence_classifier_from(causal_lm: nn.Module, zero_head: bool, trust_remote_code: bool = False) -> nn.Module:
    """The `*ForSequenceClassification` twin of a causal LM (num_labels=1): the same backbone weights (copied)
    and a fresh scalar head, zero-initialised (`zero_head`, PPO's critic) or at the architecture's default init."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.architectures = None  # set again, to the sequence-classification class, on save
    try:
        twin = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelError(f"transformers has no sequence-classification variant of {type(causal_lm).__name__} ({exc}).",
                         "Use a decoder architecture with a *ForSequenceClassification class (Llama, Qwen, ...), or "
                         "give a sequence-classification checkpoint.") from exc
    twin.to(dtype=next(causal_lm.parameters()).dtype)
    backbone(twin).load_state_dict(backbone(causal_lm).state_dict())
    head = value_head(twin)
    if zero_head:
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    return twin
