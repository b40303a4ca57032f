"""Reward lookup: a registry name, `module:function`, or `path/to/file.py:function`.

Every reward follows TRL's reward-function signature: `fn(completions, prompts=..., **columns)`
returning one float (or None) per completion, where dataset columns arrive as keyword lists.
`rewards.<name>.args` are bound as keywords and must name parameters the function declares.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path

from aligntune.errors import RewardError

# name -> "module:function" (imported on use, so listing rewards stays cheap)
BUILTIN: dict[str, str] = {
    "correctness": "aligntune.rewards.math:correctness",
    "format": "aligntune.rewards.format:format_reward",
    "length": "aligntune.rewards.length:length",
    "overlong": "aligntune.rewards.length:overlong",
    "repetition": "aligntune.rewards.style:repetition",
    "charset": "aligntune.rewards.style:charset",
    "keywords": "aligntune.rewards.constraints:keywords",
    "max_words": "aligntune.rewards.constraints:max_words",
    "valid_json": "aligntune.rewards.constraints:valid_json",
    "code_execution": "aligntune.rewards.code:code_execution",
    "reward_model": "aligntune.rewards.reward_model:reward_model",
    "letter_match": "aligntune.rewards.letters:letter_match",
}


def _first_doc_line(target: str) -> str:
    """First line of the docstring of `module:function`, read from the source with `ast` (no import)."""
    module, func = target.split(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == func)
    doc = (ast.get_docstring(node) or "").strip()
    return doc.splitlines()[0] if doc else ""


def listing() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in reward, without importing them (no torch)."""
    return [(name, _first_doc_line(target)) for name, target in BUILTIN.items()]


def _choices(ref: str) -> str:
    close = difflib.get_close_matches(ref, BUILTIN, n=1)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    return f"{hint}Built-in rewards: {', '.join(BUILTIN)}."


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
                          f"{_choices(ref)} Or give your own as 'module:function' or 'path/to/file.py:function' "
                          "(`aligntune rewards` lists the built-ins).")
    where, func = target.rsplit(":", 1)
    if where.endswith(".py"):
        return _import_from_file(Path(where).expanduser(), func, ref)
    try:
        module = importlib.import_module(where)
    except ImportError as exc:
        raise RewardError(f"Reward '{ref}': cannot import module '{where}' ({exc}).",
                          "Check the module is on PYTHONPATH, or reference the file as 'path/to/file.py:function'. "
                          + _choices(ref.split(":")[-1])) from exc
    return _attr(module, func, ref)


def check_args(name: str, ref: str, fn: Callable, args: dict) -> None:
    """RewardError unless every bound argument names a parameter `fn` declares (not one **kwargs swallows)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature: nothing to check
        return
    named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = sorted(set(args) - set(named))
    if unknown:
        accepted = [p for p in named if p not in ("completions", "prompts")]
        raise RewardError(f"rewards.{name}.args sets {', '.join(unknown)}, which reward '{ref}' does not take.",
                          f"Its arguments: {', '.join(accepted) or 'none'}. Fix the name(s) under rewards.{name}.args.")


def bind(name: str, ref: str, args: dict) -> Callable:
    """The reward `ref` with `args` bound as keywords, named `name` (TRL logs rewards/<name>/mean)."""
    fn = resolve(ref)
    check_args(name, ref, fn, args)
    bound = functools.partial(fn, **args) if args else fn

    def reward(*a, **kw):
        return bound(*a, **kw)

    reward.__name__ = name
    reward.__qualname__ = name
    reward.__wrapped__ = bound  # inspect.signature(reward) shows the bound args as defaults
    return reward
