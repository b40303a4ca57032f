"""Verifiable instruction constraints, in the spirit of IFEval (Zhou et al. 2023, arXiv:2311.07911) and
RLVR (Lambert et al. 2024, Tulu 3, arXiv:2411.15124): `keywords`, `max_words`, `valid_json`.

Each is checkable from the text alone, so it cannot be argued with. None of them measures whether
the answer is any good: combine them with a task reward (on its own, `max_words` would reward a
one-word reply and `keywords` a list of the keywords).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from aligntune.errors import RewardError
from aligntune.rewards.text import completion_text

_JSON_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)```", re.DOTALL)


@functools.lru_cache(maxsize=256)
def _keyword_regex(keyword: str, case_sensitive: bool) -> re.Pattern:
    # Whole words: "cat" is not found in "category". Edges that are not word characters match as is.
    left = r"(?<!\w)" if keyword[:1].isalnum() or keyword[:1] == "_" else ""
    right = r"(?!\w)" if keyword[-1:].isalnum() or keyword[-1:] == "_" else ""
    return re.compile(left + re.escape(keyword) + right, 0 if case_sensitive else re.IGNORECASE)


def keywords(completions: list, include: list | tuple = (), exclude: list | tuple = (), case_sensitive: bool = False,
             **kwargs) -> list[float]:
    """Fraction of keyword constraints met: each `include` word present, each `exclude` word absent (whole words)."""
    include, exclude = [str(k) for k in include], [str(k) for k in exclude]
    if not include and not exclude or any(not k for k in include + exclude):
        raise RewardError(f"The keywords reward needs non-empty words in include and/or exclude; got include={include}, "
                          f"exclude={exclude}.", "Set e.g. +rewards.<name>.args.include=[budget,deadline].")
    scores = []
    for completion in completions:
        text = completion_text(completion)
        met = sum(bool(_keyword_regex(k, case_sensitive).search(text)) for k in include)
        met += sum(not _keyword_regex(k, case_sensitive).search(text) for k in exclude)
        scores.append(met / (len(include) + len(exclude)))
    return scores


def max_words(completions: list, limit: int, **kwargs) -> list[float]:
    """1.0 when the completion has between 1 and `limit` words (whitespace-separated), else 0.0."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise RewardError(f"The max_words reward's limit={limit!r} is not a positive integer.",
                          "Set rewards.<name>.args.limit to the most words allowed, e.g. 50.")
    return [1.0 if 1 <= len(completion_text(c).split()) <= limit else 0.0 for c in completions]


def json_text(text: str) -> str:
    """The JSON a completion offers: the last ```json (or bare ```) fenced block if there is one, else the whole text."""
    blocks = _JSON_FENCE.findall(text)
    return (blocks[-1] if blocks else text).strip()


@functools.lru_cache(maxsize=16)
def _validator(schema_json: str):
    import jsonschema  # declared dependency (pip install jsonschema)

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise RewardError(f"The valid_json reward's schema is not a valid JSON Schema: {exc.message}.",
                          "Fix rewards.<name>.args.schema (a mapping, or the path of a .json file).") from exc
    return cls(schema)


def _schema_json(schema) -> str:
    if isinstance(schema, (str, Path)):
        path = Path(schema).expanduser()
        if not path.is_file():
            raise RewardError(f"The valid_json reward's schema file {path} does not exist.",
                              "Give the path of a JSON Schema file, or the schema itself as a mapping.")
        try:
            return json.dumps(json.loads(path.read_text()), sort_keys=True)
        except json.JSONDecodeError as exc:
            raise RewardError(f"The valid_json reward's schema file {path} is not JSON ({exc}).", "Fix the file.") from exc
    if isinstance(schema, dict):
        return json.dumps(schema, sort_keys=True)
    raise RewardError(f"The valid_json reward's schema={schema!r} is neither a mapping nor a file path.",
                      "Give the schema as a mapping, or the path of a .json file.")


def valid_json(completions: list, schema=None, **kwargs) -> list[float]:
    """1.0 when the completion (or its last ```json block) parses as JSON, and matches `schema` (JSON Schema) if given."""
    validator = _validator(_schema_json(schema)) if schema is not None else None
    scores = []
    for completion in completions:
        try:
            value = json.loads(json_text(completion_text(completion)))
        except (json.JSONDecodeError, RecursionError):
            scores.append(0.0)
            continue
        scores.append(1.0 if validator is None or validator.is_valid(value) else 0.0)
    return scores
