"""Phase timings of every optimizer step: where a step's time goes, logged as `timing/<phase>` (seconds per step).

Phases (each timed exclusively: a phase nested in another is subtracted from it):
- generation        rollout sampling (GRPO, RLOO, PPO)
- rewards           the reward functions (GRPO, RLOO, PPO)
- logprobs          gradient-free forwards: the reference model's and the old policy's log-probs, PPO's values
- forward_backward  the training forward and backward passes
- optimizer         the optimizer step (with gradient clipping's unscale, for PPO)
- other             the rest of the step: data loading, batching, advantages, logging
Per logged step the means since the last log go into the logs (the trainer's log method: so metrics.jsonl, the
trackers and the progress bar); summary.json holds the run's mean per phase. Cost: a perf_counter pair per wrapped call, no synchronisation.

How each engine is timed (`instrument`): the trainer's own methods are wrapped on the instance, never on the class:
TRL's `training_step`, `_generate` and `_calculate_rewards` (GRPOTrainer and RLOOTrainer; private names, listed in
aligntune/patches.py and checked by tests/test_patches.py against the installed TRL), forward hooks on the policy/reference module for the
gradient-free forwards inside a training step, and transformers' on_pre_optimizer_step/on_optimizer_step events;
the native PPO engine's `_sample`, `_score`, `_rollout`, `_update` and its optimizer's `step`.
On GPUs the timings are of the host: asynchronous kernels are billed to whichever phase waits for them.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from transformers import TrainerCallback

from aligntune.patches import TIMED_METHODS

log = logging.getLogger("aligntune")

PHASES = ("generation", "rewards", "logprobs", "forward_backward", "optimizer", "other")
PREFIX = "timing/"

# trainer class name -> (method, phase) wrapped on the instance (private names: aligntune/patches.py lists them)
TRL_METHODS = TIMED_METHODS
NATIVE_METHODS = [("_sample", "generation"), ("_score", "rewards"), ("_rollout", "logprobs"),
                  ("_update", "forward_backward")]


class PhaseTimer(TrainerCallback):
    """Exclusive wall time per phase within each optimizer step; a TrainerCallback that adds `timing/*` to the logs."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.stack: list[list] = []  # [phase, started, time of nested phases]
        self.step = dict.fromkeys(PHASES, 0.0)
        self.window: list[dict] = []  # finished steps since the last log
        self.history: list[dict] = []  # every finished step
        self.step_started: float | None = None

    # ---- phases
    def enter(self, phase: str) -> None:
        self.stack.append([phase, self.clock(), 0.0])

    def leave(self) -> None:
        phase, started, nested = self.stack.pop()
        spent = self.clock() - started
        self.step[phase] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent

    def current(self) -> str | None:
        return self.stack[-1][0] if self.stack else None

    def wrap(self, obj, name: str, phase: str) -> bool:
        """Time calls of obj.<name> as `phase` (wrapping the bound method on the instance). False if obj lacks it."""
        method = getattr(obj, name, None)
        if method is None or getattr(method, "_aligntune_phase", None):
            return method is not None
        timer = self

        @functools.wraps(method)
        def timed(*args, **kwargs):
            timer.enter(phase)
            try:
                return method(*args, **kwargs)
            finally:
                timer.leave()

        timed._aligntune_phase = phase
        setattr(obj, name, timed)
        return True

    def time_gradient_free_forwards(self, module: torch.nn.Module, inside: str = "forward_backward") -> None:
        """Forwards of `module` run without gradients while `inside` is the current phase count as `logprobs`."""
        timer, pushed = self, []

        def pre(mod, args):
            if timer.current() == inside and not torch.is_grad_enabled():
                timer.enter("logprobs")
                pushed.append(True)
            else:
                pushed.append(False)

        def post(mod, args, output):
            if pushed and pushed.pop():
                timer.leave()

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    # ---- TrainerCallback events
    def on_step_begin(self, args, state, control, **kwargs):
        self.step = dict.fromkeys(PHASES, 0.0)
        self.step_started = self.clock()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.enter("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.current() == "optimizer":
            self.leave()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_started is None:
            return
        total = self.clock() - self.step_started
        self.step["other"] = max(0.0, total - sum(v for k, v in self.step.items() if k != "other"))
        self.window.append(dict(self.step))
        self.history.append(dict(self.step))
        self.step_started = None

    def add_to_logs(self, obj, name: str) -> None:
        """obj.<name>(logs, ...) (the trainer's log method) gets the means since the last training log added, so
        metrics.jsonl, the progress bar and every tracker see them."""
        method = getattr(obj, name)
        timer = self

        @functools.wraps(method)
        def log_with_timings(logs, *args, **kwargs):
            if timer.window and isinstance(logs, dict) and "loss" in logs:
                logs = {**logs, **means(timer.window)}
                timer.window = []
            return method(logs, *args, **kwargs)

        setattr(obj, name, log_with_timings)


def means(steps: list[dict]) -> dict[str, float]:
    """{timing/<phase>: mean seconds per step} over `steps` (only the phases that took time, plus other)."""
    out = {}
    for phase in PHASES:
        value = sum(s.get(phase, 0.0) for s in steps) / len(steps)
        if value > 0 or phase == "other":
            out[PREFIX + phase] = value
    return out


def instrument(trainer, timer: PhaseTimer) -> list[str]:
    """Wire `timer` into `trainer` (a TRL trainer or the native PPO engine); returns the phases it can time. A method
    this TRL lacks is warned about once and its time stays in the enclosing phase."""
    if hasattr(trainer, "models"):  # the native PPO engine
        for name, phase in NATIVE_METHODS:
            timer.wrap(trainer, name, phase)
        timer.wrap(trainer.optimizer, "step", "optimizer")
        timer.add_to_logs(trainer, "_log")
        return ["generation", "rewards", "logprobs", "forward_backward", "optimizer", "other"]
    kind = next((c.__name__ for c in type(trainer).__mro__ if c.__name__ in TRL_METHODS), None)
    if kind is None:
        return []
    timer.add_to_logs(trainer, "log")
    timed = []
    for name, phase in TRL_METHODS[kind]:
        if timer.wrap(trainer, name, phase):
            timed.append(phase)
        else:
            log.warning("phase timings: %s has no %s in this TRL version; its time counts as its caller's", kind, name)
    for module in (getattr(trainer, "model", None), getattr(trainer, "ref_model", None)):
        if isinstance(module, torch.nn.Module):
            timer.time_gradient_free_forwards(module)
    return [*timed, "logprobs", "optimizer", "other"]
