"""Checkpoints, exact resume, interruption and divergence guards, on the tiny model through the CLI.

The resume test is the one that matters: a run interrupted by SIGINT at step 3 (of 5) and resumed ends with the
same parameters (max |difference| printed, tolerance 1e-6) and the same metrics.jsonl tail as the same run
left alone. The signal is delivered for real (os.kill on this process) from inside a training step.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from aligntune import cli
from aligntune.errors import EXIT_INTERRUPTED, EXIT_USAGE
from aligntune.run import checkpoints
from aligntune.run.checkpoints import InterruptGuard

# The smoke experiment, smaller: 2 prompts x 4 completions of at most 6 tokens per step (~0.1 s a step).
SMOKE = ["experiment=smoke", "train.batch_size=2", "group_size=4", "algorithm.max_completion_length=6"]
GRPO = [*SMOKE, "train.max_steps=5", "train.log_samples=1", "train.save_steps=2"]
TIMING = {"time_s", "step_time", "epoch", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from aligntune.run import report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIGNTUNE_TRACEBACK", "0")
    # plots and report.md (tests/run/test_report.py covers them) cost seconds per run and prove nothing here
    monkeypatch.setattr(report, "write_run_report_or_warn", lambda run_dir: None)
    return tmp_path


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").glob("*/*/summary.json"))


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("timing/")
             and not k.endswith(("_runtime", "_per_second"))} for r in rows]


def _params(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


ON_STEP_END = InterruptGuard.on_step_end


def _stop_interrupting(monkeypatch) -> None:
    monkeypatch.setattr(InterruptGuard, "on_step_end", ON_STEP_END)


def _interrupt_at(monkeypatch, step: int, signum=signal.SIGINT, times: int = 1) -> None:
    """Deliver `signum` to this process (`times` times) at the end of training step `step`."""
    original = ON_STEP_END

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(InterruptGuard, "on_step_end", on_step_end)


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(workdir, monkeypatch, capsys):
    assert cli.main(["train", *GRPO]) == 0
    (straight,) = _runs(workdir)

    _interrupt_at(monkeypatch, 3)
    code = cli.main(["train", *GRPO])
    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED
    run = next(r for r in _runs(workdir) if r != straight)
    summary = _summary(run)
    assert summary["status"] == "interrupted" and summary["step"] == 3 and summary["signal"] == "SIGINT"
    assert f"aligntune train resume={run}" in err and "SIGINT received" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-3"]
    ckpt = run / "checkpoints" / "checkpoint-3"
    for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "config.yaml"):
        assert (ckpt / f).is_file(), f
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 3
    assert not (run / "model").exists()

    _stop_interrupting(monkeypatch)
    assert cli.main(["train", f"resume={run}"]) == 0
    assert _runs(workdir) == sorted([straight, run]), "a resumed run continues in its own directory"
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 5
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    # steps 4 (save_steps=2) and 5 (transformers saves at the last step too); 3 rotated out by save_total_limit=2
    assert names == ["checkpoint-4", "checkpoint-5"], "keep-last-2 and no staging directory left"

    a, b = _params(straight), _params(run)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nmax |parameter difference| resumed vs uninterrupted: {diff:.3g}")
    assert diff <= 1e-6
    changed = max((a[k] - _params_initial(workdir)[k]).abs().max().item() for k in a)
    assert changed > 1e-4, "training changed the parameters"
    ma, mb = _metrics(straight), _metrics(run)
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5]
    assert ma[-2:] == mb[-2:], "the metrics after the resume point are the uninterrupted run's"
    assert ma == mb


def _params_initial(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from aligntune.models import tiny

    return load_file(str(tiny.resolve("aligntune:tiny") / "model.safetensors"))


def test_resuming_a_completed_run_says_so_and_trains_nothing(workdir, capsys):
    assert cli.main(["train", *SMOKE, "train.max_steps=2", "train.save_steps=1"]) == 0
    (run,) = _runs(workdir)
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli.main(["train", f"resume={run}"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "already completed (2 steps)" in err and "would train nothing" in err and "model.name_or_path=" in err
    assert (run / "metrics.jsonl").read_text() == before and _summary(run)["status"] == "completed"


def _interrupted_run(workdir, monkeypatch, capsys, *extra) -> Path:
    _interrupt_at(monkeypatch, 1)
    assert cli.main(["train", *SMOKE, "train.max_steps=3", *extra]) == EXIT_INTERRUPTED
    _stop_interrupting(monkeypatch)
    capsys.readouterr()
    (run,) = _runs(workdir)
    return run


def test_resume_with_a_changed_config_lists_the_differences_unless_forced(workdir, monkeypatch, capsys):
    run = _interrupted_run(workdir, monkeypatch, capsys)
    assert cli.main(["train", f"resume={run}", "learning_rate=0.5", "group_size=2"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "algorithm.group_size: 4 -> 2" in err and "train.learning_rate:" in err and "-> 0.5" in err
    assert "resume_force=true" in err
    assert _summary(run)["status"] == "interrupted"
    # the Python API checks the same
    from aligntune.core.backend_factory import create_rl_trainer
    from aligntune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.01 -> 0\.5"):
        create_rl_trainer(output_dir=run, resume=str(run), overrides=[*SMOKE, "train.max_steps=3", "learning_rate=0.5"])
    assert _summary(run)["status"] == "interrupted"
    # settings that do not change the optimisation may differ; `latest` finds the run
    assert cli.main(["train", "resume=latest", "train.log_samples=0"]) == 0
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["log_samples"] == 0


@pytest.mark.slow
def test_resume_force_accepts_a_changed_config(workdir, monkeypatch, capsys):
    run = _interrupted_run(workdir, monkeypatch, capsys)
    assert cli.main(["train", f"resume={run}", "train.max_steps=4", "resume_force=true"]) == 0
    assert "train.max_steps: 3 -> 4" in capsys.readouterr().out
    assert _summary(run)["steps"] == 4


def test_sigterm_also_checkpoints_and_a_second_ctrl_c_exits_at_once(workdir, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a shell's background job
    _interrupt_at(monkeypatch, 1, signal.SIGTERM)
    assert cli.main(["train", *SMOKE, "train.max_steps=3"]) == EXIT_INTERRUPTED
    (first,) = _runs(workdir)
    assert _summary(first)["signal"] == "SIGTERM" and (first / "checkpoints" / "checkpoint-1").is_dir()
    _stop_interrupting(monkeypatch)
    _interrupt_at(monkeypatch, 1, times=2)
    assert cli.main(["train", *SMOKE, "train.max_steps=3"]) == EXIT_INTERRUPTED
    second = next(r for r in _runs(workdir) if r != first)
    summary = _summary(second)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT (twice)" and summary["checkpoint"] is None
    assert "interrupted at once" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before, "the handlers are restored"


@pytest.mark.slow  # ~3 s idle; the default suite's time budget is tight
def test_checkpoints_are_written_atomically_and_rotated(workdir):
    assert cli.main(["train", *SMOKE, "train.max_steps=3", "train.save_steps=1",
                     "train.save_total_limit=2"]) == 0
    (run,) = _runs(workdir)
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["checkpoint-2", "checkpoint-3"], "keep-last-2, and no staging directory left behind"


def test_a_checkpoint_interrupted_mid_write_never_looks_valid(tmp_path):
    class FakeState:
        global_step = 7

    class FakeArgs:
        output_dir = str(tmp_path / "checkpoints")
        should_save = True
        save_total_limit = None

    class FakeTrainer:
        state, args = FakeState(), FakeArgs()

        def _get_output_dir(self, trial=None):
            raise AssertionError("replaced while saving")

        def _save_checkpoint(self, model, trial):
            out = Path(self._get_output_dir(trial)) / "checkpoint-7"
            out.mkdir(parents=True)
            (out / "model.safetensors").write_text("half")
            raise OSError("disk full")

    trainer = FakeTrainer()
    checkpoints.make_atomic(trainer, tmp_path / "config.yaml")
    with pytest.raises(OSError):
        trainer._save_checkpoint(None, None)
    assert checkpoints.latest(tmp_path / "checkpoints") is None
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(tmp_path / "checkpoints")) is None


def test_nan_reward_stops_with_the_step_and_the_quantity_after_checkpointing(workdir, capsys):
    (workdir / "flaky.py").write_text(
        "calls = {'n': 0}\n"
        "def score(completions, **kw):\n"
        "    calls['n'] += 1\n"
        "    return [float('nan') if calls['n'] == 4 else 1.0] * len(completions)\n")
    code = cli.main(["train", *SMOKE, "train.max_steps=4", "+rewards.flaky.fn=flaky.py:score"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_USAGE
    (run,) = _runs(workdir)
    # call 1 is the pre-training check; calls 2, 3 are steps 1, 2; call 4 is step 3
    assert "Training diverged at step 3: the reward 'flaky'" in err and "train.on_nonfinite=skip" in err
    assert "checkpoint-2" in err and (run / "checkpoints" / "checkpoint-2" / "optimizer.pt").is_file()
    assert _summary(run)["status"] == "failed" and "diverged" in _summary(run)["error"]
    assert "Traceback" not in err


def test_nan_gradient_stops_before_the_update(workdir, capsys, monkeypatch):
    from aligntune.run.guards import NonFiniteGuard

    seen = {}
    original = NonFiniteGuard.on_pre_optimizer_step

    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:  # during step 2
            seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            next(p for p in model.parameters() if p.grad is not None).grad[0] = float("inf")
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(NonFiniteGuard, "on_pre_optimizer_step", poison)
    assert cli.main(["train", *SMOKE, "train.max_steps=3"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "Training diverged at step 2: the gradient" in err
    (run,) = _runs(workdir)
    from safetensors.torch import load_file

    saved = load_file(str(run / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    assert all(torch.equal(saved[n], seen["before"][n]) for n in saved if n in seen["before"]), \
        "the checkpoint holds the state before the bad step"


@pytest.mark.slow  # ~3 s idle; the default suite's time budget is tight
def test_on_nonfinite_skip_skips_the_step_and_trains_on(workdir, capsys, monkeypatch):
    from aligntune.run.guards import NonFiniteGuard

    original = NonFiniteGuard.on_pre_optimizer_step

    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            next(p for p in model.parameters() if p.grad is not None).grad[0] = float("nan")
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(NonFiniteGuard, "on_pre_optimizer_step", poison)
    assert cli.main(["train", *SMOKE, "train.max_steps=3", "train.on_nonfinite=skip"]) == 0
    assert "step 2: non-finite gradient, the update is skipped" in " ".join(capsys.readouterr().err.split())
    (run,) = _runs(workdir)
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 3
    assert all(torch.isfinite(t).all() for t in _params(run).values())


FAILS_LATER = """
import threading

