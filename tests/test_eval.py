"""aligntune eval / generate and AlignmentJob.evaluate() on the tiny model."""

from __future__ import annotations

import copy
import json
import re

import pytest

from aligntune import cli
from aligntune.evaluation import pass_at_k


def test_pass_at_k_matches_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - (3 / 5) * (2 / 4) * (1 / 3))  # 1 - C(3,3)/C(5,3) = 0.9


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from aligntune.core.backend_factory import create_rl_trainer

    out = tmp_path_factory.mktemp("eval") / "run"
    job = create_rl_trainer(experiment="smoke", max_steps=12, output_dir=out, **{"dataset.eval_fraction": 0.1})
    job.train()
    return job


def test_python_api_evaluate_reports_trained_and_base_side_by_side(trained_run):
    trained_run.config.eval.num_prompts = 6
    result = trained_run.evaluate()
    for side in ("trained", "base"):
        assert result[side]["prompts"] == 6 and result[side]["samples_per_prompt"] == 4
        assert 0 <= result[side]["rewards/letter_match/mean"] <= 1 and result[side]["completions/mean_length"] > 0
    assert result["trained"]["reward"] > result["base"]["reward"]  # 12 steps of the smoke run already help
    assert trained_run.evaluate()["trained"]["reward"] == result["trained"]["reward"]  # seeded: deterministic


