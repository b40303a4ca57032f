"""model/README.md: the Hub's model card for what a run trained, and the Hub push (`hub.push=true`).

The card follows the Hub's format (YAML metadata, then Markdown): base model, library (transformers, or peft for
an adapter), pipeline tag, tags (aligntune, trl, the algorithm), the dataset when it is a hub id; then the base
model, dataset and algorithm with its key hyper-parameters, the final training and held-out metrics, the exact
aligntune command and the versions of aligntune, TRL, transformers and torch.

The push uploads model/ (the model or adapter with its card and tokenizer) with huggingface_hub's
`HfApi.create_repo` + `upload_folder`. Its requirements (a token, a reachable Hub) are checked before training
(`check_push`), so a run never trains for hours to fail at the upload.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from pathlib import Path

import yaml

from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError

HYPERPARAMETERS = ("group_size", "beta", "cliprange", "cliprange_high", "temperature", "loss_type", "num_mini_batches",
                   "max_completion_length", "max_length", "kl_estimator", "gamma", "lam", "ppo_epochs", "label_smoothing")
HEADLINE = ("reward", "reward_first_20pct", "reward_last_20pct", "kl", "loss", "eval_reward", "eval_loss",
            "eval_preference_accuracy", "eval_margin", "eval/base/reward", "eval/trained/reward", "steps", "wall_time_s")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("aligntune", "trl", "transformers", "peft", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def command(overrides: list[str]) -> str:
    return "aligntune train " + " ".join(shlex.quote(o) for o in overrides)


def card(run: RunConfig, summary: dict, overrides: list[str], adapter: bool) -> str:
    """The card's text (pure: tests read it against the run)."""
    from aligntune import hub

    algo = run.algorithm
    meta = {"base_model": run.model.name_or_path, "library_name": "peft" if adapter else "transformers",
            "pipeline_tag": "text-generation" if algo.name != "reward" else "text-classification",
            "tags": ["aligntune", "trl", algo.name] + ([algo.variant] if getattr(algo, "variant", None) else [])}
    if hub.looks_like_hub_id(run.dataset.name):
        meta["datasets"] = [run.dataset.name]
    knobs = {k: v for k, v in asdict(algo).items() if k in HYPERPARAMETERS}
    train = {k: getattr(run.train, k) for k in ("batch_size", "learning_rate", "num_epochs", "max_steps")}
    metrics = {k: summary[k] for k in HEADLINE if isinstance(summary.get(k), (int, float))}
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {run.model.name_or_path} aligned with {algo.name.upper()} (aligntune)", "",
             f"- **Base model:** `{run.model.name_or_path}`" + (" (this folder holds a LoRA adapter for it)" if adapter else ""),
             f"- **Dataset:** `{run.dataset.name}` (format {run.dataset.format})",
             f"- **Algorithm:** {algo.name}" + (f" ({algo.variant} preset)" if getattr(algo, "variant", None) else "")
             + ", " + ", ".join(f"{k}={fmt(v)}" for k, v in knobs.items()),
             "- **Training:** " + ", ".join(f"{k}={fmt(v)}" for k, v in train.items())
             + f", seed={run.seed}, compute {summary.get('compute_dtype', '?')} on {summary.get('device', '?')}",
             f"- **Rewards:** {', '.join(f'{n} (weight {r.weight:g})' for n, r in run.rewards.items()) or 'none'}", "",
             "## Results", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in metrics.items()] or ["| (none logged) | |"]
    lines += ["", "## Reproduce", "", "```bash", command(overrides), "```", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), ""]
    return "\n".join(lines)


def write(model_dir: Path, run: RunConfig, summary: dict, overrides: list[str]) -> Path:
    adapter = (model_dir / "adapter_config.json").is_file()
    path = model_dir / "README.md"
    path.write_text(card(run, summary, overrides, adapter), encoding="utf-8")
    return path


def check_push(run: RunConfig) -> None:
    """hub.push=true: a model id, a token and a reachable Hub, checked before anything trains."""
    if not run.hub.push:
        return
    from aligntune import hub

    if not run.hub.model_id or not hub.looks_like_hub_id(run.hub.model_id):
        raise ConfigError(f"hub.push=true needs hub.model_id=<user or org>/<name>, and it is {run.hub.model_id!r}.",
                          "Set hub.model_id, e.g. hub.model_id=my-org/qwen3-grpo.")
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError("hub.push=true needs a Hugging Face token, and none is set (HF_TOKEN, or `hf auth login`).",
                          "Log in (hf auth login) or export HF_TOKEN, or drop hub.push.")
    if not hub.hub_reachable():
        raise ConfigError("hub.push=true uploads the model at the end, and the Hugging Face Hub cannot be reached from "
                          "this machine (no network, or HF_HUB_OFFLINE=1).",
                          "Drop hub.push and upload model/ later (hf upload <model_id> <run dir>/model).")


def push(model_dir: Path, run: RunConfig) -> str:
    """Upload model/ to hub.model_id; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(run.hub.model_id, private=run.hub.private, exist_ok=True, repo_type="model")
    if run.hub.revision:
        api.create_branch(run.hub.model_id, branch=run.hub.revision, exist_ok=True)
    api.upload_folder(repo_id=run.hub.model_id, folder_path=str(model_dir), revision=run.hub.revision,
                      commit_message=f"aligntune: {run.algorithm.name} on {run.dataset.name}")
    return str(getattr(repo, "url", repo))
