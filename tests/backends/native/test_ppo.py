"""Native PPO: the one mapping RunConfig -> PPOEngineConfig key by key, the engine's invariants on the tiny
model (padding-independent log-probs, rollout = generate's distribution, ratio 1 on the first update, the LoRA
reference), and bad input refused with one clear error before training starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from aligntune import cli, preflight
from aligntune.backends.native.ppo import (
    HANDLED_ELSEWHERE,
    MAPPED_FIELDS,
    PPOEngineConfig,
    ppo_engine_config,
)
from aligntune.config import schema
from aligntune.core import job, registry
from aligntune.errors import EXIT_USAGE, ConfigError

OUT = "/nonexistent/aligntune-ppo-output"


def make_run(algorithm: dict | None = None, train: dict | None = None, **fields) -> schema.RunConfig:
    return schema.RunConfig(model=fields.pop("model", schema.ModelConfig(name_or_path="aligntune:tiny")),
                            dataset=fields.pop("dataset", schema.DatasetConfig(name="letters")),
                            algorithm=schema.PPOAlgorithmConfig(**(algorithm or {})),
                            train=schema.TrainConfig(**(train or {})),
                            rewards=fields.pop("rewards", {"letter_match": {"weight": 1.0}}), device="cpu", **fields)


# --- the mapping -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("temperature", 1.3), ("top_p", 0.9), ("max_completion_length", 33), ("missing_eos_penalty", 0.7),
    ("value_model", "/some/rm"), ("beta", 0.123), ("adaptive_kl", True), ("target_kl", 3.5),
    ("kl_horizon", 777), ("gamma", 0.97), ("lam", 0.9), ("cliprange", 0.15), ("cliprange_value", 0.4),
    ("vf_coef", 0.3), ("ppo_epochs", 2), ("whiten_rewards", True), ("reward_clip", 5.0), ("early_stop_kl", 0.02),
])
def test_algorithm_key(field, value):
    assert getattr(schema.PPOAlgorithmConfig(), field) != value, "pick a non-default value"
    cfg = ppo_engine_config(make_run(algorithm={field: value}), OUT)
    assert getattr(cfg, MAPPED_FIELDS[f"algorithm.{field}"]) == value


@pytest.mark.parametrize("field,value", [
    ("batch_size", 12), ("max_steps", 7), ("num_epochs", 2.5), ("learning_rate", 3e-4), ("lr_scheduler", "cosine"),
    ("warmup_ratio", 0.1), ("weight_decay", 0.01), ("max_grad_norm", 0.5), ("gradient_checkpointing", True),
    ("logging_steps", 5), ("save_steps", 3), ("save_total_limit", 5),
])
def test_train_key(field, value):
    assert getattr(schema.TrainConfig(), field) != value, "pick a non-default value"
    cfg = ppo_engine_config(make_run(train={field: value}), OUT)
    assert getattr(cfg, MAPPED_FIELDS[f"train.{field}"]) == value


def test_constant_schedule_with_warmup_warms_up():
    assert ppo_engine_config(make_run(train={"warmup_ratio": 0.1}), OUT).lr_scheduler == "constant_with_warmup"
    assert ppo_engine_config(make_run(train={"warmup_ratio": 0.1, "lr_scheduler": "cosine"}), OUT).lr_scheduler == "cosine"


def test_batch_arithmetic():
    cfg = ppo_engine_config(make_run(algorithm={"num_mini_batches": 4}, train={"batch_size": 16, "micro_batch_size": 2}), OUT)
    assert (cfg.batch_size, cfg.mini_batch_size, cfg.micro_batch_size) == (16, 4, 2)
    cfg = ppo_engine_config(make_run(train={"batch_size": 6}), OUT)
    assert (cfg.mini_batch_size, cfg.micro_batch_size) == (6, 6)  # null micro = the whole mini-batch


@pytest.mark.parametrize("algorithm,train,needle", [
    ({"num_mini_batches": 3}, {"batch_size": 16}, "num_mini_batches=3 does not divide"),
    ({"num_mini_batches": 3}, {"batch_size": 12, "micro_batch_size": 6}, "micro_batch_size=6 does not divide a PPO mini-batch of 4"),
])
def test_batch_errors(algorithm, train, needle):
    with pytest.raises(ConfigError, match=needle):
        ppo_engine_config(make_run(algorithm=algorithm, train=train), OUT)


def test_other_keys_reach_the_engine():
    run = make_run(seed=7, dataset=schema.DatasetConfig(name="letters", shuffle=False),
                   model=schema.ModelConfig(name_or_path="aligntune:tiny", dtype="bf16", trust_remote_code=True),
                   rewards={"a": {"fn": "letter_match", "weight": 0.5}, "b": {"fn": "letter_match", "weight": 2.0}})
    cfg = ppo_engine_config(run, OUT)
    assert (cfg.seed, cfg.shuffle, cfg.precision, cfg.trust_remote_code, cfg.device) == (7, False, "bf16", True, "cpu")
    assert cfg.reward_names == ("a", "b") and cfg.reward_weights == (0.5, 2.0) and cfg.output_dir == OUT


def test_trl_args_are_refused():
    run = make_run(backend=schema.BackendConfig(name="native", trl_args={"top_k": 5}))
    with pytest.raises(ConfigError, match="not TRL"):
        registry.check_supported(run)  # the pre-flight, before any job is built


def test_eval_steps():
    run = make_run(train={"eval_steps": 5}, dataset=schema.DatasetConfig(name="letters", eval_fraction=0.1))
    assert ppo_engine_config(run, OUT).eval_steps == 5
    assert ppo_engine_config(make_run(), OUT).eval_steps is None


def test_every_algorithm_and_train_key_is_mapped_or_accounted_for():
    keys = {f"algorithm.{f.name}" for f in dataclasses.fields(schema.PPOAlgorithmConfig) if f.name != "name"}
    keys |= {f"train.{f.name}" for f in dataclasses.fields(schema.TrainConfig)}
    assert keys <= set(MAPPED_FIELDS) | set(HANDLED_ELSEWHERE), sorted(keys - set(MAPPED_FIELDS) - set(HANDLED_ELSEWHERE))
    engine_fields = {f.name for f in dataclasses.fields(PPOEngineConfig)} - {"output_dir"}
    assert engine_fields == set(MAPPED_FIELDS.values())


def test_backend_auto_resolves_to_native():
    run, _ = preflight.load(["algorithm=ppo"])
    assert registry.resolve_backend(run) == "native"
    assert registry.builder_target(run) == "aligntune.backends.native.ppo:build"


def test_cliprange_must_be_positive():
    with pytest.raises(ConfigError, match=r"algorithm.cliprange=0.0 must be greater than 0"):
        preflight.load(["algorithm=ppo", "algorithm.cliprange=0"])
    with pytest.raises(ConfigError, match=r"algorithm.cliprange=-0.1"):
        preflight.load(["algorithm=ppo", "cliprange=-0.1"])  # the shortcut lands on the same key


def test_k3_in_the_reward_is_refused_with_the_reason():
    """As a per-token reward k3's policy gradient is grad KL(pi||ref) - grad KL(ref||pi), not grad KL(pi||ref)
    (test_ppo_math checks the identity exactly); PPO refuses it and points at k1."""
    with pytest.raises(ConfigError) as err:
        preflight.load(["algorithm=ppo", "algorithm.kl_estimator=k3"])
    text = str(err.value)
    assert "algorithm.kl_estimator=k3 is not available for PPO" in text
    assert "grad KL(pi||ref) - grad KL(ref||pi)" in text and "Tang & Munos 2025" in text
    assert text.endswith("grad KL(pi||ref).") and "Use algorithm.kl_estimator=k1" in text
    assert preflight.load(["algorithm=ppo", "algorithm.kl_estimator=k1"])[0].algorithm.kl_estimator == "k1"
    with pytest.raises(ConfigError, match="'k3_is' is not a valid choice. Use one of: k1"):
        preflight.load(["algorithm=ppo", "algorithm.kl_estimator=k3_is"])
    assert preflight.load(["algorithm=grpo", "algorithm.kl_estimator=k3"])[0].algorithm.kl_estimator == "k3"  # GRPO's loss term


# --- the engine on the tiny model ---------------------------------------------------------------------

def build_job(tmp_path: Path, *overrides: str):
    run, _ = preflight.load(["experiment=ppo_smoke", "train.log_samples=0", *overrides])
    return job.AlignmentJob(run, tmp_path / "run")


# Tolerance from the dtype: fp32 sums in a different order with and without padding (~1e-6); bf16 autocast rounds
# every matmul to 8 mantissa bits, so log-probs of magnitude ~5 move by a few 2^-8 relative steps (2.2e-3 measured).
LOGPROB_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: forced on every CPU kind (emulated where not native)
def test_logprobs_do_not_depend_on_padding_and_match_generate(workdir, dtype):
    from transformers import GenerationConfig

    tol = LOGPROB_TOLERANCE[dtype]
    trainer = build_job(workdir, "train.batch_size=4", "algorithm.temperature=0.9", f"model.dtype={dtype}").trainer
    batch = trainer._rollout(trainer._next_rows())
    q, qm, r, rm = batch["query"], batch["qmask"], batch["response"], batch["rmask"]
    assert (qm == 0).any(), "the batch should have left padding (prompts of different lengths)"
    full = trainer._logits(trainer.models.policy, q, qm, r, rm)
    for i in range(len(q)):  # each row alone, without any padding, gives the same log-probs
        keep, n = qm[i].bool(), int(rm[i].sum())
        alone = trainer._logits(trainer.models.policy, q[i:i + 1, keep], qm[i:i + 1, keep], r[i:i + 1, :n], rm[i:i + 1, :n])
        torch.testing.assert_close(full[i, :n], alone[0], atol=tol, rtol=tol)
    # The training forward scores tokens exactly as generate() sampled them: softmax(logits / T).
    gen = GenerationConfig(do_sample=True, temperature=0.9, top_k=0, max_new_tokens=6, pad_token_id=trainer.pad_id,
                           eos_token_id=trainer.stop_ids, output_logits=True, return_dict_in_generate=True)
    out = trainer.models.policy.generate(input_ids=q, attention_mask=qm, generation_config=gen)
    steps = len(out.logits)
    sampled = out.sequences[:, q.shape[1]:]
    theirs = torch.stack(out.logits, 1).float() / 0.9
    ours = trainer._logits(trainer.models.policy, q, qm, sampled, torch.ones_like(sampled))
    first = (torch.isin(sampled, torch.tensor(trainer.stop_ids)).int().cumsum(1) <= 1)  # up to each row's first EOS
    torch.testing.assert_close(torch.log_softmax(ours, -1)[first], torch.log_softmax(theirs[:, :steps], -1)[first],
                               atol=tol, rtol=tol)


def test_rollouts_ignore_the_checkpoints_sampling_defaults(workdir):
    trainer = build_job(workdir, "train.batch_size=8", "algorithm.temperature=1.0").trainer
    trainer.models.policy.generation_config.top_k = 1  # e.g. a hub checkpoint's generation_config.json
    trainer.models.policy.generation_config.min_p = 0.99
    sampled = trainer._sample({"prompt": ["Type a."] * 8, "answer": ["a"] * 8})
    rows = {tuple(r[m.bool()].tolist()) for r, m in zip(sampled["response"], sampled["rmask"])}
    assert len(rows) > 1, "greedy decoding: the checkpoint's top_k/min_p leaked into the rollouts"


def test_rollout_masks_after_eos_and_scores(workdir):
    trainer = build_job(workdir, "train.batch_size=8").trainer
    batch = trainer._rollout(trainer._next_rows())
    r, rm = batch["response"], batch["rmask"]
    lengths = rm.sum(1)
    assert torch.all(rm[:, :-1] >= rm[:, 1:]), "response masks are prefixes"
    for i in range(len(r)):
        n = int(lengths[i])
        stops = torch.isin(r[i, :n], torch.tensor(trainer.stop_ids)).nonzero().flatten().tolist()
        assert stops in ([], [n - 1]), "only the last valid token may be EOS"
        assert torch.all(r[i, n:] == trainer.pad_id)
    m = batch["metrics"]
    assert 0.0 <= m["reward"] <= 1.0 and m["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    assert m["completions/mean_length"] == pytest.approx(lengths.float().mean().item())
    assert torch.all(batch["advantages"][rm == 0] == 0) and torch.all(batch["returns"][rm == 0] == 0)


UNSCORED_PY = """
def every_other(completions, **kwargs):
    # even positions scored (by their length), odd ones: no reward can score them
    return [None if i % 2 else float(len(str(c))) for i, c in enumerate(completions)]

