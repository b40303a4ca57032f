"""Shell completion for `aligntune`: subcommands, and Hydra's own completion of `aligntune train` (groups, options,
keys, values, files), over the same search path a run composes with (the shipped configs plus the --config-dir
directories on the line and ALIGNTUNE_CONFIG_PATH), with aligntune's shortcuts.

    eval "$(aligntune -sc install=bash)"     # also: aligntune train -sc install=bash; zsh: the same, after bashcompinit

Hydra's hook runs `aligntune -sc query=bash` with the shell's COMP_LINE/COMP_POINT for each TAB; Hydra's own query
would take `train` (and any other subcommand) for an override, so aligntune answers it: the first word after
`aligntune` completes to a subcommand, the words of `aligntune train` go to Hydra's CompletionPlugin._query with a
config loader whose search path holds the user directories. That loader is Hydra's internal ConfigLoaderImpl
(hydra-core 1.3, checked in tests/test_completion.py).
"""

from __future__ import annotations

import os
import shlex
import sys

SHELLS = ("bash", "zsh")
CHECK_FLAGS = ["--config-dir", "--smoke", "--junit", "--out", "--allow-hub-skips", "experiment="]


def _hydra_plugin(shell: str, dirs: list):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.bash_completion import BashCompletion
    from hydra._internal.utils import create_config_search_path

    from aligntune.config import compose
    from aligntune.config.searchpath import primary_dir

    compose.register()
    search_path = create_config_search_path(f"file://{primary_dir()}")  # as cli._run_hydra: the primary alone,
    schema = search_path.get_path().pop()  # then the user directories, then the shipped configs, then the schemas
    for d in [*dirs, compose.config_dir()]:
        search_path.append(provider="hydra.searchpath in command-line", path=f"file://{d}")
    search_path.get_path().append(schema)
    return BashCompletion(ConfigLoaderImpl(config_search_path=search_path))


def command(args: list[str]) -> int:
    """`aligntune [train] -sc install=bash|uninstall=bash|query=bash`."""
    from aligntune.errors import EXIT_USAGE

    spec = args[0] if args else ""
    action, _, shell = spec.partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        print(f"error: aligntune -sc takes install=bash, uninstall=bash or query=bash (zsh likewise), not "
              f"'{spec}'.\n  Install with: eval \"$(aligntune -sc install=bash)\"", file=sys.stderr)
        return EXIT_USAGE
    if action == "query":
        print(" ".join(query(os.environ.get("COMP_LINE", ""), os.environ.get("COMP_POINT"))))
        return 0
    saved = sys.argv
    sys.argv = ["aligntune"]  # the hook is registered for the `aligntune` executable, whatever subcommand asked
    try:
        plugin = _hydra_plugin(shell, [])
        plugin.install() if action == "install" else plugin.uninstall()
    finally:
        sys.argv = saved
    return 0


def query(line: str, point: str | None = None) -> list[str]:
    """The completions of the word under the cursor of `line` (COMP_LINE; COMP_POINT: the cursor)."""
    from aligntune.cli import COMMANDS

    if point is not None and str(point).isdigit():
        line = line[: int(point)]
    words = line.split()
    new_word = not line or line[-1] == " "
    if len(words) <= 1 or (len(words) == 2 and not new_word):  # the subcommand itself
        word = "" if new_word else words[-1]
        return sorted(c for c in COMMANDS if c.startswith(word)) if len(words) <= 2 else []
    name, rest = words[1], words[2:]
    word = "" if new_word else rest[-1]
    if name == "check":
        return _check(rest, word)
    if name != "train":
        return []
    return train(rest, word)


def _user_dirs(words: list[str]) -> tuple[list[str], list]:
    """(the words without --config-dir flags and aligntune's own flags, the user directories); a directory that
    does not (yet) exist is left out rather than refused: completion never prints errors."""
    from aligntune.config import searchpath

    kept, dirs, i = [], [], 0
    while i < len(words):
        w = words[i]
        name, eq, value = w.partition("=")
        if name in searchpath.FLAGS:
            if not eq and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            dirs.append(value)
        elif w not in ("-v", "--verbose", "--traceback"):
            kept.append(w)
        i += 1
    dirs += [d for d in os.environ.get(searchpath.ENV, "").split(os.pathsep) if d.strip()]
    resolved = []
    for d in dirs:
        try:
            resolved += searchpath.resolve([d])
        except Exception:  # missing, empty, or a clash: leave it out
            continue
    return kept, list(dict.fromkeys(resolved))


def train(words: list[str], word: str) -> list[str]:
    """Hydra's completion of the override `word` after `words` (the complete ones) of `aligntune train`."""
    from aligntune.config import aliases

    done = words[:-1] if word else words
    if word and done and done[-1] in ("--config-dir", "-cd"):
        return _dirs(word)
    if not word and done and done[-1] in ("--config-dir", "-cd"):
        return _dirs("")
    done, dirs = _user_dirs(done)
    try:
        done, _ = aliases.rewrite([w for w in done if not w.startswith("-") or w in ("-m", "--multirun")])
    except Exception:  # a shortcut that does not apply: complete against the words as typed
        pass
    head, sep, tail = word.partition("=")
    target = aliases.SHORTCUTS.get(head) if sep else None
    line = " ".join(shlex.quote(w) for w in done) + " " + ((target + "=" + tail) if target else word)
    plugin = _hydra_plugin("bash", dirs)
    found = plugin._query(config_name="train", line=line)
    if target:  # a shortcut's value: offer it under the shortcut's name
        found = [head + "=" + f.split("=", 1)[1] for f in found if f.startswith(target + "=")]
    elif "=" not in word and "." not in word:
        found += [f"{k}=" for k in aliases.SHORTCUTS if k.startswith(word)]
        found += [f for f in ("--config-dir", "--multirun", "--cfg", "--help", "--verbose", "--traceback")
                  if word.startswith("-") and f.startswith(word)]
    return sorted(set(found))


def _dirs(word: str) -> list[str]:
    base = os.path.dirname(word) or "."
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    prefix = os.path.basename(word)
    return [os.path.join(os.path.dirname(word), n) + "/" for n in names
            if n.startswith(prefix) and os.path.isdir(os.path.join(base, n))]


def _check(words: list[str], word: str) -> list[str]:
    """`aligntune check`: its flags, and experiment= options of the search path."""
    done = words[:-1] if word else words
    if done and done[-1] in ("--config-dir", "-cd", "--out"):
        return _dirs(word)
    if word.startswith("experiment="):
        from aligntune.config.searchpath import options

        _, dirs = _user_dirs(done)
        return sorted(f"experiment={n}" for n in options("experiment", dirs) if f"experiment={n}".startswith(word))
    return [f for f in CHECK_FLAGS if f.startswith(word)]
