"""Reward calls with a time limit (`rewards.<name>.timeout_s`), so a reward that hangs stops the run instead.

`with_timeout` runs each call of an in-process reward (a user's function, a reward model) in a worker
thread and waits at most `timeout_s` seconds for it; past that it raises `RewardTimeout` in the caller.
(`code_execution` already runs the completions' code in a sandboxed process with its own limits, see
rewards/sandbox.py; this bounds the reward call itself.)

A hung thread cannot be killed from Python. The worker is a daemon thread, so it never keeps the
interpreter alive, and it is recorded in `HUNG`: the `aligntune` command (`cli.console`) then ends the
process with `os._exit` once the run is reported and marked failed, rather than tearing the interpreter
down around a thread that may still be inside the reward's C code. In-process callers (tests, the
Python API) keep their process; the abandoned thread stays blocked until it returns or the process ends.
Exceptions the reward raises are re-raised unchanged in the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

HUNG: list[threading.Thread] = []  # workers whose call outlived its timeout


class RewardTimeout(Exception):
    def __init__(self, name: str, timeout_s: float):
        self.name, self.timeout_s = name, timeout_s
        super().__init__(f"reward '{name}' did not return within {timeout_s:g} s")


def with_timeout(name: str, fn: Callable, timeout_s: float) -> Callable:
    """`fn`, each call limited to `timeout_s` seconds (RewardTimeout past it); same name and signature."""

    def reward(*args, **kwargs):
        import torch

        # Per-thread state the worker takes over from the caller: autograd's mode and the current CUDA device
        # (a reward model placed on "cuda" must land on this process's GPU, not on GPU 0).
        grad = torch.is_grad_enabled()
        cuda = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        outcome: dict = {}
        done = threading.Event()

        def work():
            try:
                if cuda is not None:
                    torch.cuda.set_device(cuda)
                with torch.set_grad_enabled(grad):
                    outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the caller, which re-raises it
                outcome["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"aligntune-reward-{name}", daemon=True)
        worker.start()
        if not done.wait(timeout_s):
            HUNG.append(worker)
            raise RewardTimeout(name, timeout_s)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    reward.__name__ = reward.__qualname__ = getattr(fn, "__name__", name)
    reward.__wrapped__ = fn  # inspect.signature(reward) is fn's: the reward check reads its parameters
    return reward


def hung() -> bool:
    """True while a reward call that timed out is still running in its thread."""
    return any(t.is_alive() for t in HUNG)
