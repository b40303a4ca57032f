"""model/README.md, the Hub's model card of a run, and the Hub push against a local fake (aligntune/run/model_card.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from aligntune import cli


def _card(run_dir):
    text = (run_dir / "model" / "README.md").read_text()
    _, meta, body = text.split("---", 2)
    return yaml.safe_load(meta), body


def test_every_run_writes_a_model_card_that_matches_the_run(workdir):
    run = workdir / "run"
    assert cli.main(["train", "experiment=smoke", "train.max_steps=2", "group_size=4", f"hydra.run.dir={run}"]) == 0
    meta, body = _card(run)
    summary = json.loads((run / "summary.json").read_text())
    assert meta["base_model"] == "aligntune:tiny" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and {"aligntune", "trl", "grpo"} <= set(meta["tags"])
    assert "group_size=4" in body and "beta=" in body and "letter_match (weight 1)" in body
    assert f"| reward | {summary['reward']:.4g} |" in body and f"| steps | {summary['steps']} |" in body
    assert "aligntune train experiment=smoke train.max_steps=2 algorithm.group_size=4" in body  # the command (real keys)
    assert "trl " in body.split("Versions:")[1] and "compute fp32 on cpu" in body


def test_an_adapter_card_says_peft(workdir):
    run = workdir / "lora"
    assert cli.main(["train", "experiment=dpo_smoke", "train.max_steps=1", "model.lora.enabled=true", "model.lora.r=4",
                     f"hydra.run.dir={run}"]) == 0
    meta, body = _card(run)
    assert meta["library_name"] == "peft" and "dpo" in meta["tags"] and "LoRA adapter" in body


class FakeHub:
    """Records what would be uploaded (no network)."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        FakeHub.calls.append(("create_repo", repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, branch, exist_ok=False):
        FakeHub.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        from pathlib import Path

        FakeHub.calls.append(("upload_folder", repo_id, revision, sorted(p.name for p in Path(folder_path).iterdir())))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    from aligntune import hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    return FakeHub


def test_hub_push_uploads_the_model_with_its_card(workdir, fake_hub):
    run = workdir / "run"
    assert cli.main(["train", "experiment=smoke", "train.max_steps=1", "hub.push=true", "hub.model_id=me/tiny-grpo",
                     "hub.revision=exp1", f"hydra.run.dir={run}"]) == 0
    assert fake_hub.calls[0] == ("create_repo", "me/tiny-grpo", True)  # private unless asked
    assert fake_hub.calls[1] == ("create_branch", "me/tiny-grpo", "exp1")
    name, repo, revision, files = fake_hub.calls[2]
    assert (name, repo, revision) == ("upload_folder", "me/tiny-grpo", "exp1")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["hub_url"] == "https://huggingface.co/me/tiny-grpo"


@pytest.mark.parametrize("overrides,env,needles", [
    (["hub.push=true"], {"HF_TOKEN": "hf_fake"}, ["hub.model_id", "my-org/"]),
    (["hub.push=true", "hub.model_id=me/x"], {}, ["needs a Hugging Face token", "hf auth login"]),
    (["hub.model_id=me/x"], {"HF_TOKEN": "hf_fake"}, ["hub.model_id=me/x configures the Hub push", "hub.push=true"]),
])
def test_hub_push_is_refused_before_training_without_what_it_needs(workdir, monkeypatch, capsys, overrides, env, needles):
    from aligntune import hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(workdir / "hf"))  # no stored token
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    assert cli.main(["train", "experiment=smoke", *overrides]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert all(n in err for n in needles), err
    assert not (workdir / "outputs").exists()  # nothing trained, no run directory


def test_an_unreachable_hub_is_refused_before_training(workdir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    assert cli.main(["train", "experiment=smoke", "hub.push=true", "hub.model_id=me/x"]) == 2  # HF_HUB_OFFLINE=1 here
    assert "the Hugging Face Hub cannot be reached" in " ".join(capsys.readouterr().err.split())
