"""Format adapters: rows as people have them -> aligntune's canonical columns.

Canonical columns (TRL's own dataset formats, so trainers take them as they are):
    prompts      `prompt` (str or chat messages) + any other columns (rewards read them)
    preferences  `prompt`, `chosen`, `rejected` (strings, or message lists for chat data)
    sft          `prompt` + `completion`, or `messages`
    unpaired     `prompt`, `completion`, `label` (bool: desirable or not), KTO's format; preference pairs become
                 two such rows with `dataset.unpair=true` (`unpair`)

Each adapter is a pure function of one row, so errors can name the row. Chat templates are never
applied here: the trainer applies the tokenizer's template once.
"""

from __future__ import annotations

import re

from aligntune.errors import DataError

# format -> the columns it needs (after dataset.columns mapping)
REQUIRED = {
    "prompt": ("prompt",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "hh_rlhf": ("chosen", "rejected"),
    "ultrafeedback": ("prompt", "chosen", "rejected"),
    "prompt_chosen_rejected": ("prompt", "chosen", "rejected"),
    "gsm8k": ("question", "answer"),
    "unpaired": ("prompt", "completion", "label"),
}
PREFERENCE_FORMATS = ("hh_rlhf", "ultrafeedback", "prompt_chosen_rejected")

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


class RowError(ValueError):
    """A row that does not fit its format; the loader adds the dataset and row number."""


def detect(columns: list[str], first_row: dict) -> str:
    """Guess the format from the columns (and, where two formats share columns, the first row)."""
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        if "prompt" not in cols:
            return "hh_rlhf"
        chosen = first_row.get("chosen")
        if isinstance(chosen, list) and chosen and isinstance(chosen[0], dict) and chosen[0].get("role") == "user":
            return "ultrafeedback"
        return "prompt_chosen_rejected"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols:
        return "messages"
    if "prompt" in cols:
        return "prompt"
    raise RowError(f"its columns {sorted(cols)} match no known format")


# --- hh-rlhf -------------------------------------------------------------------------------------

def parse_hh_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', 'content': 'a'}, {'role': 'assistant', ...}]."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError("the dialogue does not start with '\\n\\nHuman: '")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _split_last_reply(messages: list[dict], column: str) -> tuple[list[dict], dict]:
    if not messages or messages[-1].get("role") != "assistant":
        raise RowError(f"'{column}' does not end with an assistant turn")
    return messages[:-1], messages[-1]


def hh_rlhf(row: dict) -> dict:
    """Prompt = the shared dialogue up to the LAST Assistant turn (earlier turns kept, as messages);
    chosen/rejected = the final replies. Dialogues that do not share that prefix are refused."""
    prompt_c, chosen = _split_last_reply(parse_hh_dialogue(row["chosen"]), "chosen")
    prompt_r, rejected = _split_last_reply(parse_hh_dialogue(row["rejected"]), "rejected")
    if prompt_c != prompt_r:
        raise RowError("'chosen' and 'rejected' do not share the dialogue before their last Assistant turn")
    if not prompt_c:
        raise RowError("the dialogue has no turn before the final Assistant reply")
    return {"prompt": prompt_c, "chosen": [chosen], "rejected": [rejected]}


# --- UltraFeedback-binarized and plain preference pairs ---------------------------------------------

def ultrafeedback(row: dict) -> dict:
    """`chosen`/`rejected` are whole conversations (user turn included): keep only the final replies;
    the prompt becomes the shared messages before them."""
    prompt_c, chosen = _split_last_reply(row["chosen"], "chosen")
    prompt_r, rejected = _split_last_reply(row["rejected"], "rejected")
    if prompt_c != prompt_r:
        raise RowError("'chosen' and 'rejected' do not share the conversation before their last reply")
    prompt = prompt_c or [{"role": "user", "content": row["prompt"]}]
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def _is_text_or_messages(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def prompt_chosen_rejected(row: dict) -> dict:
    for column in ("prompt", "chosen", "rejected"):
        if not _is_text_or_messages(row[column]):
            raise RowError(f"'{column}' is empty or neither text nor a list of {{role, content}} messages")
    if isinstance(row["chosen"], str) != isinstance(row["rejected"], str):
        raise RowError("'chosen' and 'rejected' mix text and messages")
    return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}


# --- GSM8K ------------------------------------------------------------------------------------------

def gsm8k_reference(answer: str) -> str:
    """The final answer after '####', commas removed ('#### 5,000' -> '5000')."""
    if "####" not in answer:
        raise RowError("'answer' has no '#### <final answer>' line")
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k(row: dict) -> dict:
    return {"prompt": row["question"], "answer": gsm8k_reference(row["answer"]), "solution": row["answer"]}


# --- prompts, messages, completions -----------------------------------------------------------------

def prompt_only(row: dict) -> dict:
    if not _is_text_or_messages(row["prompt"]):
        raise RowError("'prompt' is empty or neither text nor a list of {role, content} messages")
    return {"prompt": row["prompt"]}


def messages_to_prompt(row: dict) -> dict:
    """A chat's prompt: every turn before its final assistant reply."""
    messages = row["messages"]
    if not _is_text_or_messages(messages) or isinstance(messages, str):
        raise RowError("'messages' is not a non-empty list of {role, content} messages")
    if messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        raise RowError("'messages' has no turn before the assistant reply")
    return {"prompt": messages}


def messages_for_sft(row: dict) -> dict:
    messages = row["messages"]
    if isinstance(messages, str) or not _is_text_or_messages(messages):
        raise RowError("'messages' is not a non-empty list of {role, content} messages")
    if not any(m.get("role") == "assistant" for m in messages):
        raise RowError("'messages' has no assistant turn to learn from")
    return {"messages": messages}


def prompt_completion(row: dict) -> dict:
    for column in ("prompt", "completion"):
        if not _is_text_or_messages(row[column]):
            raise RowError(f"'{column}' is empty or neither text nor a list of messages")
    return {"prompt": row["prompt"], "completion": row["completion"]}


# --- unpaired (KTO) -----------------------------------------------------------------------------------------

def unpaired(row: dict) -> dict:
    """One labelled completion: `label` must be a JSON boolean (true: desirable, false: undesirable)."""
    out = prompt_completion(row)
    if not isinstance(row["label"], bool):
        raise RowError(f"'label' is {row['label']!r}, not true or false")
    if isinstance(out["prompt"], str) != isinstance(out["completion"], str):
        raise RowError("'prompt' and 'completion' mix text and messages")
    return {**out, "label": row["label"]}


def unpair(pair: dict) -> list[dict]:
    """A canonical preference pair -> its chosen completion (label true) and its rejected one (label false)."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


# (format, what the algorithm needs) -> adapter. Missing pairs cannot be converted.
ADAPTERS = {
    ("prompt", "prompts"): prompt_only,
    ("messages", "prompts"): messages_to_prompt,
    ("prompt_completion", "prompts"): prompt_only,
    ("gsm8k", "prompts"): gsm8k,
    ("hh_rlhf", "prompts"): lambda row: {"prompt": hh_rlhf(row)["prompt"]},
    ("ultrafeedback", "prompts"): lambda row: {"prompt": ultrafeedback(row)["prompt"]},
    ("prompt_chosen_rejected", "prompts"): lambda row: {"prompt": prompt_chosen_rejected(row)["prompt"]},
    ("hh_rlhf", "preferences"): hh_rlhf,
    ("ultrafeedback", "preferences"): ultrafeedback,
    ("prompt_chosen_rejected", "preferences"): prompt_chosen_rejected,
    ("prompt_completion", "sft"): prompt_completion,
    ("messages", "sft"): messages_for_sft,
    ("gsm8k", "sft"): lambda row: {"prompt": row["question"], "completion": row["answer"]},
    ("hh_rlhf", "sft"): lambda row: (lambda p: {"prompt": p["prompt"], "completion": p["chosen"]})(hh_rlhf(row)),
    ("ultrafeedback", "sft"): lambda row: (lambda p: {"prompt": p["prompt"], "completion": p["chosen"]})(ultrafeedback(row)),
    ("prompt_chosen_rejected", "sft"): lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
    ("unpaired", "prompts"): prompt_only,
    ("unpaired", "unpaired"): unpaired,
}

KIND_HINT = {
    "prompts": "a 'prompt' column (text or messages), 'messages', GSM8K 'question'/'answer', or preference pairs",
    "preferences": "preference pairs: hh-rlhf 'chosen'/'rejected' dialogues, UltraFeedback-style message lists, "
                   "or 'prompt'/'chosen'/'rejected'",
    "sft": "'prompt'/'completion', 'messages', GSM8K 'question'/'answer', or preference pairs (trained on 'chosen')",
    "unpaired": "unpaired rows: 'prompt', 'completion' and a boolean 'label' (true: desirable), or preference pairs "
                "with dataset.unpair=true",
}


def adapter(fmt: str, kind: str, name: str):
    fn = ADAPTERS.get((fmt, kind))
    if fn is None:
        raise DataError(f"Dataset {name!r} is in {fmt} format, which has no {kind} for this algorithm.",
                        f"This algorithm needs {KIND_HINT[kind]}.")
    return fn