def raises(completions, trainer_state=None, **kwargs):
    if trainer_state.global_step >= 1:  # the check before training and step 1 pass; step 2 fails
        raise ValueError("cannot score " + repr(completions[0])[:12])
    return [float(len(str(c))) for c in completions]

def hangs(completions, trainer_state=None, **kwargs):
    if trainer_state.global_step >= 1:
        threading.Event().wait()  # forever
    return [float(len(str(c))) for c in completions]
"""


@pytest.mark.parametrize("fn, needle", [
    pytest.param("raises", "Reward 'late' raised ValueError: cannot score", id="raises"),
    pytest.param("hangs", "Reward 'late' did not return within rewards.late.timeout_s=0.5 s at step 2, so the run "
                 "stopped", id="hangs"),
])
def test_a_reward_failing_mid_training_is_named_with_its_step_after_checkpointing(workdir, capsys, fn, needle):
    """Items 9 and 10 of issue 18: a reward that raises at step 2, or hangs there past its timeout_s, stops the run
    with one paragraph naming the reward and the step (not 'the run failed with ValueError'), after checkpointing
    the last good state, as the divergence guards do; the run is marked failed, the command exits 2."""
    (workdir / "late.py").write_text(FAILS_LATER)
    limit = ["+rewards.late.timeout_s=0.5"] if fn == "hangs" else []
    code = cli.main(["train", *SMOKE, "train.max_steps=3", f"+rewards.late.fn=late.py:{fn}", *limit])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_USAGE, err
    assert needle in err and "at step 2" in err and "the run failed with" not in err and "Traceback" not in err
    (run,) = _runs(workdir)
    assert "the last good state (step 1) is checkpointed in" in err and f"resume={run}" in err
    assert (run / "checkpoints" / "checkpoint-1" / "optimizer.pt").is_file()
    summary = _summary(run)
    assert summary["status"] == "failed" and "Reward 'late'" in summary["error"] and not (run / "model").exists()
    if fn == "raises":
        assert "ValueError: cannot score" in (run / "train.log").read_text()  # the reward's traceback is logged


def test_a_run_stopped_by_a_slow_reward_resumes_with_a_longer_timeout():
    from aligntune.run.resume import differences

    ran = {"rewards": {"late": {"fn": "late.py:hangs", "weight": 1.0, "timeout_s": 0.5}}, "seed": 1}
    longer = {"rewards": {"late": {"fn": "late.py:hangs", "weight": 1.0, "timeout_s": 60.0}}, "seed": 1}
    assert differences(ran, longer) == []  # the message's fix ("raise rewards.late.timeout_s, then resume") works
    assert differences(ran, {**longer, "seed": 2}) == ["seed: 1 -> 2"]


@pytest.mark.slow  # ~5 s
def test_a_reward_failing_mid_ppo_is_named_with_its_step(workdir, capsys):
    (workdir / "late.py").write_text(FAILS_LATER)
    code = cli.main(["train", "experiment=ppo_smoke", "train.max_steps=3", "~rewards.letter_match",
                     "+rewards.late.fn=late.py:raises"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_USAGE and "Reward 'late' raised ValueError: cannot score" in err and "at step 2" in err
    (run,) = _runs(workdir)
    assert "the last good state (step 1) is checkpointed in" in err and f"resume={run}" in err
    assert (run / "checkpoints" / "checkpoint-1" / "critic" / "model.safetensors").is_file()
    assert _summary(run)["status"] == "failed"


@pytest.mark.slow  # ~10 s: a process of its own
def test_the_command_exits_although_a_hung_reward_thread_cannot_be_stopped(workdir):
    import subprocess
    import sys

    (workdir / "late.py").write_text(FAILS_LATER)
    done = subprocess.run([sys.executable, "-m", "aligntune", "train", *SMOKE, "train.max_steps=3",
                           "+rewards.late.fn=late.py:hangs", "+rewards.late.timeout_s=0.5"], cwd=workdir, timeout=300,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Reward 'late' did not return within" in " ".join(done.stderr.split())
    (run,) = _runs(workdir)
    assert _summary(run)["status"] == "failed"


# --- PPO (the native engine) checkpoints, resumes and guards as the TRL runs do -------------------------------

PPO = ["experiment=ppo_smoke", "model.dtype=fp32", "train.max_steps=4", "train.batch_size=4",
       "algorithm.max_completion_length=6", "train.log_samples=1"]


def test_an_interrupted_and_resumed_ppo_run_equals_the_uninterrupted_one(workdir, monkeypatch, capsys):
    """Also: save_steps and rotation (save_steps may change on resume), and a changed config refused with the list."""
    assert cli.main(["train", *PPO]) == 0
    (straight,) = _runs(workdir)

    _interrupt_at(monkeypatch, 2)
    assert cli.main(["train", *PPO, "train.save_steps=1"]) == EXIT_INTERRUPTED
    err = " ".join(capsys.readouterr().err.split())
    run = next(r for r in _runs(workdir) if r != straight)
    summary = _summary(run)
    assert summary["status"] == "interrupted" and summary["step"] == 2 and summary["resume"] == f"aligntune train resume={run}"
    assert f"aligntune train resume={run}" in err and "SIGINT received" in err
    ckpt = run / "checkpoints" / "checkpoint-2"
    for f in ("model.safetensors", "critic/model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
              "engine_state.json", "trainer_state.json", "config.yaml"):
        assert (ckpt / f).is_file(), f
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2
    assert not (run / "model").exists() and not (run / "checkpoints" / ".staging").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]

    assert cli.main(["train", f"resume={run}", "algorithm.vf_coef=0.5"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "algorithm.vf_coef: 0.1 -> 0.5" in err and "resume_force=true" in err

    _stop_interrupting(monkeypatch)
    assert cli.main(["train", f"resume={run}"]) == 0
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 4
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["checkpoint-3", "checkpoint-4"], "save_total_limit=2 rotates, no staging left"
    assert (run / "checkpoints" / "checkpoint-4" / "critic" / "config.json").is_file()
    a, b = _params(straight), _params(run)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nppo: max |parameter difference| resumed vs uninterrupted: {diff:.3g}")
    assert diff == 0
    assert max((a[k] - _params_initial(workdir)[k]).abs().max().item() for k in a) > 1e-4, "training changed them"
    ma, mb = _metrics(straight), _metrics(run)
    assert [m["step"] for m in mb if "loss" in m] == [1, 2, 3, 4]
    assert ma == mb


def test_ppo_on_nonfinite_skip_drops_nan_rewards_and_trains_on(workdir, capsys):
    (workdir / "flaky.py").write_text(
        "calls = {'n': 0}\n"
        "def score(completions, **kw):\n"
        "    calls['n'] += 1\n"
        "    return [float('nan') if calls['n'] == 3 else float(len(str(c))) for c in completions]\n")
    args = ["train", *PPO, "train.max_steps=3", "~rewards.letter_match", "+rewards.flaky.fn=flaky.py:score"]
    assert cli.main([*args, "train.on_nonfinite=skip"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "step 2: reward 'flaky' returned 4 non-finite score(s) of 4; they are skipped" in err
    (run,) = _runs(workdir)
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 3
    rows = {m["step"]: m for m in _metrics(run) if "loss" in m}
    assert rows[2]["rewards/unscored"] == 4 and rows[2]["ppo/updates"] == 0, "nothing scored: no update"
    assert rows[3]["ppo/updates"] > 0 and all(torch.isfinite(t).all() for t in _params(run).values())


def _poison_ppo_gradient(monkeypatch, during_step: int) -> dict:
    """NaN in a gradient at the first update of step `during_step`; returns the parameters seen just before it."""
    from aligntune.run.guards import NonFiniteGuard

    seen: dict = {}
    original = NonFiniteGuard.on_pre_optimizer_step

    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == during_step - 1 and not seen:
            seen.update({n: p.detach().clone() for n, p in model.named_parameters()})
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
        return original(self, args, state, control, model=model, **kwargs)

    monkeypatch.setattr(NonFiniteGuard, "on_pre_optimizer_step", poison)
    return seen


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_ppo_nan_gradient_skips_the_update_or_stops_before_it(workdir, capsys, monkeypatch, policy):
    seen = _poison_ppo_gradient(monkeypatch, 2)
    code = cli.main(["train", *PPO, "train.max_steps=2", f"train.on_nonfinite={policy}"])
    err = " ".join(capsys.readouterr().err.split())
    (run,) = _runs(workdir)
    if policy == "skip":
        assert code == 0 and "step 2: non-finite gradient, the update is skipped" in err
        rows = {m["step"]: m for m in _metrics(run) if "loss" in m}
        assert rows[2]["ppo/skipped_updates"] == 1 and "ppo/skipped_updates" not in rows[1]
        assert all(torch.isfinite(t).all() for t in _params(run).values())
        return
    assert code == EXIT_USAGE and "Training diverged at step 2: the gradient" in err and "not applied" in err
    from safetensors.torch import load_file

    saved = load_file(str(run / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    assert all(torch.equal(saved[n], seen["0." + n]) for n in saved), "the checkpoint holds the state before step 2"


def test_ppo_nan_reward_stops_after_checkpointing_the_last_good_step(workdir, capsys):
    (workdir / "flaky.py").write_text(
        "calls = {'n': 0}\n"
        "def score(completions, **kw):\n"
        "    calls['n'] += 1\n"
        "    return [float('nan') if calls['n'] == 3 else 1.0] * len(completions)\n")
    code = cli.main(["train", *PPO, "train.max_steps=3", "~rewards.letter_match", "+rewards.flaky.fn=flaky.py:score"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_USAGE and "Training diverged at step 2: the reward 'flaky'" in err
    (run,) = _runs(workdir)
    ckpt = run / "checkpoints" / "checkpoint-1"
    assert "checkpoint-1" in err and (ckpt / "optimizer.pt").is_file()
    engine = json.loads((ckpt / "engine_state.json").read_text())
    assert engine["prompts_seen"] == 4, "the data position of step 1, not of the failed step 2"


# --- memory preflight ------------------------------------------------------------------------------------

def test_memory_estimate_counts_the_real_parameters_and_what_the_algorithm_keeps():
    from aligntune import preflight
    from aligntune.core.job import AlignmentJob  # noqa: F401 - the job calls memory.check
    from aligntune.models.loading import load_model
    from aligntune.run import memory

    run, _ = preflight.load(["model=tiny", "train.shared_prefix=false"])
    est = memory.estimate(run)
    assert est["parameters"] == sum(p.numel() for p in load_model(run.model).parameters())
    assert est["weights"] == est["reference"] == 4 * est["parameters"] and est["optimizer"] == 8 * est["parameters"]
    assert est["total"] == sum(v for k, v in est.items() if k not in ("total", "parameters"))
    no_kl = memory.estimate(preflight.load(["model=tiny", "beta=0.0", "train.shared_prefix=false"])[0])
    assert no_kl["reference"] == 0
    lora = memory.estimate(preflight.load(["model=tiny", "model.lora.enabled=true", "train.shared_prefix=false"])[0])
    assert lora["reference"] == 0 and 0 < lora["optimizer"] < est["optimizer"] / 2
    longer = memory.estimate(preflight.load(["model=tiny", "algorithm.max_completion_length=512", "train.shared_prefix=false"])[0])
    assert longer["activations"] > est["activations"]
    ckpt = memory.estimate(preflight.load(["model=tiny", "train.gradient_checkpointing=true", "train.shared_prefix=false"])[0])
    assert ckpt["activations"] < est["activations"]
    assert memory.estimate(preflight.load(["experiment=ppo_smoke"])[0])["critic"] == 16 * est["parameters"]
    # KTO keeps a reference (unless precomputed) and runs each row with its mismatched KL sequence (loss_type kto)
    kto = memory.estimate(preflight.load(["experiment=kto_smoke"])[0])
    assert kto["reference"] == 4 * est["parameters"]
    assert memory.estimate(preflight.load(["experiment=kto_smoke", "algorithm.precompute_ref_log_probs=true"])[0])[
        "reference"] == 0
    apo = memory.estimate(preflight.load(["experiment=kto_smoke", "algorithm.loss_type=apo_zero_unpaired"])[0])
    assert apo["activations"] < kto["activations"]


def test_memory_estimate_counts_each_shared_prompt_once_and_the_rollouts_prepared_copy():
    from aligntune import preflight
    from aligntune.run import memory

    shared = memory.estimate(preflight.load(["model=tiny"])[0], "fp32", "cpu")  # null on CPU: on
    plain = memory.estimate(preflight.load(["model=tiny", "train.shared_prefix=false"])[0], "fp32", "cpu")
    assert 0 < shared["activations"] < plain["activations"]
    assert memory.estimate(preflight.load(["model=tiny"])[0], "fp32", "cuda")["activations"] == plain["activations"]
    # rollouts decode on a copy of the linear layers' weights (rollout.prepared_weights: on for CPU)
    assert 0 < shared["rollout"] <= 4 * shared["parameters"]
    assert memory.estimate(preflight.load(["model=tiny", "rollout.prepared_weights=false"])[0])["rollout"] == 0
    assert memory.estimate(preflight.load(["experiment=dpo_smoke"])[0])["rollout"] == 0


def test_memory_estimate_follows_the_compute_precision_and_the_fused_head():
    from aligntune import preflight
    from aligntune.run import memory

    run = preflight.load(["model=tiny", "algorithm=dpo", "dataset=prefs", "model.attn_implementation=sdpa"])[0]
    fp32, bf16 = memory.estimate(run, "fp32", "cpu"), memory.estimate(run, "bf16", "cpu")
    n = fp32["parameters"]
    auto = preflight.load(["model=tiny", "algorithm=dpo", "dataset=prefs", "algorithm.max_length=64"])[0]
    # auto on CPU trains 16-bit short sequences with eager attention, which keeps its probabilities for the backward
    assert memory.estimate(auto, "bf16", "cpu")["activations"] > memory.estimate(auto, "fp32", "cpu")["activations"] / 2
    # bf16 weights on a CPU: 2-byte weights and reference, fp32 masters, bf16 gradients plus their fp32 upcast
    assert fp32["weights"] == fp32["reference"] == 4 * n and fp32["gradients"] == 4 * n
    assert bf16["weights"] == 6 * n and bf16["reference"] == 2 * n and bf16["gradients"] == 6 * n
    assert bf16["activations"] * 2 == fp32["activations"]  # 16-bit activations; TRL's fused head keeps no logits
    assert memory.estimate(run, "bf16", "cuda")["weights"] == 4 * n  # CUDA: fp32 weights under autocast
    ppo_run = preflight.load(["experiment=ppo_smoke"])[0]
    (seqs, tokens), vocab = memory.batch_shape(ppo_run), memory._meta_model(ppo_run)[1].vocab_size
    assert memory.estimate(ppo_run)["activations"] > seqs * tokens * vocab * 8  # native PPO materialises the logits


def test_memory_preflight_warns_before_loading_weights_when_the_machine_is_too_small(workdir, capsys, monkeypatch):
    from aligntune.models import loading
    from aligntune.run import memory

    order = []
    monkeypatch.setattr(memory, "available", lambda device: (order.append("estimate") or 1000, "available RAM"))
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: (order.append("load"), real_load(*args, **kwargs))[1])
    assert cli.main(["train", *SMOKE, "train.max_steps=1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: this run needs about" in err and "more than the 0.0 MB of available RAM" in err
    assert "train.gradient_checkpointing" in err and "weights" in err and "activations" in err
    assert order[0] == "estimate" and "load" in order


def test_no_memory_warning_when_it_fits(workdir, capsys):
    from aligntune import preflight
    from aligntune.run import memory

    memory.check(preflight.load(["model=tiny"])[0])
    assert "warning" not in capsys.readouterr().err


# --- GRPO failure signs ------------------------------------------------------------------------------------

class _State:
    is_world_process_zero = True

    def __init__(self, step):
        self.global_step = step


def test_grpo_failure_signs_are_warned_once_with_the_numbers(capsys):
    from aligntune import preflight
    from aligntune.run.guards import TrainingWarnings

    warn = TrainingWarnings(preflight.load(["model=tiny", "dataset=letters"])[0])
    logs = [{"frac_reward_zero_std": 0.25, "entropy": 2.0, "completions/clipped_ratio": 1.0},
            {"frac_reward_zero_std": 0.75, "entropy": 1.0, "completions/clipped_ratio": 1.0},
            {"frac_reward_zero_std": 0.9, "entropy": 0.1, "completions/clipped_ratio": 0.97},
            {"frac_reward_zero_std": 1.0, "entropy": 0.05, "completions/clipped_ratio": 1.0}]
    for step, entry in enumerate(logs, 1):
        warn.on_log(None, _State(step), None, logs=entry)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning:") == 3
    assert "step 2: 75% of the groups had the same reward" in err
    assert "step 3: entropy collapsed to 0.1 from 2" in err
    assert "step 3: 97% or more of the completions hit algorithm.max_completion_length=12 in each of the last 3" in err


def test_healthy_grpo_logs_warn_nothing(capsys):
    from aligntune import preflight
    from aligntune.run.guards import TrainingWarnings

    warn = TrainingWarnings(preflight.load(["model=tiny", "dataset=letters"])[0])
    for step in range(1, 6):
        warn.on_log(None, _State(step), None, logs={"frac_reward_zero_std": 0.3, "entropy": 1.5 - 0.1 * step,
                                                     "completions/clipped_ratio": 0.5 if step % 2 else 1.0})
    assert "warning" not in capsys.readouterr().err


# --- every TRL algorithm resumes exactly -------------------------------------------------------------------

ALGORITHMS = {
    "dpo": ["experiment=dpo_smoke", "train.max_steps=4"],
    "kto": ["experiment=kto_smoke", "train.max_steps=4"],
    "sft": ["algorithm=sft", "dataset=letters_sft", "train.max_steps=4"],
    "reward": ["algorithm=reward", "dataset=prefs", "train.max_steps=4"],
    "rloo": ["algorithm=rloo", "train.batch_size=2", "group_size=2", "algorithm.max_completion_length=6",
             "train.max_steps=4"],
    # two optimizer steps per rollout: an interrupt at step 1 finishes the rollout (step 2) before stopping
    "grpo-2-mini-batches": [*SMOKE, "algorithm.num_mini_batches=2", "train.max_steps=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_trl_algorithm_resumes_exactly(workdir, monkeypatch, capsys, name):
    args = [*ALGORITHMS[name], "train.log_samples=1"]
    assert cli.main(["train", *args]) == 0
    (straight,) = _runs(workdir)
    _interrupt_at(monkeypatch, 1)
    assert cli.main(["train", *args]) == EXIT_INTERRUPTED
    run = next(r for r in _runs(workdir) if r != straight)
    stopped = 2 if "mini-batches" in name else 1
    assert _summary(run)["step"] == stopped and (run / "checkpoints" / f"checkpoint-{stopped}").is_dir()
    _stop_interrupting(monkeypatch)
    assert cli.main(["train", f"resume={run}"]) == 0
    a, b = _params(straight), _params(run)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\n{name}: max |parameter difference| resumed vs uninterrupted: {diff:.3g}")
    assert diff <= 1e-6
    assert _metrics(straight) == _metrics(run)


def test_save_steps_must_fall_on_rollout_boundaries(workdir, capsys):
    assert cli.main(["train", "algorithm.num_mini_batches=2", "train.save_steps=3"]) == EXIT_USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert "train.save_steps=3 would checkpoint in the middle of a rollout" in err and "multiple of 2" in err


@pytest.mark.slow  # ~10 s
def test_an_interrupted_ppo_run_with_lora_and_adaptive_kl_resumes_exactly(workdir, monkeypatch, capsys):
    """SIGTERM this time; a LoRA policy (its adapter is what is checkpointed) and the adaptive KL controller."""
    args = [*PPO, "model.lora.enabled=true", "algorithm.adaptive_kl=true", "train.max_steps=4"]
    assert cli.main(["train", *args]) == 0
    (straight,) = _runs(workdir)
    _interrupt_at(monkeypatch, 1, signal.SIGTERM)
    assert cli.main(["train", *args]) == EXIT_INTERRUPTED
    run = next(r for r in _runs(workdir) if r != straight)
    assert (run / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").is_file()
    _stop_interrupting(monkeypatch)
    assert cli.main(["train", f"resume={run}"]) == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(r / "model" / "adapter_model.safetensors")) for r in (straight, run))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0
    assert _metrics(straight) == _metrics(run)


@pytest.mark.slow
def test_real_ctrl_c_on_the_aligntune_command_then_resume(workdir):
    """The installed command in its own process: SIGINT once metrics flow, exit 130, then resume=latest completes."""
    import shutil
    import subprocess
    import sys
    import time

    exe = shutil.which("aligntune", path=str(Path(sys.executable).parent))
    args = [exe, "train", *SMOKE, "train.max_steps=40"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.stat().st_size for p in workdir.glob("outputs/*/*/metrics.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_INTERRUPTED, err
    (run,) = _runs(workdir)
    summary = _summary(run)
    assert summary["status"] == "interrupted" and 0 < summary["step"] < 40
    assert "Resume with:" in err and "Traceback" not in err
    done = subprocess.run([exe, "train", "resume=latest"], check=False, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert _summary(run)["status"] == "completed" and _summary(run)["steps"] == 40
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 41))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_element_anywhere(dtype, bad):
    from aligntune.run.guards import all_finite

    grads = [torch.randn(7, 5, dtype=dtype), torch.empty(0, dtype=dtype), torch.randn(3, dtype=dtype) * 1e30]
    assert all_finite(grads) and all_finite([]) and all_finite([torch.empty(0)])
    grads[2][1] = bad
    assert not all_finite(grads)
    grads[2][1], grads[0][6, 4] = 0.0, bad
    assert not all_finite(grads)


def test_all_finite_is_not_fooled_by_a_sum_that_overflows():
    from aligntune.run.guards import all_finite

    big = torch.full((4,), 3e38)  # finite elements whose sum is inf: the element-wise re-check decides
    assert torch.isinf(big.sum()) and all_finite([big, torch.ones(3)])
    big[2] = float("nan")
    assert not all_finite([big])


def test_training_state_is_released_once_training_has_ended(workdir, monkeypatch):
    """The optimizer's moments and the gradients are freed before the merge and the evaluation (peak RSS)."""
    from aligntune.core.backend_factory import create_rl_trainer
    from aligntune.run import memory

    released = []
    real = memory.release_training_state

    def spy(trainer):
        assert trainer.optimizer.state  # Adam moments exist until now
        real(trainer)
        released.append((len(trainer.optimizer.state), [p.grad for p in trainer.model.parameters()]))

    monkeypatch.setattr(memory, "release_training_state", spy)
    job = create_rl_trainer(experiment="smoke", max_steps=2, output_dir=workdir / "run")
    assert job.train()["status"] == "completed"
    (count, grads), = released
    assert count == 0 and all(g is None for g in grads)
    assert isinstance(memory.return_freed_memory(), bool)


