"""What an override is about, read by Hydra's own parser (OverridesParser), in one place.

    key("+rewards.mine.fn=f.py:score") == "rewards.mine.fn"     key("~debug") == "debug"
    is_hydra("hydra.run.dir=x") and is_hydra("hydra/launcher=joblib") and not is_hydra("hydra_x=1")
    is_searchpath("hydra.searchpath=[file:///team/configs]")

The CLI, the sweep naming, the start panel, eval's recomposition and the search path all ask these, instead of
each matching the text its own way (`startswith("hydra")`, `lstrip("+~")`, ...). An override Hydra cannot parse
yet (the grammar check that names it comes later, compose.check_grammar) is read by its text before '='.
"""

from __future__ import annotations

import functools

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
