"""Load a dataset and bring it to canonical columns.

Canonical columns for prompt-based algorithms (GRPO): `prompt`, a string or a list of chat
messages. Every other column is kept and reaches reward functions as a keyword argument (e.g.
`answer`). The tokenizer's chat template is applied once, by the trainer, never here.
"""

from __future__ import annotations

from pathlib import Path

from aligntune.config.schema import DatasetConfig
from aligntune.data.sources import FILE_BUILDERS, Source, resolve
from aligntune.errors import ConfigError, DataError


def _read(src: Source, cfg: DatasetConfig):
    import datasets

    datasets.disable_progress_bars()
    try:
        if src.kind in ("shipped", "file"):
            if cfg.split != "train":
                raise ConfigError(f"dataset.split={cfg.split!r}, but {src.location} is a single file, which holds only "
                                  "the 'train' split.", "Drop dataset.split, or point dataset.name at a directory with splits.")
            builder = FILE_BUILDERS[Path(src.location).suffix]
            return datasets.load_dataset(builder, data_files=src.location, split="train")
        if src.kind == "dir":
            return datasets.load_dataset(src.location, cfg.subset, split=cfg.split)
        return datasets.load_dataset(src.location, cfg.subset, split=cfg.split)
    except ConfigError:
        raise
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"dataset {cfg.name!r} has no split {cfg.split!r} ({exc}).", "Set dataset.split to one of its splits.") from exc
        raise DataError(f"Cannot read dataset {src.location}: {exc}.",
                        "Check the file is valid for its extension (one JSON object per line for .jsonl).") from exc
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"Cannot read dataset {src.location}: {type(exc).__name__}: {exc}.",
                        "Check the file is valid for its extension (one JSON object per line for .jsonl).") from exc


def _apply_column_mapping(ds, cfg: DatasetConfig):
    missing = [src for src in cfg.columns.values() if src not in ds.column_names]
    if missing:
        raise DataError(f"dataset.columns maps to {missing}, which {cfg.name!r} does not have (its columns: "
                        f"{ds.column_names}).", "Fix the mapping: dataset.columns.<canonical>=<column in your data>.")
    return ds.rename_columns({src: dst for dst, src in cfg.columns.items() if src != dst})


def _detect_format(columns: list[str], cfg: DatasetConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    if "prompt" in columns:
        return "prompt"
    if "messages" in columns:
        return "messages"
    raise DataError(f"Cannot tell the format of dataset {cfg.name!r}: it has columns {columns}, and none of them is "
                    "'prompt' or 'messages'.", "Map your prompt column with dataset.columns.prompt=<your column>, "
                    "or set dataset.format.")


def _prompt_from_messages(messages):
    """A chat's prompt: every turn before its final assistant reply (the reply is not a prompt)."""
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return messages


def load_prompts(cfg: DatasetConfig, seed: int):
    """The dataset as rows with a `prompt` column, shuffled with `seed` and capped at max_samples."""
    ds = _apply_column_mapping(_read(resolve(cfg.name), cfg), cfg)
    fmt = _detect_format(ds.column_names, cfg)
    needed = "prompt" if fmt == "prompt" else "messages"
    if needed not in ds.column_names:
        raise DataError(f"dataset.format={fmt} needs a '{needed}' column; {cfg.name!r} has {ds.column_names}.",
                        f"Map it with dataset.columns.{needed}=<your column>.")
    if len(ds) == 0:
        raise DataError(f"Dataset {cfg.name!r} (split {cfg.split!r}) has no rows.", "Point dataset.name at data with rows.")
    if fmt == "messages":
        ds = ds.map(lambda row: {"prompt": _prompt_from_messages(row["messages"])}, remove_columns=["messages"])
    if cfg.shuffle:
        ds = ds.shuffle(seed=seed)
    if cfg.max_samples is not None:
        ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if cfg.system_prompt:
        system = {"role": "system", "content": cfg.system_prompt}

        def add_system(row):
            prompt = row["prompt"]
            if isinstance(prompt, str):
                return {"prompt": [system, {"role": "user", "content": prompt}]}
            return {"prompt": prompt if prompt and prompt[0].get("role") == "system" else [system, *prompt]}

        ds = ds.map(add_system)
    for i, row in enumerate(ds.select(range(min(len(ds), 50)))):
        prompt = row["prompt"]
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise DataError(f"Row {i} of dataset {cfg.name!r} has an empty or non-text prompt ({prompt!r}).",
                            "Every row needs a non-empty prompt string or a non-empty list of chat messages.")
    return ds
