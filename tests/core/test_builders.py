"""The builder contract (core/inputs.py): every in-process registry target is `build(inputs: BuildInputs) -> Built`,
gets what the job set up without the job itself, and hands back what the job reads (no attributes set on the job)."""

from __future__ import annotations

import inspect
import typing

import pytest

from aligntune.config import compose
from aligntune.core import registry
from aligntune.core.inputs import BuildInputs, Built, Policy

IN_PROCESS = [(backend, algorithm, target) for backend, entry in registry.BACKENDS.items() if not entry.launched
              for algorithm, target in entry.algorithms.items()]


@pytest.mark.parametrize(("backend", "algorithm", "target"), IN_PROCESS, ids=[f"{b}-{a}" for b, a, _ in IN_PROCESS])
def test_every_in_process_builder_takes_inputs_and_returns_built(backend, algorithm, target):
    build = registry.load_target(target)
    assert list(inspect.signature(build).parameters) == ["inputs"], target
    hints = typing.get_type_hints(build)
    assert hints == {"inputs": BuildInputs, "return": Built}, target


def _inputs(tmp_path, *overrides):
    from aligntune.models.loading import compute_precision, load_tokenizer, resolve_device
    from aligntune.run.samples import SampleBook

    run = compose.load(list(overrides))[0]
    device = resolve_device(run.device)
    return BuildInputs(config=run, device=device, precision=compute_precision(run.model, device),
                       tokenizer=load_tokenizer(run.model), callbacks=[], checkpoint_dir=tmp_path / "checkpoints",
                       book=SampleBook())


def test_a_builder_runs_without_a_job(tmp_path):
    """The tiny DPO smoke builds from a hand-made BuildInputs: nothing of the job is needed."""
    from trl import DPOTrainer

    from aligntune.backends.trl import dpo

    inputs = _inputs(tmp_path, "algorithm=dpo", "experiment=dpo_smoke", "device=cpu", "model.dtype=fp32")
    built = dpo.build(inputs)
    assert isinstance(built, Built) and isinstance(built.trainer, DPOTrainer)
    assert (built.master_weights, built.fp32_originals) == (False, {})
    assert built.trainer.args.output_dir == str(tmp_path / "checkpoints")


def test_load_policy_returns_the_master_weights_instead_of_setting_them(tmp_path):
    import torch

    inputs = _inputs(tmp_path, "experiment=smoke", "device=cpu", "model.dtype=bf16")
    before = dict(vars(inputs))
    policy = inputs.load_policy()
    assert isinstance(policy, Policy) and policy.peft_config is None
    assert policy.master_weights and policy.model.dtype == torch.bfloat16
    assert policy.fp32_originals and {t.dtype for t in policy.fp32_originals.values()} == {torch.float32}
    assert dict(vars(inputs)) == before  # nothing set on the inputs either
    fp32 = inputs.load_policy(fp32_weights=True)
    assert (fp32.master_weights, fp32.fp32_originals, fp32.model.dtype) == (False, {}, torch.float32)
    built = Built.of("trainer", policy)
    assert (built.master_weights, built.fp32_originals) == (True, policy.fp32_originals)


def test_the_job_passes_inputs_not_itself_and_reads_the_result(tmp_path, monkeypatch):
    from aligntune.backends.trl import grpo
    from aligntune.core.backend_factory import create_rl_trainer

    seen = {}
    original = grpo.build

    def spy(inputs):
        seen["inputs"], seen["built"] = inputs, original(inputs)
        return seen["built"]

    monkeypatch.setattr(grpo, "build", spy)
    job = create_rl_trainer(experiment="smoke", max_steps=1, output_dir=str(tmp_path / "run"), device="cpu")
    inputs, built = seen["inputs"], seen["built"]
    assert isinstance(inputs, BuildInputs) and inputs is job.inputs
    assert all(value is not job for value in vars(inputs).values())
    assert (inputs.tokenizer, inputs.callbacks, inputs.book) == (job.tokenizer, job.callbacks, job.book)
    assert inputs.checkpoint_dir == job.run_dir.checkpoints
    assert job.trainer is built.trainer and job.master_weights == built.master_weights


def test_the_job_refuses_a_builder_that_returns_a_bare_trainer(tmp_path, monkeypatch):
    from aligntune.backends.trl import grpo
    from aligntune.core.backend_factory import create_rl_trainer

    monkeypatch.setattr(grpo, "build", lambda inputs: object())
    with pytest.raises(TypeError, match=r"aligntune\.backends\.trl\.grpo:build returned object, not .*Built"):
        create_rl_trainer(experiment="smoke", max_steps=1, output_dir=str(tmp_path / "run"), device="cpu")
