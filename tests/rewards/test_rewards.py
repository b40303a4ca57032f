"""The reward registry, user rewards by reference, the pre-training check, and a user reward through the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import read_jsonl

from aligntune import cli
from aligntune.errors import RewardError
from aligntune.rewards.check import CHECK_COMPLETION, check_rewards
from aligntune.rewards.registry import BUILTIN, bind, listing, resolve

ROWS = [{"prompt": "Ben reads 6 pages a day for 2 days. How many pages?", "answer": "12"},
        {"prompt": "Gus had 11 marbles and gave away 2. How many are left?", "answer": "9"}]
CHAT_ROWS = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in ROWS]

USER_REWARDS = '''
from aligntune.rewards.text import completion_text

def score(completions, prompts=None, **kwargs):
    """Fraction of vowels: a dense signal any tiny model can move."""
    texts = [completion_text(c) for c in completions]
    return [sum(ch in "aeiou" for ch in t) / max(len(t), 1) for t in texts]

def needs_difficulty(completions, difficulty, **kwargs):
    return [1.0 for _ in completions]

def no_kwargs(completions, prompts):
    return [1.0 for _ in completions]

def scalar(completions, **kwargs):
    return 1.0

def short(completions, **kwargs):
    return [1.0]

def nan(completions, **kwargs):
    return [float("nan")] * len(completions)

def text(completions, **kwargs):
    return ["good"] * len(completions)

def boom(completions, **kwargs):
    raise KeyError("answer_key")

def scaled(completions, factor=1.0, **kwargs):
    return [factor] * len(completions)
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


# registry

def test_every_builtin_resolves_and_is_listed_with_a_description():
    names = [name for name, _ in listing()]
    assert names == list(BUILTIN)
    for name, doc in listing():
        assert callable(resolve(name)) and len(doc) > 20, name
    assert dict(listing())["correctness"].startswith("1.0 when the completion's final answer")


def test_listing_does_not_import_torch():
    code = "import sys; from aligntune.rewards.registry import listing; listing(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_names_list_the_builtins_and_suggest_the_closest():
    with pytest.raises(RewardError) as err:
        resolve("corectness")
    message = str(err.value)
    assert "Did you mean 'correctness'?" in message and all(name in message for name in BUILTIN)
    with pytest.raises(RewardError, match="Built-in rewards: correctness"):
        resolve("no_such_module_xyz:score")


def test_user_rewards_by_path_and_module(user_file, monkeypatch):
    fn = resolve(f"{user_file}:score")
    assert fn(["aaaa", "bcd"]) == [1.0, 0.0]
    assert fn([[{"role": "assistant", "content": "ab"}]]) == [0.5]  # conversational completions
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert resolve("my_rewards:score")(["e"]) == [1.0]
    with pytest.raises(RewardError, match="has no function 'missing'.*score"):
        resolve(f"{user_file}:missing")
    with pytest.raises(RewardError, match="does not exist"):
        resolve(f"{user_file.parent}/nope.py:score")


def test_bind_names_the_reward_and_checks_its_args(user_file):
    reward = bind("mine", f"{user_file}:scaled", {"factor": 2.0})
    assert reward.__name__ == "mine" and reward(["x", "y"]) == [2.0, 2.0]
    with pytest.raises(RewardError, match=r"rewards.mine.args sets factr.*Its arguments: factor"):
        bind("mine", f"{user_file}:scaled", {"factr": 2.0})
    with pytest.raises(RewardError, match="args sets targte"):
        bind("len", "length", {"targte": 10})


# check_rewards

def check(fn_ref: str, rows=ROWS, args=None):
    check_rewards({"r": bind("r", fn_ref, args or {})}, rows)


def test_check_accepts_well_behaved_rewards(user_file):
    check(f"{user_file}:score")
    check("correctness")
    check("correctness", rows=CHAT_ROWS)
    check("length", args={"target": 10})
    check("overlong", args={"max_length": 32, "cache": 8})  # needs completion_ids, which the check passes
    check("code_execution", rows=[{"prompt": "Write f.", "tests": ["assert f() == 1"]}])


def test_check_reports_a_missing_column_with_the_columns_available(user_file):
    with pytest.raises(RewardError) as err:
        check(f"{user_file}:needs_difficulty")
    assert "'difficulty'" in str(err.value) and "prompt, answer" in str(err.value)
    assert "+dataset.columns.difficulty=" in str(err.value)
    with pytest.raises(RewardError, match="'answer', which is neither a column"):
        check("correctness", rows=[{"prompt": "What is 2 + 2?"}])
    with pytest.raises(RewardError, match=r"'target'.*\+rewards.r.args.target"):
        check("length")


def test_check_reports_each_kind_of_misbehaviour(user_file):
    cases = {"no_kwargs": "does not accept the keyword", "scalar": "returned float instead of a list",
             "short": "returned 1 scores for 2 completions", "nan": "must be finite", "text": r"'good' \(str\)",
             "boom": "raised KeyError: 'answer_key'"}
    for func, expected in cases.items():
        with pytest.raises(RewardError, match=expected) as err:
            check(f"{user_file}:{func}")
        assert "Reward 'r'" in str(err.value), func


def test_check_passes_reward_errors_through_with_the_reward_name():
    with pytest.raises(RewardError, match="Reward 'r': The reward model 'org/not-cached'.*not in the local cache"):
        check("reward_model", args={"model": "org/not-cached"})


def test_check_uses_placeholder_completions_in_the_prompts_shape():
    seen = {}

    def spy(completions, prompts=None, completion_ids=None, trainer_state=None, **kwargs):
        seen.update(completions=completions, ids=completion_ids, state=trainer_state, columns=sorted(kwargs))
        return [0.0] * len(completions)

    check_rewards({"spy": spy}, CHAT_ROWS)
    assert seen["completions"] == [[{"role": "assistant", "content": CHECK_COMPLETION}]] * 2
    assert seen["ids"] == [list(CHECK_COMPLETION.encode())] * 2 and seen["state"].global_step == 0
    assert seen["columns"] == ["answer", "log_extra", "log_metric"]


# through the real CLI

def test_user_reward_file_through_the_cli(workdir):
    (workdir / "my_rewards.py").write_text(textwrap.dedent(USER_REWARDS))
    run_dir = workdir / "run"
    code = cli.main(["train", "experiment=smoke", "max_steps=2", "+rewards.mine.fn=my_rewards.py:score",
                     f"hydra.run.dir={run_dir}"])
    assert code == 0
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(isinstance(m["rewards/mine/mean"], float) and 0.0 <= m["rewards/mine/mean"] <= 1.0 for m in metrics)
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert samples and all(set(s["rewards"]) == {"letter_match", "mine"} for s in samples)
    for s in samples:  # the recorded score is the user's function applied to the recorded completion
        text = s["completion"]
        assert s["rewards"]["mine"] == pytest.approx(sum(ch in "aeiou" for ch in text) / max(len(text), 1))
        assert s["reward"] == pytest.approx(s["rewards"]["letter_match"] + s["rewards"]["mine"])


def test_bad_user_reward_fails_before_training(workdir, capsys):
    (workdir / "my_rewards.py").write_text(textwrap.dedent(USER_REWARDS))
    code = cli.main(["train", "experiment=smoke", "max_steps=2", "+rewards.mine.fn=my_rewards.py:nope",
                     f"hydra.run.dir={workdir / 'run'}"])
    assert code == 2
    assert "has no function 'nope'" in capsys.readouterr().err


def test_broken_reward_fails_before_training(workdir, capsys):
    (workdir / "my_rewards.py").write_text(textwrap.dedent(USER_REWARDS))
    code = cli.main(["train", "experiment=smoke", "max_steps=2", "+rewards.bad.fn=my_rewards.py:needs_difficulty",
                     f"hydra.run.dir={workdir / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Reward 'bad' needs 'difficulty'" in err and "prompt, answer" in err


def test_rewards_command_lists_the_builtins(capsys):
    from aligntune.rewards.registry import BUILTIN

    assert cli.main(["rewards"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in BUILTIN) and "math-verify" in out


# --- rewards.<name>.timeout_s (aligntune/rewards/watchdog.py) ---------------------------------------------------

def _stuck(completions, **kwargs):
    import threading

    threading.Event().wait()  # never returns (releases the GIL: the abandoned daemon thread costs nothing)


def test_a_timed_call_returns_raises_or_times_out_in_the_caller():
    import time

    from aligntune.rewards import watchdog

    ok = watchdog.with_timeout("ok", lambda completions, **kw: [1.0] * len(completions), 5)
    assert ok(completions=["a", "b"]) == [1.0, 1.0]

    def boom(completions, **kw):
        raise KeyError("column")

    with pytest.raises(KeyError, match="column"):  # the reward's own exception, unchanged
        watchdog.with_timeout("boom", boom, 5)(completions=["a"])
    start = time.monotonic()
    with pytest.raises(watchdog.RewardTimeout, match="reward 'stuck' did not return within 0.2 s"):
        watchdog.with_timeout("stuck", _stuck, 0.2)(completions=["a"])
    assert time.monotonic() - start < 2
    assert watchdog.hung()  # the stuck call lives on in its daemon thread


def test_check_reports_a_reward_that_hangs_with_its_timeout():
    from aligntune.rewards import watchdog

    with pytest.raises(RewardError, match=r"Reward 'slow' did not return within rewards.slow.timeout_s=0.2 s .* before "
                                          r"training.*raise rewards.slow.timeout_s"):
        check_rewards({"slow": watchdog.with_timeout("slow", _stuck, 0.2)}, ROWS)


def test_timeout_s_is_a_positive_number():
    from aligntune import preflight
    from aligntune.errors import ConfigError

    run, _ = preflight.load(["model=tiny", "dataset=letters", "+rewards.letter_match.timeout_s=30"])
    assert run.rewards["letter_match"].timeout_s == 30.0
    assert preflight.load(["model=tiny", "dataset=letters"])[0].rewards["letter_match"].timeout_s == 600.0
    with pytest.raises(ConfigError, match="rewards.letter_match.timeout_s=-1 is not a positive number of seconds"):
        preflight.load(["model=tiny", "dataset=letters", "+rewards.letter_match.timeout_s=-1"])


def test_the_worker_thread_runs_in_the_callers_grad_mode_and_cuda_device(monkeypatch):
    import torch

    from aligntune.rewards import watchdog

    chosen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # e.g. LOCAL_RANK 3 of a distributed run
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.setdefault("device", device))

    def seen(completions, **kw):
        return [float(torch.is_grad_enabled())] * len(completions)

    with torch.no_grad():
        assert watchdog.with_timeout("seen", seen, 5)(completions=["a"]) == [0.0]
    assert chosen == {"device": 3}
