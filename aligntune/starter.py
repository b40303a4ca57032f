"""`aligntune init [DIR]`: a starter project for a team's own configs, offline and checked in CI from the first commit.

    configs/experiment/example.yaml    GRPO on the tiny model and the shipped letters prompts, with the team's reward
    rewards/my_reward.py               a reward function with TRL's signature
    tests/test_my_reward.py            its unit test (pytest)
    .github/workflows/aligntune.yml    CI: aligntune check --config-dir configs --smoke

Right after `init`, `aligntune check --config-dir configs --smoke` passes when run in DIR. Existing files are never
overwritten: `init` refuses, naming them.
"""

from __future__ import annotations

from pathlib import Path

from aligntune.errors import EXIT_USAGE, ConfigError, report

USAGE = "Usage: aligntune init [DIR] (default: the current directory)"

EXPERIMENT = """\
# @package _global_
# The team's first experiment: GRPO on the tiny offline model and the shipped letters prompts, scored by the team's
# own reward (rewards/my_reward.py) next to the shipped letter_match. Runs in seconds on a CPU, with no network.
#   aligntune train --config-dir configs experiment=example
#   aligntune check --config-dir configs --smoke      # what CI runs (.github/workflows/aligntune.yml)
# Make it yours: a real model (model=smollm2_135m, or model.name_or_path=<hub id or local dir>), your data
# (dataset.name=path/to/data.jsonl, or a configs/dataset/<name>.yaml of your own; its rewards then go in
# configs/rewards/<name>.yaml). A file here must not share its name with a shipped option (`aligntune check` says so).
defaults:
  - override /model: tiny          # a random-init model built locally: for CI, not for results
  - override /dataset: letters     # shipped prompts ("Repeat the letter q."), with an `answer` column
  - override /algorithm: grpo
rewards:
  my_reward:
    fn: rewards/my_reward.py:my_reward   # path relative to the directory aligntune runs from (this project's root)
    weight: 0.5                          # its share of the summed reward; letter_match keeps weight 1.0
train:
  max_steps: 20          # optimizer steps (debug=smoke, as in `aligntune check --smoke`, cuts this to 3)
  learning_rate: 1e-2    # large, because the tiny model starts random; use ~1e-6..1e-5 for a pretrained one
algorithm:
  group_size: 4          # completions per prompt; more = better advantage estimates, more compute per step
seed: 0
"""

REWARD = '''\
"""The team's reward: TRL's reward-function signature, one float per completion.

Referenced from configs/experiment/example.yaml as `rewards.my_reward.fn: rewards/my_reward.py:my_reward`. Dataset
columns (here the letters task's `answer`) arrive as keyword arguments, one value per completion.
"""


def _text(completion) -> str:
    """A completion is a string (prompt datasets) or a list of chat messages (conversational ones)."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


def my_reward(completions, **kwargs) -> list[float]:
    """The share of the completion's characters that are the requested letter (`answer`), in [0, 1]."""
    answers = kwargs.get("answer") or [None] * len(completions)
    scores = []
    for completion, answer in zip(completions, answers):
        text = _text(completion).strip()
        if not text or not answer:
            scores.append(0.0)
            continue
        scores.append(sum(ch == answer for ch in text) / len(text))
    return scores
'''

TEST = '''\
"""Unit test of the team's reward (pytest tests/)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("my_reward", Path(__file__).parents[1] / "rewards" / "my_reward.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


def test_my_reward_scores_the_share_of_the_requested_letter():
    scores = module.my_reward(["qqqq", "qqzz", "", [{"role": "assistant", "content": "q"}]], answer=["q"] * 4)
    assert scores == [1.0, 0.5, 0.0, 1.0]
'''

WORKFLOW = """\
# CI for the team's configs: every experiment composes, validates and trains a few steps on the tiny model.
#   aligntune check --config-dir configs --smoke
name: aligntune
on: [push, pull_request]
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - run: pip install aligntune pytest
      - run: pytest tests
      - run: aligntune check --config-dir configs --smoke --junit check.xml
        env:
          HF_HUB_OFFLINE: "1"
"""

FILES = {
    "configs/experiment/example.yaml": EXPERIMENT,
    "rewards/my_reward.py": REWARD,
    "tests/test_my_reward.py": TEST,
    ".github/workflows/aligntune.yml": WORKFLOW,
}


def write(root: Path) -> list[Path]:
    """Write the starter files under `root`; refuses (ConfigError) if any of them exists."""
    existing = [root / rel for rel in FILES if (root / rel).exists()]
    if existing:
        raise ConfigError(f"aligntune init would overwrite {', '.join(map(str, existing))}; it never does.",
                          "Move or delete those files, or init into another directory: aligntune init DIR.")
    written = []
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def init_command(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    if len(args) > 1 or any(a.startswith("-") for a in args):
        report(ConfigError(f"aligntune init takes one directory, not {' '.join(args)}.", USAGE))
        return EXIT_USAGE
    root = Path(args[0] if args else ".")
    if root.exists() and not root.is_dir():
        report(ConfigError(f"{root} is a file, not a directory.", USAGE))
        return EXIT_USAGE
    for path in write(root):
        print(f"wrote {path}")
    where = "" if not args else f"cd {root} && "
    print(f"next: {where}aligntune check --config-dir configs --smoke    (what CI runs)\n"
          f"      {where}aligntune train --config-dir configs experiment=example")
    return 0