def never(completions, **kwargs):
    return [None] * len(completions)
"""


def test_unscored_completions_are_masked_out_of_scores_and_advantages(workdir):
    """Completions every reward returned None for carry no advantage, no value target and no loss tokens (TRL's
    GRPO zeroes their advantage), the reward statistics and the advantage whitening leave them out, and the
    step logs how many there were. Before: nansum scored them 0, they got advantages and skewed the scored ones'."""
    (workdir / "unscored.py").write_text(UNSCORED_PY)
    trainer = build_job(workdir, "train.batch_size=8", "model.dtype=fp32", "~rewards.letter_match",
                        "+rewards.half.fn=unscored.py:every_other").trainer
    batch = trainer._rollout(trainer._next_rows())
    unscored = torch.arange(8) % 2 == 1
    assert torch.all(batch["advantages"][unscored] == 0) and torch.all(batch["returns"][unscored] == 0)
    assert batch["advantages"][~unscored].abs().sum() > 0
    m = batch["metrics"]
    assert m["reward"] == pytest.approx(m["rewards/half/mean"]) and m["reward"] > 0  # the scored ones' mean
    assert m["rewards/unscored"] == 4.0
    rm, lm = batch["rmask"].float(), batch["lmask"]
    assert torch.equal(lm, rm * (~unscored)[:, None].float())  # the loss mask of the update
    from aligntune.backends.native import ppo_math as pm

    # whitened over the scored completions' tokens only: mean 0, variance 1 there
    assert pm.masked_mean(batch["advantages"], lm).item() == pytest.approx(0.0, abs=1e-5)
    assert pm.masked_var(batch["advantages"], lm).item() == pytest.approx(1.0, abs=1e-3)


