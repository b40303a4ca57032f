"""DPO: the config -> trl.DPOConfig mapping key by key, and real tiny runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from aligntune import cli, preflight
from aligntune.backends.trl.dpo import dpo_args, loss_terms, to_dpo_config
from aligntune.errors import ConfigError
from aligntune.models import tiny


def run_config(*overrides):
    return preflight.load(["model=tiny", "algorithm=dpo", "dataset=prefs", *overrides])[0]


def test_dpo_mapping_key_by_key():
    run = run_config("algorithm.beta=0.2", "algorithm.loss_type=[sigmoid,sft]", "algorithm.loss_weights=[1.0,0.5]",
                     "algorithm.label_smoothing=0.1", "algorithm.max_length=64", "algorithm.truncation_mode=keep_end",
                     "algorithm.precompute_ref_log_probs=true", "batch_size=8", "train.micro_batch_size=2",
                     "train.eval_steps=5", "learning_rate=1e-4", "max_steps=7", "seed=3", "device=cpu")
    args = dpo_args(run, "/tmp/out", has_eval=True)
    # label_smoothing on sigmoid: conservative DPO = 1.8 x sigmoid - 0.8 x robust (test_conservative_dpo_*)
    expected = {"beta": 0.2, "loss_type": ["sigmoid", "sft", "robust"], "loss_weights": [1.8, 0.5, pytest.approx(-0.8)],
                "label_smoothing": 0.1,
                "max_length": 64, "truncation_mode": "keep_end", "precompute_ref_log_probs": True,
                "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 4,
                "eval_strategy": "steps", "eval_steps": 5, "learning_rate": 1e-4, "max_steps": 7, "seed": 3,
                "use_cpu": True, "output_dir": "/tmp/out"}
    assert {k: args[k] for k in expected} == expected
    assert dpo_args(run, "/tmp/out", has_eval=False)["eval_strategy"] == "no"
    config = to_dpo_config(run, "/tmp/out", has_eval=True)
    assert config.beta == 0.2 and config.loss_type == ["sigmoid", "sft", "robust"]
    plain = dpo_args(run_config("algorithm.loss_type=[sigmoid,sft]", "algorithm.loss_weights=[1.0,0.5]"), "/tmp/out",
                     has_eval=False)
    assert (plain["loss_type"], plain["loss_weights"], plain["label_smoothing"]) == (["sigmoid", "sft"], [1.0, 0.5], 0.0)


@pytest.mark.parametrize("types,weights,eps,expected", [
    (["sigmoid"], None, 0.0, (["sigmoid"], None)),  # no smoothing: TRL's terms as they are
    (["sigmoid"], None, 0.25, (["sigmoid", "robust"], [1.5, -0.5])),
    (["sigmoid", "sigmoid"], [1.0, 3.0], 0.1, (["sigmoid", "sigmoid", "robust"], [1.8, 5.4, -3.2])),
    (["robust"], None, 0.1, (["robust"], None)),  # TRL smooths robust, exo_pair, aot, aot_unpaired itself
    (["aot", "sft"], [1.0, 0.2], 0.1, (["aot", "sft"], [1.0, 0.2])),
])
def test_loss_terms(types, weights, eps, expected):
    got_types, got_weights = loss_terms(types, weights, eps)
    assert got_types == expected[0]
    assert got_weights == (pytest.approx(expected[1]) if expected[1] is not None else None)


def _sequence_logps(model, batch):
    """Sum of log p(token) over each row's completion, with a plain forward and log_softmax (not TRL's fused head)."""
    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    logits = model(**inputs).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)  # the batch is [chosen; rejected]


def test_conservative_dpo_loss_and_gradients_match_the_formula_by_hand(workdir):
    """label_smoothing=eps on the sigmoid loss is cDPO (Mitchell 2023): mean of -(1-eps) log sig(x) - eps log sig(-x),
    x = beta * ((chosen - ref chosen) - (rejected - ref rejected)) log-probs. TRL 1.16 alone ignores eps here.

    Tolerance: 1e-5 absolute on the loss (about 1.6 here), 1e-5 + 1e-4 relative on the gradients (up to about 3.6).
    Everything is fp32, but the hand log-probs come from a plain log_softmax and TRL's from its chunked fused head,
    which round in a different order: measured, the loss differs by ~4e-7 and the gradients by ~2e-6 on sequence
    log-probs of -30..-50, so 1e-5 leaves room for other CPUs' kernels while any change of formula shows: plain DPO
    differs from cDPO here by eps * mean(x) ~ 0.05, asserted to exceed 100x the tolerance."""
    from aligntune.core.backend_factory import create_rl_trainer

    eps, beta = 0.2, 0.5
    job = create_rl_trainer(algorithm="dpo", experiment="dpo_smoke", output_dir=workdir / "run", device="cpu",
                            **{"algorithm.label_smoothing": eps, "algorithm.beta": beta, "model.dtype": "fp32",
                               "train.eval_steps": None, "train.batch_size": 4, "dataset.max_samples": 8})
    trainer, model = job.trainer, job.trainer.model
    assert trainer.loss_types == ["sigmoid", "robust"]
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the (separately loaded) reference, so x != 0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))  # on CPU: no device move needed
    params = [p for p in model.parameters() if p.requires_grad]

    loss = trainer.compute_loss(model, batch)
    trl_grads = torch.autograd.grad(loss, params)

    chosen, rejected = _sequence_logps(model, batch)
    with torch.no_grad():
        ref_chosen, ref_rejected = _sequence_logps(trainer.ref_model, batch)
    x = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    by_hand = (-(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)).mean()
    hand_grads = torch.autograd.grad(by_hand, params)

    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert abs(by_hand.item() - (-F.logsigmoid(x)).mean().item()) > 1e-3  # plain DPO would be far off
    for got, want in zip(trl_grads, hand_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_reference_free_uses_the_precomputed_path_without_a_reference():
    args = dpo_args(run_config("algorithm.reference_free=true"), "/tmp/out", has_eval=False)
    assert args["precompute_ref_log_probs"] is True


def test_dpo_config_errors():
    with pytest.raises(ConfigError, match="not a valid choice"):
        run_config("algorithm.loss_type=[sigmoidd]")
    with pytest.raises(ConfigError, match="2 weights for 1 loss types"):
        run_config("algorithm.loss_weights=[1.0,2.0]")
    with pytest.raises(ConfigError, match="micro_batch_size=3 does not divide train.batch_size=8"):
        run_config("batch_size=8", "train.micro_batch_size=3")
    with pytest.raises(ConfigError, match="shortcut for algorithm.group_size"):
        run_config("group_size=4")
    with pytest.raises(ConfigError, match=r"label_smoothing=0.1 would be ignored: none of algorithm.loss_type=\['ipo'\]"):
        run_config("algorithm.loss_type=[ipo]", "algorithm.label_smoothing=0.1")
    run_config("algorithm.loss_type=[ipo,robust]", "algorithm.label_smoothing=0.1")  # robust reads it
    with pytest.raises(ConfigError, match="not a field of trl.DPOConfig"):
        dpo_args(run_config("+backend.trl_args.bogus=1"), "/tmp/out", has_eval=False)


def _changed(model_dir) -> bool:
    before = AutoModelForCausalLM.from_pretrained(tiny.resolve("aligntune:tiny")).state_dict()
    after = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("dataset", ["prefs", "prefs_chat"])
def test_tiny_dpo_run_logs_preference_metrics_and_learns(workdir, dataset):
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=dpo_smoke", f"dataset={dataset}", "max_steps=4", "train.eval_steps=2",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if "loss" in m]
    assert len(train_rows) == 4
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert all(isinstance(m[key], float) for m in train_rows), key
    assert any("eval_rewards/accuracies" in m for m in metrics)  # periodic held-out evaluation
    # every 2 steps, the last one included, once each: the engine's end-of-training pass is not repeated
    assert [m["step"] for m in metrics if "eval_loss" in m] == [2, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["eval_preference_accuracy"] <= 1.0 and "eval_margin" in summary
    assert _changed(run_dir / "model")


def test_reference_free_run_measures_rewards_against_zero(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=dpo_smoke", "max_steps=1", "algorithm.reference_free=true",
                     "train.eval_steps=null", f"hydra.run.dir={run_dir}"]) == 0
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    # With reference log-probs fixed at 0, DPO's implicit reward is beta * log pi(y|x) (beta = 0.1).
    assert first["rewards/chosen"] == pytest.approx(0.1 * first["logps/chosen"], rel=1e-4)


@pytest.mark.slow
def test_dpo_smoke_raises_held_out_accuracy_above_chance(workdir):
    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=dpo_smoke", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_preference_accuracy"] >= 0.65, summary


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: forced on every CPU kind (emulated where not native)
def test_lora_dpo_uses_the_adapter_disabled_base_as_reference(workdir, dtype):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(algorithm="dpo", experiment="dpo_smoke", max_steps=1, output_dir=workdir / "run",
                            **{"model.lora.enabled": True, "model.lora.r": 4, "train.eval_steps": None,
                               "model.lora.save_merged": True, "model.dtype": dtype})
    assert job.trainer.ref_model is None  # no second copy of the weights
    assert job.train()["status"] == "completed"
    assert (workdir / "run" / "model" / "adapter_config.json").is_file()
    # model_merged/: a plain checkpoint equal to base + adapter
    from aligntune.evaluation import load_for_inference

    merged = AutoModelForCausalLM.from_pretrained(workdir / "run" / "model_merged", dtype=torch.float32)
    adapted, tokenizer = load_for_inference(workdir / "run")
    ids = tokenizer("abc", return_tensors="pt").input_ids
    torch.testing.assert_close(merged(ids).logits, adapted(ids).logits)
    # the frozen base is kept exactly as loaded (a bf16 run trains against a bf16 copy, but merges into the fp32 base);
    # the adapter is saved in fp32
    from safetensors.torch import load_file

    from aligntune.models import tiny

    base = load_file(tiny.resolve("aligntune:tiny") / "model.safetensors")
    saved = load_file(workdir / "run" / "model_merged" / "model.safetensors")
    targeted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    untouched = [k for k in base if not any(t in k for t in targeted)]
    assert untouched and all(torch.equal(saved[k], base[k]) for k in untouched)
    assert any(not torch.equal(saved[k], base[k]) for k in base if k not in untouched)  # the delta was merged
    adapter = load_file(workdir / "run" / "model" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}


def test_reference_free_sigmoid_norm_is_simpo_without_its_margin(workdir):
    """README, ORPO/SimPO: TRL 1.16 has SimPO only in trl.experimental (CPO's loss_type="simpo"). The stable DPO path
    algorithm.reference_free=true + loss_type=[sigmoid_norm] is SimPO's loss (Meng et al. 2024, Eq. 6) with target
    margin gamma = 0: -log sigmoid(beta (mean log pi(y_w|x) - mean log pi(y_l|x))), means over completion tokens.
    Same tolerances as the cDPO test above."""
    from aligntune.core.backend_factory import create_rl_trainer

    beta = 2.0
    job = create_rl_trainer(algorithm="dpo", experiment="dpo_smoke", output_dir=workdir / "run", device="cpu",
                            **{"algorithm.reference_free": True, "algorithm.loss_type": ["sigmoid_norm"],
                               "algorithm.beta": beta, "model.dtype": "fp32", "train.eval_steps": None,
                               "train.batch_size": 4, "dataset.max_samples": 8})
    trainer, model = job.trainer, job.trainer.model
    assert trainer.ref_model is None
    batch = next(iter(trainer.get_train_dataloader()))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(model, batch)
    trl_grads = torch.autograd.grad(loss, params)

    chosen, rejected = _sequence_logps(model, batch)
    chosen_len, rejected_len = batch["completion_mask"][:, 1:].sum(1).chunk(2)
    x = beta * (chosen / chosen_len - rejected / rejected_len)
    simpo = -F.logsigmoid(x).mean()
    hand_grads = torch.autograd.grad(simpo, params)
    assert loss.item() == pytest.approx(simpo.item(), abs=1e-5)
    assert abs(simpo.item() - (-F.logsigmoid(beta * (chosen - rejected))).mean().item()) > 1e-3  # unnormalised differs
    for got, want in zip(trl_grads, hand_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