def test_the_memory_estimate_is_refined_with_the_datas_longest_sequence(workdir):
    """dpo_smoke's pairs are far shorter than algorithm.max_length: the recorded estimate uses their real length."""
    import json

    from aligntune import preflight
    from aligntune.run import memory

    run_dir = workdir / "run"
    assert cli.main(["train", "experiment=dpo_smoke", "train.max_steps=1", f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    run = preflight.load(["experiment=dpo_smoke", "train.max_steps=1"])[0]
    at_limit = memory.estimate(run, summary["compute_dtype"], "cpu")["total"] / 2**30
    log = (run_dir / "train.log").read_text()
    assert "with the data's longest sequence" in log
    longest = int(log.split("with the data's longest sequence (")[1].split(" tokens")[0])
    assert 0 < longest < run.algorithm.max_length
    refined = memory.estimate(run, summary["compute_dtype"], "cpu", tokens=longest)["total"] / 2**30
    assert summary["memory_estimate_gib"] == round(refined, 3) < round(at_limit, 3)


def test_grpo_prompts_are_measured_for_the_estimate_and_longer_ones_raise_it(workdir):
    """The smoke run's prompts are measured (longest prompt + algorithm.max_completion_length, logged); prompts
    shorter than the assumed PROMPT_TOKENS keep it as a floor, longer ones raise the estimate to their length, and a
    configured dataset.max_prompt_length stays the cap."""
    from aligntune import preflight
    from aligntune.run import memory

    run_dir = workdir / "run"
    assert cli.main(["train", *SMOKE, "train.max_steps=1", f"hydra.run.dir={run_dir}"]) == 0
    log = (run_dir / "train.log").read_text()
    longest = int(log.split("with the data's longest sequence (")[1].split(" tokens")[0])
    run = preflight.load([*SMOKE, "train.max_steps=1"])[0]
    completion = run.algorithm.max_completion_length
    assert completion < longest < memory.PROMPT_TOKENS + completion  # short prompts: measured, and below the floor
    seqs, assumed = memory.batch_shape(run)
    assert assumed == memory.PROMPT_TOKENS + completion and memory.batch_shape(run, longest) == (seqs, assumed)
    assert memory.batch_shape(run, 400 + completion) == (seqs, 400 + completion)
    assert memory.estimate(run, tokens=400 + completion)["activations"] > memory.estimate(run)["activations"]
    capped = preflight.load([*SMOKE, "dataset.max_prompt_length=64"])[0]
    assert memory.batch_shape(capped, 400 + completion) == (seqs, 64 + completion)