def test_a_step_with_nothing_scored_leaves_the_policy_alone_and_logs_no_reward(workdir):
    (workdir / "unscored.py").write_text(UNSCORED_PY)
    trainer = build_job(workdir, "train.batch_size=4", "model.dtype=fp32", "~rewards.letter_match",
                        "+rewards.none.fn=unscored.py:never").trainer
    batch = trainer._rollout(trainer._next_rows())
    m = batch["metrics"]
    assert m["rewards/unscored"] == 4.0 and "reward" not in m and "rewards/none/mean" not in m
    before = [p.detach().clone() for p in trainer.models.policy.parameters()]
    stats = trainer._update(batch)
    assert stats["ppo/updates"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.models.policy.parameters()))


def test_first_update_starts_at_ratio_one_then_moves(workdir):
    trainer = build_job(workdir, "train.batch_size=8", "algorithm.ppo_epochs=1", "algorithm.early_stop_kl=null").trainer
    batch = trainer._rollout(trainer._next_rows())
    before = [p.detach().clone() for p in trainer.models.policy.parameters()]
    stats = trainer._update(batch)
    # One epoch, one mini-batch: the update is taken at the rollout policy, so the ratio is exactly 1.
    assert stats["policy/approx_kl"] < 1e-8 and stats["policy/clipfrac"] == 0.0 and stats["ppo/updates"] == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.models.policy.parameters()))
    assert trainer._update(batch)["policy/approx_kl"] > 0  # a second pass sees the moved policy


