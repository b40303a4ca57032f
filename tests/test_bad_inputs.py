"""The bad-input catalogue: each case drives `aligntune train` in-process and must

  * exit non-zero (2: the user's to fix),
  * print exactly one paragraph on stderr that starts with 'error:' and names the problem and the fix,
  * print no traceback (none was asked for),
  * leave no run directory that claims to be complete (config errors leave none at all; errors found
    while loading data, model or rewards, or a reward failing once training runs, leave one whose
    summary.json says 'failed', with the error).

Cases are grouped as config (caught before Hydra creates anything), data, model and reward (caught while
the job is built, before any training step; or, for rewards that raise or hang later, during training). `needles` are words the paragraph must contain: the
problem (the key, file or reward it is about) and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligntune import cli
from aligntune.errors import EXIT_USAGE

FIXTURES = Path(__file__).parent / "fixtures"

# --- files the cases point at (written into the test's empty directory) ------------------------------

REWARDS_PY = '''
def ok(completions, **kw):
    return [1.0] * len(completions)

def raises(completions, **kw):
    raise RuntimeError("boom")

def short(completions, **kw):
    return [1.0]

def nan(completions, **kw):
    return [float("nan")] * len(completions)

def text(completions, **kw):
    return ["high"] * len(completions)

def hangs(completions, **kw):
    import threading

    threading.Event().wait()  # forever: its timeout_s must stop the run

def raises_later(completions, trainer_state=None, **kw):
    if trainer_state.global_step >= 1:  # passes the check before training and step 1, fails at step 2
        raise ValueError("late boom")
    return [float(len(str(c))) for c in completions]

def hangs_later(completions, trainer_state=None, **kw):
    if trainer_state.global_step >= 1:
        hangs(completions)
    return [float(len(str(c))) for c in completions]
'''


def _write_files(root: Path) -> None:
    (root / "rewards_mod.py").write_text(REWARDS_PY)
    (root / "notes.txt").write_text("prompt: hello\n")
    (root / "empty.jsonl").write_text("")
    (root / "no_prompt.jsonl").write_text('{"question": "a?"}\n{"question": "b?"}\n')
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1"))
    (root / "not_object.jsonl").write_text('{"prompt": "ok"}\n[1, 2, 3]\n')
    (root / "bad.csv").write_text('prompt,answer\n"unterminated,1\n')
    (root / "same_pairs.jsonl").write_text('{"prompt": "Say a.", "chosen": "a", "rejected": "a"}\n'
                                           '{"prompt": "Say b.", "chosen": "b b", "rejected": "b b"}\n')
    (root / "all_desirable.jsonl").write_text('{"prompt": "Say a.", "completion": "a", "label": true}\n'
                                              '{"prompt": "Say b.", "completion": "b", "label": true}\n')
    (root / "int_labels.jsonl").write_text('{"prompt": "Say a.", "completion": "a", "label": 1}\n'
                                           '{"prompt": "Say b.", "completion": "c", "label": 0}\n')
    (root / "empty_dir").mkdir()
    (root / "long_prompt.jsonl").write_text(json.dumps({"prompt": "Type a.", "answer": "a"}) + "\n"
                                            + json.dumps({"prompt": "x" * 2000, "answer": "b"}) + "\n")
    (root / "long_pair.jsonl").write_text(json.dumps({"prompt": "Pick a.", "chosen": "a" * 700, "rejected": "z"}) + "\n"
                                          + json.dumps({"prompt": "Pick b.", "chosen": "b", "rejected": "z"}) + "\n")
    import shutil

    from transformers import ViTConfig, ViTModel

    from aligntune.models import tiny

    vision = root / "vision"  # an image encoder, with a working tokenizer beside it
    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, image_size=8,
                       patch_size=4)).save_pretrained(vision)
    for f in Path(tiny.resolve("aligntune:tiny")).glob("tokenizer*"):
        shutil.copy(f, vision / f.name)
    for name, drop in (("no_pad", ["pad_token"]), ("no_pad_no_eos", ["pad_token", "eos_token"])):
        shutil.copytree(tiny.resolve("aligntune:tiny"), root / name)
        config = json.loads((root / name / "tokenizer_config.json").read_text())
        for key in drop:
            config.pop(key)
        (root / name / "tokenizer_config.json").write_text(json.dumps(config))
    (root / "a_file").write_text("not a model")


C = "config"
D = "data"
M = "model"
B = "build"  # config errors only the engine can see (TRL's own fields), found while the job is built
R = "reward"
# (kind, overrides, needles). Needles are matched against the paragraph with whitespace collapsed.
CASES = [
    # config: unknown groups and keys
    (C, ["algorithm=grpoo"], ["algorithm=grpoo", "Valid options:"]),
    (C, ["model=nope"], ["model=nope", "Valid options:", "tiny"]),
    (C, ["dataset=nope"], ["dataset=nope", "Valid options:", "letters"]),
    (C, ["experiment=nope"], ["experiment=nope", "Valid options:", "smoke"]),
    (C, ["foo=1"], ["Unknown config key foo", "aligntune train --cfg job"]),
    (C, ["train.bacth_size=2"], ["train.bacth_size", "Check the spelling"]),
    (C, ["+train.foo=1"], ["train.foo", "Check the spelling"]),
    (C, ["algorithm=dpo", "group_size=4"], ["group_size", "shortcut", "Drop"]),
    (B, ["+backend.trl_args.foo=1"], ["backend.trl_args.foo", "trl.GRPOConfig"]),
    (B, ["+backend.trl_args.learning_rate=0.1"], ["backend.trl_args.learning_rate", "aligntune key"]),
    (B, ["algorithm.dynamic_sampling=true", "+backend.trl_args.entropy_coef=0.01"],
     ["algorithm.dynamic_sampling", "entropy_coef", "loss_type=dapo"]),
    (C, ["train.batch_size="], ["train.batch_size", "type"]),
    # config: GPU-only options on this machine (issue #19): refused before anything loads
    (C, ["rollout.engine=vllm"], ["rollout.engine=vllm", "not installed", "aligntune[vllm]"]),
    (C, ["model.quantization=4bit", "model.lora.enabled=true"], ["model.quantization=4bit", "bitsandbytes"]),
    (C, ["model.quantization=8bit"], ["model.quantization=8bit", "LoRA", "model.lora.enabled=true"]),
    (C, ["model.attn_implementation=flash_attention_2"], ["flash_attention_2", "flash-attn", "sdpa"]),
    (C, ["model.chat_template=nope.jinja"], ["model.chat_template='nope.jinja'", "TRL's"]),
    (C, ["model.revision=main"], ["model.revision=main", "Drop model.revision"]),
    (B, ["+backend.trl_args.model_init_kwargs={}"], ["backend.trl_args.model_init_kwargs", "model.attn_implementation"]),
    (C, ["algorithm=dpo", "train.log_completions=true"], ["train.log_completions", "samples.jsonl"]),
    # config: the CPU decoding switches (issue #20) where nothing decodes with transformers' generate
    (C, ["algorithm=dpo", "rollout.sampler=multinomial"], ["rollout.sampler", "samples no rollouts", "Drop"]),
    (C, ["rollout.sampler=gumbel"], ["rollout.sampler", "gumbel", "inverse_cdf"]),
    (C, ["backend=verl", "rollout.prepared_weights=false"], ["rollout.prepared_weights", "verl", "Drop"]),
    (C, ["algorithm=sft", "dataset=letters_sft", "rollout.shared_prefill=true"],
     ["rollout.shared_prefill", "samples no rollouts", "Drop"]),
    (C, ["rollout.engine=vllm", "rollout.shared_prefill=true"], ["rollout.shared_prefill", "vLLM", "rollout.engine=hf"]),
    (C, ["algorithm=kto", "dataset=prefs_unpaired", "train.shared_prefix=true"],
     ["train.shared_prefix", "do not share prompts", "Drop train.shared_prefix"]),
    (C, ["algorithm=ppo", "train.shared_prefix=false"], ["train.shared_prefix", "backend=native", "own engine", "Drop"]),
    (B, ["train.shared_prefix=true", "train.gradient_checkpointing=true"],
     ["train.shared_prefix=true", "gradient checkpointing", "Drop train.shared_prefix"]),
    # config: wrong types
    (C, ["group_size=abc"], ["algorithm.group_size", "'abc'"]),
    (C, ["train.batch_size=two"], ["train.batch_size", "'two'", "type"]),
    (C, ["learning_rate=fast"], ["train.learning_rate", "'fast'"]),
    (C, ["seed=abc"], ["seed", "'abc'"]),
    (C, ["rewards.letter_match.weight=heavy"], ["rewards.letter_match.weight", "number"]),
    # config: out-of-range values
    (C, ["group_size=1"], ["algorithm.group_size=1", "at least 2"]),
    (C, ["learning_rate=-1"], ["train.learning_rate=-1.0", "greater than 0"]),
    (C, ["beta=-0.1"], ["algorithm.beta=-0.1", "negative"]),
    (C, ["algorithm.top_p=1.5"], ["algorithm.top_p=1.5", "Use 1.0"]),
    (C, ["train.warmup_ratio=1.5"], ["train.warmup_ratio=1.5", "0.05"]),
    (C, ["train.max_steps=0"], ["train.max_steps=0", "null"]),
    (C, ["dataset.eval_fraction=1.5"], ["dataset.eval_fraction=1.5", "0.1"]),
    (C, ["model.dtype=fp64"], ["model.dtype='fp64'", "fp32"]),
    (C, ["device=tpu"], ["device='tpu'", "cpu"]),
    (C, ["algorithm.loss_type=foo"], ["algorithm.loss_type='foo'", "dr_grpo"]),
    (C, ["model.lora.enabled=true", "model.lora.r=0"], ["model.lora.r=0", "positive"]),
    (C, ["algorithm.cliprange_high=0.1"], ["cliprange_high=0.1", "cliprange"]),
    # config: impossible batch arithmetic
    (C, ["train.micro_batch_size=5"], ["train.micro_batch_size=5", "Use one of"]),
    (C, ["algorithm.num_mini_batches=3"], ["num_mini_batches=3", "Use one of"]),
    (C, ["algorithm=dpo", "train.batch_size=4", "train.micro_batch_size=3"], ["micro_batch_size=3", "Use one of"]),
    # config: conflicting options
    (C, ["dataset.eval_split=test", "dataset.eval_fraction=0.1"], ["eval_split", "eval_fraction", "Choose one"]),
    (C, ["train.eval_steps=5"], ["train.eval_steps=5", "held-out"]),
    (C, ["algorithm=dpo", "algorithm.reference_free=true", "algorithm.precompute_ref_log_probs=true"],
     ["reference_free", "precompute_ref_log_probs"]),
    (C, ["algorithm=dpo", "algorithm.loss_type=[ipo]", "algorithm.label_smoothing=0.1"],
     ["algorithm.label_smoothing=0.1", "ignored", "loss_type=['ipo']", "label_smoothing=0"]),
    (C, ["algorithm=ppo", "backend=trl"], ["algorithm=ppo", "backend=native"]),
    (C, ["algorithm=ppo", "algorithm.kl_estimator=k3"], ["algorithm.kl_estimator=k3", "reward", "kl_estimator=k1"]),
    (C, ["algorithm=ppo", "backend=verl", "dry_run=true", "algorithm.kl_estimator=k3"],
     ["algorithm.kl_estimator=k3", "Tang & Munos", "kl_estimator=k1"]),
    (C, ["~rewards"], ["needs at least one reward", "+rewards.mine.fn"]),
    # config: checkpoints and resume
    (C, ["train.save_steps=0"], ["train.save_steps=0", "null"]),
    (C, ["train.on_nonfinite=ignore"], ["train.on_nonfinite='ignore'", "stop, skip"]),
    (C, ["algorithm.num_mini_batches=2", "train.save_steps=3"], ["middle of a rollout", "multiple of 2"]),
    (C, ["experiment=ppo_smoke", "train.save_steps=2", "train.save_total_limit=0"],
     ["train.save_total_limit=0", "at least 1"]),
    (C, ["resume=latest"], ["resume=latest found no unfinished run", "resume=outputs/"]),
    (C, ["resume=/nope"], ["resume=/nope is not a run directory", "resume=latest"]),
    # data
    (C, ["dataset_name=does/not/exist.jsonl", "+rewards.letter_match.weight=1"], ["does/not/exist.jsonl", "does not exist"]),
    (C, ["dataset=hh_rlhf"], ["Anthropic/hh-rlhf", "dataset=letters"]),
    (C, ["dataset_name=notes.txt", "+rewards.letter_match.weight=1"], ["notes.txt", ".jsonl"]),
    (D, ["dataset_name=empty.jsonl", "+rewards.letter_match.weight=1"], ["empty.jsonl"]),
    (D, ["dataset_name=no_prompt.jsonl", "+rewards.letter_match.weight=1"], ["no_prompt.jsonl", "question", "prompt"]),
    (D, [f"dataset_name={FIXTURES / 'malformed.jsonl'}", "+rewards.letter_match.weight=1"], ["malformed.jsonl"]),
    (D, ["dataset_name=latin1.jsonl", "+rewards.letter_match.weight=1"], ["latin1.jsonl", "not UTF-8", "line 1", "iconv"]),
    (D, ["dataset_name=not_object.jsonl", "+rewards.letter_match.weight=1"], ["not_object.jsonl", "JSON parse error"]),
    (D, ["dataset_name=bad.csv", "+rewards.letter_match.weight=1"], ["bad.csv"]),
    (D, [f"dataset_name={FIXTURES / 'empty_prompt.jsonl'}", "+rewards.letter_match.weight=1"], ["empty_prompt.jsonl"]),
    (D, ["dataset.format=gsm8k"], ["gsm8k"]),
    (D, ["+dataset.columns.prompt=nope"], ["nope"]),
    (D, ["algorithm=dpo"], ["chosen", "rejected"]),
    (D, ["algorithm=dpo", "dataset_name=same_pairs.jsonl"], ["same_pairs.jsonl", "same chosen and rejected", "differ"]),
    (D, ["dataset=letters", "algorithm=sft"], ["letters"]),
    (D, ["dataset_name=long_prompt.jsonl", "+rewards.letter_match.weight=1"],
     ["Row 1 of dataset 'long_prompt.jsonl'", "2000 tokens", "512 positions", "dataset.max_prompt_length=500"]),
    (B, ["dataset.max_prompt_length=600"], ["dataset.max_prompt_length=600", "512 positions",
                                            "dataset.max_prompt_length=500 or less"]),
    (C, ["algorithm=dpo", "dataset=prefs", "dataset.max_prompt_length=64"],
     ["dataset.max_prompt_length=64", "algorithm=dpo", "algorithm.max_length"]),
    (C, ["dataset.truncation_mode=keep_start"], ["dataset.truncation_mode=keep_start", "dataset.max_prompt_length"]),
    (D, ["algorithm=dpo", "dataset=custom", "dataset_name=long_pair.jsonl", "algorithm.max_length=1024"],
     ["Row 0 of dataset 'long_pair.jsonl'", "708 tokens", "512 positions", "algorithm.max_length=512 or less"]),
    (D, ["algorithm=reward", "dataset=prefs", "algorithm.max_length=4"], ["would be dropped", "algorithm.max_length=4",
                                                                          "Raise algorithm.max_length"]),
    # KTO's unpaired rows
    (C, ["algorithm=kto", "dataset=prefs_unpaired", "train.batch_size=1"],
     ["a micro-batch here holds 1 row", "at least 2 rows per micro-batch", "apo_zero_unpaired"]),
    (C, ["algorithm=dpo", "dataset=prefs", "dataset.unpair=true"], ["dataset.unpair=true", "Drop dataset.unpair",
                                                                     "algorithm=kto"]),
    (D, ["algorithm=kto", "dataset=prefs"], ["'prefs' holds preference pairs", "Add dataset.unpair=true"]),
    (D, ["algorithm=kto", "dataset_name=all_desirable.jsonl"],
     ["all_desirable.jsonl", "desirable (label true)", "needs both desirable and undesirable", "Add undesirable rows"]),
    (D, ["algorithm=kto", "dataset_name=int_labels.jsonl"], ["Row 0", "'label' is 1, not true or false"]),
    # models
    (C, ["model_name=/nonexistent/model"], ["/nonexistent/model", "does not exist", "model=tiny"]),
    (C, ["model_name=empty_dir"], ["empty_dir", "config.json", "save_pretrained"]),
    (C, ["model=qwen3_0_6b"], ["Qwen/Qwen3-0.6B", "model=tiny"]),
    (C, ["model_name=a_file"], ["a_file", "does not exist"]),
    (M, ["model_name=no_pad_no_eos"], ["no_pad_no_eos", "neither a pad nor an EOS token", "add_special_tokens"]),
    (M, ["model_name=vision"], ["vision", "not a causal language model", "ForCausalLM"]),
    # rewards
    (C, ["+rewards.x.fn=nonexistent_reward"], ["rewards.x", "nonexistent_reward", "built-in"]),
    (C, ["+rewards.x.fn=missing.py:score"], ["missing.py", "does not exist"]),
    (C, ["+rewards.x.fn=no_such_module:score"], ["no_such_module", "PYTHONPATH"]),
    (R, ["+rewards.x.fn=rewards_mod.py:nope"], ["rewards_mod.py", "nope"]),
    (R, ["+rewards.x.fn=rewards_mod.py:raises"], ["Reward 'x'", "boom"]),
    (R, ["+rewards.x.fn=rewards_mod.py:short"], ["Reward 'x'", "1 scores", "one float"]),
    (R, ["+rewards.x.fn=rewards_mod.py:nan"], ["Reward 'x'", "nan", "finite"]),
    (R, ["+rewards.x.fn=rewards_mod.py:text"], ["Reward 'x'", "not a number"]),
    (R, ["+rewards.x.fn=rewards_mod.py:ok", "+rewards.x.args.nope=1"], ["rewards.x", "nope"]),
    (R, ["+rewards.x.fn=length", "+rewards.x.args.tagret=5"], ["rewards.x", "tagret"]),
    (C, ["+rewards.letter_match.timeout_s=-1"], ["rewards.letter_match.timeout_s=-1", "positive number of seconds"]),
    (R, ["+rewards.x.fn=rewards_mod.py:hangs", "+rewards.x.timeout_s=0.2"],
     ["Reward 'x' did not return within rewards.x.timeout_s=0.2 s", "before training", "raise rewards.x.timeout_s"]),
    # rewards that fail once training runs: the step is named, the last good state checkpointed
    (R, ["+rewards.x.fn=rewards_mod.py:raises_later", "train.max_steps=3"],
     ["Reward 'x' raised ValueError: late boom at step 2", "checkpointed in", "resume="]),
    (R, ["+rewards.x.fn=rewards_mod.py:hangs_later", "+rewards.x.timeout_s=0.3", "train.max_steps=3"],
     ["Reward 'x' did not return within rewards.x.timeout_s=0.3 s at step 2", "checkpointed in", "resume="]),
]


def _id(case) -> str:
    kind, overrides, _ = case
    return f"{kind}:{' '.join(o.replace(str(FIXTURES), 'fixtures') for o in overrides)}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    _write_files(root)
    return root


@pytest.fixture
def empty_dir(files, monkeypatch):
    """The directory the user runs from: the case files, and no outputs/ (each test starts without one)."""
    import shutil

    shutil.rmtree(files / "outputs", ignore_errors=True)
    monkeypatch.chdir(files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ALIGNTUNE_TRACEBACK", "0")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.syspath_prepend(str(files))
    return files


def test_the_catalogue_has_at_least_40_distinct_cases():
    assert len({_id(c) for c in CASES}) == len(CASES) >= 40
    kinds = {kind for kind, *_ in CASES}
    assert kinds == {C, D, M, R, B}


def _params() -> list:
    """Config cases are fast (no model is loaded): all run by default. Cases found while the job is built
    cost ~1 s each (tiny model, data, engine import): the first of each kind runs by default, the rest are slow."""
    seen, params = set(), []
    for case in CASES:
        marks = [pytest.mark.slow] if case[0] != C and case[0] in seen else []
        seen.add(case[0])
        params.append(pytest.param(case, id=_id(case), marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_bad_input(empty_dir, capsys, case):
    kind, overrides, needles = case
    before = set(empty_dir.iterdir())
    # On the tiny model and the letters task (cases that change them override these: the last value wins).
    base = ["train", "model=tiny", "dataset=letters"]
    code = cli.main([*base, "train.max_steps=1", *overrides] if "train.max_steps=0" not in overrides
                    else [*base, *overrides])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE, captured.err
    err = captured.err.strip()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert err.startswith("error: "), err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err
    assert "\n\n" not in err, "more than one paragraph"
    assert all(line.startswith("  ") for line in err.splitlines()[1:]), err
    flat = " ".join(err.split())
    for needle in needles:
        assert needle in flat, f"{needle!r} not in: {flat}"
    # a fix is named: the paragraph has a sentence beyond the problem
    assert flat.count(". ") + flat.count("? ") >= 1 or "Use" in flat, flat
    outputs = empty_dir / "outputs"
    if kind == C:
        assert set(empty_dir.iterdir()) == before, "a config error must not create anything"
        return
    summaries = list(outputs.rglob("summary.json"))
    assert summaries, "the job was built, so its run directory records the failure"
    for s in summaries:
        summary = json.loads(s.read_text())
        assert summary["status"] == "failed" and summary["error"], summary
        assert not (s.parent / "model").exists()


def test_a_tokenizer_without_a_pad_token_is_handled_with_its_eos(files):
    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=str(files / "no_pad")))
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert tok.padding_side == "left"