def test_eval_command_writes_eval_json(trained_run, capsys):
    run_dir = trained_run.run_dir.path
    assert cli.main(["eval", f"run={run_dir}", "eval.num_prompts=4", "eval.samples=2"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["trained"]["prompts"] == 4 and result["trained"]["samples_per_prompt"] == 2
    assert result["by"] == "eval" and result["settings"]["num_prompts"] == 4 and result["settings"]["samples"] == 2
    assert "rewards/letter_match/mean" in capsys.readouterr().out


def test_generate_command_prints_completions(trained_run, capsys):
    assert cli.main(["generate", f"run={trained_run.run_dir.path}", "prompt=Repeat the letter q.", "samples=2",
                     "max_new_tokens=6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(("[0] ", "[1] ")) and len(line) > 4 for line in lines)


def test_eval_without_held_out_rows_says_how_to_get_them(workdir, capsys):
    from aligntune.core.backend_factory import create_rl_trainer

    job = create_rl_trainer(experiment="smoke", max_steps=1, output_dir=workdir / "run")
    job.train()
    assert cli.main(["eval", f"run={workdir / 'run'}"]) == 2
    assert "eval_fraction" in capsys.readouterr().err


def test_evaluation_runs_on_the_runs_device_and_compute_dtype(trained_run, tmp_path, monkeypatch):
    import torch

    from aligntune.evaluation import generate, inference_placement, load_for_inference
    from aligntune.models import precision

    run_dir = trained_run.run_dir.path
    result = trained_run.evaluate()
    assert (result["device"], result["compute_dtype"]) == ("cpu", "fp32")  # the tiny model: fp32 on every CPU
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert inference_placement(run_dir) == ("cpu", "fp32")  # 64 wide: bf16 measured slower
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"hidden_size": 576}))
    assert inference_placement(wide) == ("cpu", "bf16")
    assert inference_placement(run_dir, dtype="bf16") == ("cpu", "bf16")
    model, tok = load_for_inference(run_dir, "cpu", "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.device.type == "cpu"
    (out,) = generate(model, tok, ["Repeat the letter q."], 1, 0.0, 4, seed=0)
    assert isinstance(out[0], str)


def test_evaluation_attends_as_the_run_asked(trained_run, monkeypatch):
    """model.attn_implementation reaches the evaluation's models: auto is models/attention.py's per-call kernel on
    CPU (whose 16-bit decoding steps of a large batch attend with two matmuls), an explicit kernel is that kernel."""
    from aligntune import evaluation
    from aligntune.models import attention

    run_dir = trained_run.run_dir.path
    assert evaluation.load_for_inference(run_dir, "cpu", "bf16")[0].config._attn_implementation == attention.NAME
    assert evaluation.load_for_inference(run_dir, "cpu", "bf16", "eager")[0].config._attn_implementation == "eager"
    asked, real = [], evaluation.load_for_inference
    monkeypatch.setattr(evaluation, "load_for_inference", lambda *a: asked.append(a[3:]) or real(*a))
    trained_run.evaluate()
    assert asked and set(asked) == {(trained_run.config.model.attn_implementation,)}
    # a run trained with a flash kernel on a GPU, evaluated on this CPU: the same function with auto's kernel
    assert evaluation.inference_attention("flash_attention_2", "cpu") == "auto"
    assert evaluation.inference_attention("eager", "cpu") == "eager"
    asked.clear()
    run = copy.deepcopy(trained_run.config)
    run.model.attn_implementation = "flash_attention_2"
    evaluation.evaluate(run, run_dir)
    assert asked and set(asked) == {("auto",)}


def test_generate_refuses_an_unknown_placement(capsys):
    assert cli.main(["generate", "run=x", "prompt=hi", "dtype=bf17"]) == 2
    assert "dtype=auto|fp32|bf16|fp16" in capsys.readouterr().err


def test_generate_refuses_unknown_settings(capsys):
    assert cli.main(["generate", "run=x", "prompt=hi", "tempreature=1"]) == 2
    assert "does not take 'tempreature=1'" in capsys.readouterr().err


def test_train_can_end_with_a_before_after_evaluation(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "experiment=smoke", "max_steps=12", "dataset.eval_fraction=0.1", "eval.after_training=true",
                     "eval.num_prompts=8", "eval.samples=2", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    result = json.loads((run_dir / "eval.json").read_text())
    for side in ("base", "trained"):
        assert result[side]["prompts"] == 8
        assert summary[f"eval/{side}/reward"] == result[side]["reward"]
    assert "eval_reward" not in summary  # the engine's own final eval is replaced, not run twice
    out = capsys.readouterr().out
    assert "before" in out and "after" in out and "rewards/letter_match/mean" in out

    # A later `aligntune eval` keeps the after-training evaluation: every evaluation has its own file.
    (after,) = (run_dir / "eval").glob("*.json")
    assert re.fullmatch(r"\d{8}-\d{6}_after_training_letters_n8_k2_t0\.7\.json", after.name), after.name
    assert json.loads(after.read_text()) == result
    assert cli.main(["eval", f"run={run_dir}", "eval.num_prompts=4", "eval.samples=1", "eval.temperature=0"]) == 0
    files = sorted((run_dir / "eval").glob("*.json"))
    assert len(files) == 2 and after in files and json.loads(after.read_text()) == result
    latest = json.loads((run_dir / "eval.json").read_text())
    assert latest["by"] == "eval" and latest["settings"]["num_prompts"] == 4 and latest["trained"]["prompts"] == 4
    assert json.loads(next(f for f in files if f != after).read_text()) == latest
    assert "_eval_letters_n4_k1_t0.json" in capsys.readouterr().out
    report = (run_dir / "report.md").read_text()  # rewritten by aligntune eval: both evaluations listed
    rows = [line for line in report.split("## Evaluations")[1].split("##")[0].splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and "after_training" in rows[0] and "| eval |" in rows[1]
    assert f"{result['trained']['reward']:.4g}" in rows[0] and f"(eval/{after.name})" in rows[0]


# --- a model on its own: model= instead of run= ----------------------------------------------------

@pytest.mark.parametrize("model", ["tiny", "aligntune:tiny", "path"])
def test_generate_takes_a_model_preset_a_shipped_id_or_a_path(model, capsys):
    from aligntune.models import tiny

    model = str(tiny.resolve("aligntune:tiny")) if model == "path" else model
    assert cli.main(["generate", f"model={model}", "prompt=Repeat the letter q.", "samples=2", "max_new_tokens=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line[:4] for line in lines[-2:]] == ["[0] ", "[1] "]


def test_generate_and_eval_take_a_run_directory_given_as_model(trained_run, capsys):
    run_dir = trained_run.run_dir.path
    assert cli.main(["generate", f"model={run_dir}", "prompt=Repeat the letter q.", "max_new_tokens=4"]) == 0
    capsys.readouterr()


def test_eval_of_a_model_on_its_own_composes_with_the_other_overrides(workdir, capsys):
    assert cli.main(["eval", "model=tiny", "dataset=letters", "dataset.eval_fraction=0.1", "eval.num_prompts=3",
                     "eval.samples=2", "eval.max_new_tokens=4"]) == 0
    result = json.loads((workdir / "eval.json").read_text())
    assert "base" not in result and result["base_model"] is None  # nothing was trained: no before/after
    assert result["trained"]["prompts"] == 3 and 0 <= result["trained"]["rewards/letter_match/mean"] <= 1
    assert result["settings"]["dataset"] == "letters" and len(list((workdir / "eval").glob("*.json"))) == 1
    out = capsys.readouterr().out
    assert "rewards/letter_match/mean" in out and "model" in out


@pytest.mark.parametrize("args, needles", [
    (["generate", "model=nope", "prompt=hi"], ["'nope' does not exist", "model=tiny"]),
    (["generate", "model=custom", "prompt=hi"], ["model=custom", "model=/path/to/model"]),
    (["generate", "run=a", "model=tiny", "prompt=hi"], ["both run=a and model=tiny", "Give one"]),
    (["generate", "run=nope", "prompt=hi"], ["run=nope does not exist", "model=<a model preset (qwen3_0_6b, smollm2_135m, tiny)"]),
    (["eval", "model=tiny", "algorithm=dpo"], ["Preference evaluation", "run=<run dir>"]),
    (["eval"], ["needs run=", "model=smollm2_135m"]),
])
def test_model_and_run_mistakes_exit_2_with_the_fix(workdir, capsys, args, needles):
    assert cli.main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_inference_weights_load_straight_into_their_dtype_as_loading_fp32_and_casting_would(trained_run):
    import torch
    from transformers import AutoModelForCausalLM

    from aligntune.evaluation import load_for_inference

    folder = trained_run.run_dir.model
    direct, _ = load_for_inference(trained_run.run_dir.path, "cpu", "bf16")
    cast = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(torch.bfloat16)
    mine = dict(direct.named_parameters())
    for name, p in cast.named_parameters():
        assert torch.equal(mine[name], p), name


def test_a_lora_runs_evaluation_reads_its_merged_weights_when_the_run_wrote_them(workdir, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM

    from aligntune.core.backend_factory import create_rl_trainer
    from aligntune.evaluation import load_for_inference

    run = workdir / "run"
    create_rl_trainer(experiment="smoke", max_steps=2, output_dir=run,
                      **{"model.lora.enabled": True, "model.lora.save_merged": True}).train()
    merged, _ = load_for_inference(run, "cpu", "fp32")
    fresh = AutoPeftModelForCausalLM.from_pretrained(str(run / "model"), dtype=torch.float32).merge_and_unload()
    theirs = dict(fresh.named_parameters())
    for name, p in merged.named_parameters():
        assert torch.equal(p, theirs[name]), name  # model_merged/ is the same fp32 merge, read instead of redone
    monkeypatch.setattr(AutoPeftModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("merged again")))
    load_for_inference(run / "model", "cpu", "bf16")  # the model/ folder finds its run's model_merged/ too


def test_eval_batch_size_sets_how_many_completions_decode_together(trained_run, monkeypatch):
    """eval.batch_size reaches model.generate; greedy answers of the fp32 tiny model do not depend on it."""
    from transformers import GenerationMixin

    sizes: list[int] = []
    real = GenerationMixin.generate

    def counting(self, *args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counting)
    for key, value in {"num_prompts": 6, "samples": 2, "temperature": 0}.items():
        monkeypatch.setattr(trained_run.config.eval, key, value)  # restored for the module's other tests
    answers = {}
    for batch in (5, 128):
        sizes.clear()
        monkeypatch.setattr(trained_run.config.eval, "batch_size", batch)
        result = trained_run.evaluate()
        assert result["settings"]["batch_size"] == batch
        answers[batch] = [s["completion"] for s in result["trained"]["samples"]]
        assert sizes == ([5, 5, 2] * 2 if batch == 5 else [12, 12])  # trained, then base: 12 completions each
    assert answers[5] == answers[128]