def test_the_optimizer_is_torchs_fused_adamw_where_it_runs(workdir):
    from aligntune.backends.native.ppo_trainer import fused_adamw

    trainer = build_job(workdir, "train.batch_size=4").trainer
    assert trainer.optimizer.defaults["fused"] is True  # as transformers' adamw_torch_fused in the TRL engines
    floats = [torch.zeros(2, requires_grad=True)]
    assert fused_adamw(torch.device("cpu"), floats) and fused_adamw(torch.device("cuda"), floats)
    assert fused_adamw(torch.device("meta"), floats) is None  # torch's own choice elsewhere
    assert fused_adamw(torch.device("cpu"), []) is None


def test_lora_reference_is_the_base_model_without_a_copy(workdir):
    trainer = build_job(workdir, "train.batch_size=4", "model.lora.enabled=true", "model.lora.r=4",
                        "model.lora.target_modules=[q_proj,v_proj]").trainer
    assert trainer.models.reference is None and trainer.models.lora
    batch = trainer._rollout(trainer._next_rows())
    args = (batch["query"], batch["qmask"], batch["response"], batch["rmask"])
    ref_before = trainer._reference_logits(*args)
    torch.testing.assert_close(trainer._logits(trainer.models.policy, *args), ref_before)  # lora_B = 0 at the start
    trainer.cfg = dataclasses.replace(trainer.cfg, ppo_epochs=2)
    trainer._update(batch)
    assert not torch.allclose(trainer._logits(trainer.models.policy, *args), ref_before)
    torch.testing.assert_close(trainer._reference_logits(*args), ref_before)  # the reference did not move


