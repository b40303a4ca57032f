"""`reward_model` on a tiny sequence-classification model built locally (no hub)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from aligntune.errors import RewardError
from aligntune.models import tiny
from aligntune.rewards import reward_model as rm
from aligntune.rewards.check import check_rewards
from aligntune.rewards.registry import bind
from aligntune.rewards.reward_model import conversation_text, reward_model


def build_reward_model(directory, num_labels: int = 1):
    tokenizer = AutoTokenizer.from_pretrained(tiny.resolve("aligntune:tiny"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_reward_model(tmp_path_factory.mktemp("rm"))


PROMPTS = ["Say hi.", "Count to three.", "Name a colour."]
COMPLETIONS = ["hi", "one two three, and then a much longer tail of text", "blue"]


def test_scores_are_floats_that_depend_on_the_text(model_dir):
    scores = reward_model(COMPLETIONS, prompts=PROMPTS, model=model_dir)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert len(set(scores)) == 3
    assert reward_model(COMPLETIONS, prompts=PROMPTS, model=model_dir) == scores  # deterministic


def test_batching_and_padding_do_not_change_scores(model_dir):
    one_by_one = reward_model(COMPLETIONS, prompts=PROMPTS, model=model_dir, batch_size=1)
    batched = reward_model(COMPLETIONS, prompts=PROMPTS, model=model_dir, batch_size=3)
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_scores_match_a_direct_forward_pass(model_dir):
    model = LlamaForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        text = PROMPTS[0] + COMPLETIONS[0] + tokenizer.eos_token  # plain text ends with EOS, as TRL trains it
        expected = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert reward_model(COMPLETIONS[:1], prompts=PROMPTS[:1], model=model_dir) == [pytest.approx(expected, abs=1e-5)]


def test_conversational_prompts_go_through_the_chat_template(model_dir):
    _, tokenizer = rm.load(model_dir, "cpu")
    prompt = [{"role": "user", "content": "Say hi."}]
    completion = [{"role": "assistant", "content": "hi"}]
    text = conversation_text(prompt, completion, tokenizer)
    assert text == "<|user|>Say hi.<|end|><|assistant|>hi<|end|>"
    assert conversation_text(prompt, "hi", tokenizer) == text  # a plain completion is an assistant turn
    chat_score = reward_model([completion], prompts=[prompt], model=model_dir)
    model = LlamaForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():  # the templated text as is: no extra EOS, no added special tokens
        expected = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert chat_score == [pytest.approx(expected, abs=1e-5)]
    assert chat_score != pytest.approx(reward_model(["hi"], prompts=["Say hi."], model=model_dir), abs=1e-5)


def test_loaded_once_per_process(model_dir):
    rm.load.cache_clear()
    reward_model(["a"], prompts=["b"], model=model_dir)
    reward_model(["c"], prompts=["d"], model=model_dir)
    info = rm.load.cache_info()
    assert info.misses == 1 and info.hits == 1


def test_passes_the_pre_training_check(model_dir):
    rows = [{"prompt": "Say hi."}, {"prompt": [{"role": "user", "content": "Say hi."}]}]
    check_rewards({"rm": bind("rm", "reward_model", {"model": model_dir, "batch_size": 2})}, rows[:1])
    check_rewards({"rm": bind("rm", "reward_model", {"model": model_dir})}, rows[1:])


def test_uncached_hub_id_offline_is_a_clear_error():
    with pytest.raises(RewardError, match="not in the local cache.*cannot be reached") as err:
        reward_model(["x"], prompts=["y"], model="no-such-org/no-such-reward-model")
    assert "no-such-org/no-such-reward-model" in str(err.value) and "local reward-model directory" in str(err.value)


def test_bad_locations_and_arguments(tmp_path, model_dir):
    with pytest.raises(RewardError, match="no config.json"):
        reward_model(["x"], prompts=["y"], model=str(tmp_path))
    with pytest.raises(RewardError, match="args.model is not set"):
        reward_model(["x"], prompts=["y"])
    with pytest.raises(RewardError, match="neither a local directory nor a hub id"):
        reward_model(["x"], prompts=["y"], model="./missing/dir")
    two = build_reward_model(tmp_path / "two", num_labels=2)
    with pytest.raises(RewardError, match="2 outputs"):
        reward_model(["x"], prompts=["y"], model=two)
    with pytest.raises(RewardError, match="2 outputs"):
        reward_model(["x"], prompts=["y"], model=two, label=2)
    model = LlamaForSequenceClassification.from_pretrained(two).eval()
    with torch.no_grad():
        tokenizer = AutoTokenizer.from_pretrained(two)
        logits = model(**tokenizer("yx" + tokenizer.eos_token, return_tensors="pt")).logits[0]
    assert reward_model(["x"], prompts=["y"], model=two, label=1) == [pytest.approx(logits[1].item(), abs=1e-5)]
    assert reward_model(["x"], prompts=["y"], model=two, label=0) == [pytest.approx(logits[0].item(), abs=1e-5)]


def test_plain_text_ends_with_eos_like_trls_reward_training(model_dir):
    _, tokenizer = rm.load(model_dir, "cpu")
    eos = tokenizer.eos_token
    assert conversation_text("Say hi.", "hi", tokenizer) == "Say hi.hi" + eos
    assert conversation_text("Say hi.", "hi" + eos, tokenizer) == "Say hi.hi" + eos  # never twice
