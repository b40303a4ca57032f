"""What GPU users reach for, key by key (issue #19): model loading options, LoRA variants, the rollout engine
(vLLM) and TRL's completions table. Each key changes what reaches the engine, or is refused where it cannot work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from aligntune import cli
from aligntune.backends.trl.grpo import grpo_args
from aligntune.backends.trl.rloo import rloo_args
from aligntune.config import schema
from aligntune.errors import ConfigError
from aligntune.models import loading

OUT = "/tmp/out"


def run_with(model: dict | None = None, lora: dict | None = None, rollout: dict | None = None, train: dict | None = None,
             algorithm=None) -> schema.RunConfig:
    vllm = (rollout or {}).pop("vllm", {}) if rollout else {}
    return schema.RunConfig(
        model=schema.ModelConfig(name_or_path="aligntune:tiny", dtype="fp32", lora=schema.LoraConfig(**(lora or {})),
                                 **(model or {})),
        dataset=schema.DatasetConfig(name="letters"), algorithm=algorithm or schema.GRPOAlgorithmConfig(),
        train=schema.TrainConfig(**(train or {})), rewards={"letter_match": {"weight": 1.0}},
        rollout=schema.RolloutConfig(vllm=schema.VllmConfig(**vllm), **(rollout or {})))


# --- model.* -> from_pretrained / the tokenizer / peft ---------------------------------------------------

@pytest.mark.parametrize("key,value,kwarg,expected", [
    ("revision", "v1.0", "revision", "v1.0"),
    ("attn_implementation", "eager", "attn_implementation", "eager"),
    ("attn_implementation", "sdpa", "attn_implementation", "sdpa"),
    ("trust_remote_code", True, "trust_remote_code", True),
])
def test_model_keys_reach_from_pretrained(key, value, kwarg, expected):
    base = loading.load_kwargs(schema.ModelConfig(name_or_path="aligntune:tiny"), torch.float32)
    changed = loading.load_kwargs(schema.ModelConfig(name_or_path="aligntune:tiny", **{key: value}), torch.float32)
    assert changed[kwarg] == expected and base.get(kwarg) != expected


@pytest.mark.parametrize("quantization,quant_type,double", [("4bit", "nf4", True), ("4bit", "fp4", False), ("8bit", "nf4", True)])
def test_quantization_builds_transformers_bitsandbytes_config(quantization, quant_type, double):
    cfg = schema.ModelConfig(name_or_path="aligntune:tiny", quantization=quantization, quant_type=quant_type,
                             double_quant=double, dtype="bf16", lora=schema.LoraConfig(enabled=True))
    kwargs = loading.load_kwargs(cfg, torch.float32)
    q = kwargs["quantization_config"]
    assert kwargs["device_map"] == {"": 0}
    if quantization == "4bit":
        assert q.load_in_4bit and q.bnb_4bit_quant_type == quant_type and q.bnb_4bit_use_double_quant is double
        assert q.bnb_4bit_compute_dtype == torch.bfloat16
    else:
        assert q.load_in_8bit and not q.load_in_4bit
    assert "quantization_config" not in loading.load_kwargs(cfg, torch.float32, quantize=False)  # a merge's base


@pytest.mark.parametrize("key,value,field,expected", [
    ("use_dora", True, "use_dora", True),
    ("use_rslora", True, "use_rslora", True),
    ("modules_to_save", ["lm_head"], "modules_to_save", ["lm_head"]),
])
def test_lora_variants_reach_peft(key, value, field, expected):
    base = loading.peft_config(schema.ModelConfig(name_or_path="aligntune:tiny", lora=schema.LoraConfig(enabled=True)))
    cfg = schema.ModelConfig(name_or_path="aligntune:tiny", lora=schema.LoraConfig(enabled=True, **{key: value}))
    assert getattr(loading.peft_config(cfg), field) == expected != getattr(base, field)


def test_lora_variants_without_lora_and_quantization_without_lora_are_refused():
    with pytest.raises(ConfigError, match="model.lora.use_dora=True configures the LoRA adapter, and LoRA is off"):
        schema.LoraConfig(use_dora=True)
    with pytest.raises(ConfigError, match="only a LoRA adapter can train on \\(QLoRA\\)"):
        schema.ModelConfig(name_or_path="aligntune:tiny", quantization="4bit")


def test_a_chat_template_override_reaches_the_tokenizer_and_the_saved_model(workdir):
    (workdir / "plain.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = loading.load_tokenizer(schema.ModelConfig(name_or_path="aligntune:tiny", chat_template="plain.jinja"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "[user] hi\n[assistant] "
    folder = loading.trl_chat_templates()
    name = sorted(p.stem for p in folder.glob("*.jinja"))[0]
    tok = loading.load_tokenizer(schema.ModelConfig(name_or_path="aligntune:tiny", chat_template=name))
    assert tok.chat_template == (folder / f"{name}.jinja").read_text()
    run = workdir / "run"
    assert cli.main(["train", "experiment=smoke", "train.max_steps=1", "model.chat_template=plain.jinja",
                     "model.attn_implementation=eager", "train.log_samples=1", f"hydra.run.dir={run}"]) == 0
    saved = json.loads((run / "model" / "tokenizer_config.json").read_text())
    chat = saved.get("chat_template") or (run / "model" / "chat_template.jinja").read_text()
    assert "[assistant]" in chat
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["attn_implementation"] == "eager"


def test_eager_and_sdpa_attention_train_the_tiny_model(workdir):
    for impl in ("eager", "sdpa"):
        model = loading.load_model(schema.ModelConfig(name_or_path="aligntune:tiny", attn_implementation=impl))
        assert model.config._attn_implementation == impl
        ids = torch.tensor([[10, 11, 12]])
        model(input_ids=ids, labels=ids).loss.backward()
        assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_a_different_tokenizer_and_a_revision_of_a_local_model(workdir):
    from aligntune.models import tiny

    tok = loading.load_tokenizer(schema.ModelConfig(name_or_path="aligntune:tiny",
                                                    tokenizer=str(tiny.resolve("aligntune:tiny"))))
    assert tok.pad_token == "<pad>"
    with pytest.raises(ConfigError, match="model.revision=main picks a branch"):
        loading.check_model_options(schema.ModelConfig(name_or_path="aligntune:tiny", revision="main"))


# --- GPU-only options on this CPU machine: refused before anything loads --------------------------------

def test_gpu_only_options_are_refused_on_a_cpu(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in
                        ("bitsandbytes", "flash_attn", "vllm") else real(name, *a))
    lora = schema.LoraConfig(enabled=True)
    with pytest.raises(ConfigError, match="model.quantization=4bit runs on CUDA GPUs only"):
        loading.check_model_options(schema.ModelConfig(name_or_path="aligntune:tiny", quantization="4bit", lora=lora),
                                    "cpu")
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA GPUs only"):
        loading.check_model_options(schema.ModelConfig(name_or_path="aligntune:tiny",
                                                       attn_implementation="flash_attention_2"), "cpu")
    from aligntune.backends.trl.common import check_rollout_engine

    with pytest.raises(ConfigError, match="rollout.engine=vllm runs vLLM on CUDA GPUs"):
        check_rollout_engine(run_with(rollout={"engine": "vllm"}), "cpu")
    loading.check_model_options(schema.ModelConfig(name_or_path="aligntune:tiny", quantization="4bit", lora=lora),
                                "cuda")  # the same options pass where there is a GPU


# --- rollout.* and train.log_completions -> GRPOConfig / RLOOConfig ----------------------------------------

VLLM = [("mode", "server", "vllm_mode"), ("gpu_memory_utilization", 0.5, "vllm_gpu_memory_utilization"),
        ("tensor_parallel_size", 2, "vllm_tensor_parallel_size"), ("enable_sleep", True, "vllm_enable_sleep_mode"),
        ("server_host", "10.1.2.3", "vllm_server_host"), ("server_port", 8001, "vllm_server_port"),
        ("server_timeout", 60.0, "vllm_server_timeout")]


@pytest.mark.parametrize("mapping", [grpo_args, rloo_args])
@pytest.mark.parametrize("key,value,field", VLLM)
def test_every_vllm_key_reaches_the_trl_config(mapping, key, value, field):
    algorithm = schema.GRPOAlgorithmConfig() if mapping is grpo_args else schema.RLOOAlgorithmConfig()
    hf = mapping(run_with(algorithm=algorithm), OUT)
    assert hf["use_vllm"] is False and field not in hf
    base = mapping(run_with(rollout={"engine": "vllm"}, algorithm=algorithm), OUT)
    changed = mapping(run_with(rollout={"engine": "vllm", "vllm": {key: value}}, algorithm=algorithm), OUT)
    assert base["use_vllm"] is True and changed[field] == value != base[field]
    import trl

    getattr(trl, "GRPOConfig" if mapping is grpo_args else "RLOOConfig")(**{**changed, "use_cpu": True})


def test_log_completions_reaches_trl_and_is_refused_where_there_is_no_table():
    assert grpo_args(run_with(train={"log_completions": True}), OUT)["log_completions"] is True
    from aligntune.core.registry import check_supported

    check_supported(run_with(train={"log_completions": True}))
    with pytest.raises(ConfigError, match="train.log_completions=true turns on TRL's completions table"):
        check_supported(run_with(train={"log_completions": True}, algorithm=schema.DPOAlgorithmConfig()))
    ppo = run_with(rollout={"engine": "vllm"}, algorithm=schema.PPOAlgorithmConfig())
    ppo.backend.name = "native"
    with pytest.raises(ConfigError, match="rollout.engine=vllm generates GRPO/RLOO rollouts through TRL.*native engine"):
        check_supported(ppo)


@pytest.mark.parametrize("key", ["use_vllm", "log_completions", "vllm_mode", "model_init_kwargs"])
def test_trl_args_cannot_set_what_aligntune_maps(key):
    run = run_with()
    run.backend.trl_args = {key: True}
    with pytest.raises(ConfigError, match=f"backend.trl_args.{key}"):
        grpo_args(run, OUT)


def test_the_memory_estimate_counts_quantised_weights():
    from aligntune.run import memory

    full = run_with(lora={"enabled": True})
    q4 = schema.RunConfig(**{**full.__dict__, "model": schema.ModelConfig(
        name_or_path="aligntune:tiny", quantization="4bit", lora=schema.LoraConfig(enabled=True))})
    a, b = memory.estimate(full), memory.estimate(q4)
    # 4-bit base weights (half a byte each) plus the adapter in fp32 (4 bytes per trainable parameter = its gradients)
    assert b["weights"] == int(0.5 * a["parameters"]) + b["gradients"] and b["weights"] < a["weights"]
