"""Checkpoints of the native PPO engine: everything that decides the rest of a run, so a resumed run equals the
uninterrupted one (parameters to the bit on CPU in fp32, and the same metrics).

    checkpoint-<step>/
        model.safetensors | adapter_model.safetensors (+ config)   the policy, or its LoRA adapter (save_pretrained)
        critic/                                                   the value model (save_pretrained)
        optimizer.pt  scheduler.pt  scaler.pt                     AdamW over policy + critic, LR schedule, GradScaler
        rng_state.pth                                             python, numpy, torch (CPU, every CUDA device) and the
                                                                  engine's own generator (data order, mini-batches)
        engine_state.json                                         data position (_order, prompts_seen), the KL
                                                                  controller's beta, the open logging window, losses
        trainer_state.json                                        global step, epoch, log_history (TrainerState)
        config.yaml                                               the run's config (added by run/checkpoints.make_atomic)

Writing is `PPOTrainer._save_checkpoint`, which aligntune.run.checkpoints.make_atomic routes through its staging
directory and rotation as for TRL runs; this module only knows what goes in a folder and how to read it back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

ENGINE_STATE = "engine_state.json"


def position(trainer) -> dict:
    """What a step consumes before it changes any weight: RNG streams and the data position. Taken at the start of
    each step, so a checkpoint written mid-step (a reward failed or was non-finite during the rollout) holds the
    state of the last completed step."""
    return {"rng": {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "generator": trainer._generator.get_state()},
            "order": list(trainer._order), "prompts_seen": trainer.prompts_seen}


def save(trainer, folder: Path, at: dict | None = None) -> None:
    """Write `trainer`'s state into `folder` (created). `at`: a `position` taken earlier (mid-step), else now."""
    at = at or position(trainer)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.models.policy.save_pretrained(str(folder))
    trainer.models.critic.save_pretrained(str(folder / "critic"))
    torch.save(trainer.optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(trainer.scheduler.state_dict(), folder / "scheduler.pt")
    if trainer.scaler.is_enabled():
        torch.save(trainer.scaler.state_dict(), folder / "scaler.pt")
    torch.save(at["rng"], folder / "rng_state.pth")
    engine = {"order": at["order"], "prompts_seen": at["prompts_seen"], "beta": trainer.kl_ctl.value,
              "window": trainer._window, "losses": trainer._losses}
    (folder / ENGINE_STATE).write_text(json.dumps(engine), encoding="utf-8")
    trainer.state.save_to_json(str(folder / "trainer_state.json"))


def load(trainer, folder: Path) -> None:
    """Restore what `save` wrote into a freshly built `trainer` (same config), RNG streams last."""
    from transformers import TrainerState

    _load_weights(trainer.models.policy, folder)
    _load_weights(trainer.models.critic, folder / "critic")
    device = trainer.device
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    trainer.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if trainer.scaler.is_enabled() and (folder / "scaler.pt").is_file():
        trainer.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    engine = json.loads((folder / ENGINE_STATE).read_text(encoding="utf-8"))
    trainer._order, trainer.prompts_seen = list(engine["order"]), int(engine["prompts_seen"])
    trainer.kl_ctl.value = float(engine["beta"])
    trainer._window, trainer._losses = list(engine["window"]), list(engine["losses"])
    saved = TrainerState.load_from_json(str(folder / "trainer_state.json"))
    state = trainer.state
    state.global_step, state.epoch, state.log_history = saved.global_step, saved.epoch, saved.log_history
    rng = torch.load(folder / "rng_state.pth", weights_only=False)  # python's and numpy's states are not tensors
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    trainer._generator.set_state(rng["generator"])


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load save_pretrained's files back into `model` in place (a PeftModel: its adapter)."""
    from safetensors.torch import load_file

    if (folder / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"checkpoint {folder}: adapter weights the model lacks: {result.unexpected_keys[:5]}")
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    weights = {}
    for name in files:
        weights.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not _shares_storage(model, k, weights)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def _shares_storage(model: torch.nn.Module, key: str, weights: dict) -> bool:
    """A parameter save_pretrained left out because it is tied to one that was saved (e.g. lm_head to the embedding)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    if target is None:
        return False
    return any(p.data_ptr() == target.data_ptr() for k, p in params.items() if k in weights and k != key)