def test_critic_from_policy_shares_the_backbone_and_starts_at_zero(workdir):
    trainer = build_job(workdir, "train.batch_size=4").trainer
    from aligntune.backends.native.ppo_models import backbone

    policy, critic = trainer.models.policy, trainer.models.critic
    for (name, p), (_, c) in zip(backbone(policy).named_parameters(), backbone(critic).named_parameters()):
        assert torch.equal(p, c) and p.data_ptr() != c.data_ptr(), name  # equal weights, separate tensors
    batch = trainer._rollout(trainer._next_rows())
    assert torch.all(batch["values"] == 0)


# --- bad input: one clear error, before training ----------------------------------------------------

def seq_cls_checkpoint(path: Path, other_tokenizer: bool) -> Path:
    """A 1-label LlamaForSequenceClassification: with the tiny model's tokenizer, or with a different vocabulary."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    from aligntune.models import tiny

    if other_tokenizer:
        vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *"zyxwvutsrqponmlkjihgfedcba "])}
        core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    else:
        tok = AutoTokenizer.from_pretrained(tiny.resolve("aligntune:tiny"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_cli(workdir, *overrides):
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=ppo_smoke", "max_steps=2", f"hydra.run.dir={run_dir}", *overrides])
    return code, run_dir


def assert_failed_before_training(run_dir: Path, capsys, *needles):
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert (run_dir / "metrics.jsonl").read_text() == "" and not (run_dir / "model").exists()


def test_value_model_that_is_a_causal_lm_is_refused(workdir, capsys):
    from aligntune.models import tiny

    code, run_dir = run_cli(workdir, f"algorithm.value_model={tiny.resolve('aligntune:tiny')}")
    assert code == EXIT_USAGE
    assert_failed_before_training(run_dir, capsys, "LlamaForCausalLM checkpoint, not a sequence-classification model",
                                  "algorithm=reward")


def test_value_model_with_another_tokenizer_is_refused(workdir, capsys):
    path = seq_cls_checkpoint(workdir / "other_rm", other_tokenizer=True)
    code, run_dir = run_cli(workdir, f"algorithm.value_model={path}")
    assert code == EXIT_USAGE
    assert_failed_before_training(run_dir, capsys, "uses a different tokenizer than the policy")


def test_value_model_path_that_does_not_exist_is_refused(workdir, capsys):
    code, run_dir = run_cli(workdir, "algorithm.value_model=no/such/dir/")
    assert code == EXIT_USAGE
    assert_failed_before_training(run_dir, capsys, "algorithm.value_model='no/such/dir/' does not exist")


def test_dataset_without_prompts_is_refused(workdir, capsys):
    data = workdir / "texts.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"row {i}", "answer": "a"}) for i in range(4)) + "\n")
    code, run_dir = run_cli(workdir, f"dataset.name={data}")
    assert code == EXIT_USAGE
    assert_failed_before_training(run_dir, capsys, "texts.jsonl", "['prompt']")


def test_micro_batch_that_does_not_divide_is_refused(workdir, capsys):
    code, run_dir = run_cli(workdir, "train.batch_size=12", "algorithm.num_mini_batches=3", "train.micro_batch_size=6")
    assert code == EXIT_USAGE and not run_dir.exists()  # refused while composing (the schema), before any run directory
    err = " ".join(capsys.readouterr().err.split())
    assert "train.micro_batch_size=6 does not divide a PPO mini-batch of 4" in err and "Use one of [1, 2, 4]" in err


def test_cliprange_zero_on_the_command_line(workdir, capsys):
    code, run_dir = run_cli(workdir, "cliprange=0")
    assert code == EXIT_USAGE and not run_dir.exists()  # refused while composing, before any run directory
    assert "algorithm.cliprange=0.0 must be greater than 0" in " ".join(capsys.readouterr().err.split())
