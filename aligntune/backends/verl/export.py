"""What verl reads: the prompts as parquet in verl's layout, and the rewards as a custom reward function file.

verl's RLHFDataset row: `data_source`, `prompt` (chat messages), `ability`, `reward_model`
({"style": "rule", "ground_truth": ...}) and `extra_info` (anything else; here every other canonical
column, so the rewards get the same keyword columns as on TRL). The rows are aligntune's own loading
(format adapters, column mapping, seeded shuffle, max_samples, held-out split), so both backends train
on the same prompts.

The reward file defines verl's `compute_score(data_source, solution_str, ground_truth, extra_info)` and
calls aligntune's reward functions (built-ins by name, yours by `module:function` / file path) with
TRL's signature, summing them with their weights, each call bounded by its `rewards.<name>.timeout_s`
(rewards/watchdog.py). It imports aligntune from the path recorded in it, so
the verl environment needs aligntune's reward dependencies (e.g. `pip install math-verify`).
"""

from __future__ import annotations

import json
from pathlib import Path

from aligntune.config.schema import RunConfig

DATA_SOURCE_PREFIX = "aligntune/"

REWARD_FILE = '''"""verl custom reward function, written by aligntune for run {run_dir}.

    reward.custom_reward_function.path={path} reward.custom_reward_function.name=compute_score
"""
import sys

sys.path.insert(0, {package_root!r})  # aligntune's installation, for its reward functions

from aligntune.rewards.registry import bind  # noqa: E402
from aligntune.rewards.watchdog import with_timeout  # noqa: E402

REWARDS = {rewards!r}  # name -> (reference, weight, args, timeout_s per call)
_BOUND = {{}}


def _rewards():
    if not _BOUND:
        for name, (ref, weight, args, timeout_s) in REWARDS.items():
            _BOUND[name] = (with_timeout(name, bind(name, ref, args), timeout_s), weight)
    return _BOUND


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """The weighted sum of the run's rewards for one completion (TRL's signature, one row)."""
    info = dict(extra_info or {{}})
    prompt = info.pop("prompt", None)
    columns = {{key: [value] for key, value in info.items()}}
    total = 0.0
    for name, (fn, weight) in _rewards().items():
        score = fn(completions=[solution_str], prompts=[prompt], **columns)[0]
        if score is not None:
            total += weight * float(score)
    return total
'''


def _as_messages(prompt) -> list[dict]:
    if isinstance(prompt, list):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    return [{"role": "user", "content": str(prompt)}]


def verl_rows(dataset, data_source: str) -> list[dict]:
    """aligntune prompt rows -> verl rows."""
    rows = []
    for i, row in enumerate(dataset):
        extra = {k: v for k, v in row.items() if k != "prompt"}
        answer = row.get("answer")
        rows.append({
            "data_source": data_source,
            "prompt": _as_messages(row["prompt"]),
            "ability": "aligntune",
            "reward_model": {"style": "rule", "ground_truth": "" if answer is None else str(answer)},
            "extra_info": {"index": i, "prompt": row["prompt"] if isinstance(row["prompt"], str) else
                           json.dumps(row["prompt"]), **{k: json.dumps(v) if isinstance(v, (list, dict)) else v
                                                          for k, v in extra.items()}},
        })
    return rows


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_reward_file(run: RunConfig, path: Path, run_dir: Path) -> None:
    import aligntune

    package_root = str(Path(aligntune.__file__).resolve().parents[1])
    rewards = {}
    for name, spec in run.rewards.items():
        ref = spec.fn or name
        where, sep, func = ref.rpartition(":")
        if sep and where.endswith(".py"):
            ref = f"{Path(where).expanduser().resolve()}:{func}"  # verl runs elsewhere: absolute path
        rewards[name] = (ref, spec.weight, dict(spec.args), spec.timeout_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(REWARD_FILE.format(run_dir=run_dir, path=path, package_root=package_root, rewards=rewards),
                    encoding="utf-8")


def export(run: RunConfig, directory: Path) -> tuple[Path, Path | None, int]:
    """Write train.parquet (and val.parquet with held-out rows); returns (train, val or None, train rows)."""
    from aligntune.data.loading import load

    train, held_out = load(run.dataset, run.seed, "prompts")
    source = DATA_SOURCE_PREFIX + Path(run.dataset.name).stem
    train_path = directory / "train.parquet"
    write_parquet(verl_rows(train, source), train_path)
    val_path = None
    if held_out is not None:
        val_path = directory / "val.parquet"
        write_parquet(verl_rows(held_out, source), val_path)
    return train_path, val_path, len(train)
