"""What an override is about, read by Hydra's own parser (OverridesParser), in one place.

    key("+rewards.mine.fn=f.py:score") == "rewards.mine.fn"     key("~debug") == "debug"
    is_hydra("hydra.run.dir=x") and is_hydra("hydra/launcher=joblib") and not is_hydra("hydra_x=1")
    is_searchpath("hydra.searchpath=[file:///team/configs]")

`value(v)` writes a Python value in the override grammar, so Hydra reads back exactly `v` (the Python API's
keyword arguments and the recorded search path both go through it).

The CLI, the sweep naming, the start panel, eval's recomposition and the search path all ask these, instead of
each matching the text its own way (`startswith("hydra")`, `lstrip("+~")`, ...). An override Hydra cannot parse
yet (the grammar check that names it comes later, compose.check_grammar) is read by its text before '='.
"""

from __future__ import annotations

import functools
import re
from typing import Any

SEARCHPATH = "hydra.searchpath"


@functools.lru_cache(maxsize=1)
def parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


@functools.lru_cache(maxsize=4096)
def key(override: str) -> str:
    """The key (or config group) `override` sets, without its +, ++ or ~ and without an @package."""
    from hydra.errors import HydraException

    try:
        return parser().parse_override(override).key_or_group
    except HydraException:
        return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def is_hydra_key(name: str) -> bool:
    """Hydra's own settings (hydra.run.dir, hydra.sweeper.*) and groups (hydra/launcher), not the job's config."""
    return name == "hydra" or name.startswith(("hydra.", "hydra/"))


def is_hydra(override: str) -> bool:
    return is_hydra_key(key(override))


def is_searchpath(override: str) -> bool:
    """The config search path (aligntune.config.searchpath): a Hydra setting that decides which options exist."""
    return key(override) == SEARCHPATH


_PLAIN = re.compile(r"[\w./:@+-]+")  # characters the grammar reads unquoted inside a value


def value(v: Any) -> str:
    """`v` (None, bool, int, float, str, path, list/tuple, dict) as an override value Hydra parses back to `v`: a
    string is quoted when it has a character the grammar reserves, or when unquoted it would read as something
    else (true, null, 1e-3, ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{value(str(k))}:{value(x)}" for k, x in v.items()) + "}"
    text = str(v)
    if _PLAIN.fullmatch(text) and parser().parse_override(f"k={text}").value() == text:
        return text
    # Inside quotes Hydra reads a backslash literally, except a run of them before a quote or the closing quote:
    # those are doubled, and the quote escaped.
    escaped = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m[1] * 2, escaped)
    return f"'{escaped}'"
