"""Reward lookup: a registry name, `module:function`, or `path/to/file.py:function`.

Every reward follows TRL's reward-function signature: `fn(completions, prompts=..., **columns)`
returning one float (or None) per completion, where dataset columns arrive as keyword lists.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Callable

from aligntune.errors import RewardError

# name -> "module:function" (imported on use, so listing rewards stays cheap)
BUILTIN: dict[str, str] = {
    "letter_match": "aligntune.rewards.letters:letter_match",
}


def _import_from_file(path: Path, func: str, ref: str) -> Callable:
    if not path.is_file():
        raise RewardError(f"Reward '{ref}': the file {path} does not exist.",
                          "Give a path relative to the directory you run aligntune from, or an absolute path.")
    spec = importlib.util.spec_from_file_location(f"aligntune_user_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file failed to import: say which and why
        raise RewardError(f"Reward '{ref}': importing {path} failed with {type(exc).__name__}: {exc}.",
                          "Fix the file so that `python " + str(path) + "` runs.") from exc
    return _attr(module, func, ref)


def _attr(module, func: str, ref: str) -> Callable:
    fn = getattr(module, func, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and inspect.isfunction(v)]
        raise RewardError(f"Reward '{ref}': {module.__name__} has no function '{func}'.",
                          f"Functions defined there: {', '.join(names) or 'none'}.")
    return fn


def resolve(ref: str) -> Callable:
    """Return the callable a reward reference names."""
    target = BUILTIN.get(ref, ref)
    if ":" not in target:
        raise RewardError(f"Unknown reward '{ref}'.",
                          f"Use a built-in reward ({', '.join(sorted(BUILTIN))}), 'module:function', or "
                          "'path/to/file.py:function'.")
    where, func = target.rsplit(":", 1)
    if where.endswith(".py"):
        return _import_from_file(Path(where).expanduser(), func, ref)
    try:
        module = importlib.import_module(where)
    except ImportError as exc:
        raise RewardError(f"Reward '{ref}': cannot import module '{where}' ({exc}).",
                          "Check the module is on PYTHONPATH, or reference the file as 'path/to/file.py:function'.") from exc
    return _attr(module, func, ref)


def bind(name: str, ref: str, args: dict) -> Callable:
    """The reward `ref` with `args` bound as keywords, named `name` (TRL logs rewards/<name>/mean)."""
    fn = resolve(ref)
    bound = functools.partial(fn, **args) if args else fn

    def reward(*a, **kw):
        return bound(*a, **kw)

    reward.__name__ = name
    reward.__qualname__ = name
    reward.__wrapped__ = fn
    return reward
