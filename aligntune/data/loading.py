"""Load a dataset, bring it to canonical columns for the algorithm, and split off held-out rows.

    source (shipped | file | dir | hub) -> dataset.columns mapping -> format (auto-detected or
    dataset.format) -> adapter per row -> shuffle (run seed) -> eval split -> max_samples -> system prompt
    -> `fit` (the caller's check of the rows against the model, e.g. data/lengths.py)

`kind` is what the algorithm consumes: "prompts" (GRPO, PPO), "preferences" (DPO, reward
models), "sft" or "unpaired" (KTO). With `dataset.unpair`, preference pairs are loaded, split and sampled as
pairs, and each split is unpaired last (so a pair's two rows stay on the same side of the held-out split), then
shuffled again (unless dataset.shuffle=false): KTO's trainer reads rows in order, and its KL estimate needs
neighbouring rows to come from different prompts. Held-out rows come only from the dataset's own split (dataset.eval_split) or an
explicit fraction (dataset.eval_fraction): nothing is held out silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aligntune.config.schema import DatasetConfig
from aligntune.data import formats
from aligntune.data.sources import FILE_BUILDERS, Source, resolve
from aligntune.errors import ConfigError, DataError

log = logging.getLogger(__name__)
# Formats whose rows may legitimately fail to pair up (the hub's hh-rlhf has a few): such rows are
# dropped and reported; any other bad row stops the run.
DROPPABLE = ("hh_rlhf", "ultrafeedback")
ROW = "__aligntune_row__"  # each row's position in its source split, for messages about it; removed before returning


def _read(src: Source, cfg: DatasetConfig, split: str):
    import datasets

    datasets.disable_progress_bars()
    try:
        if src.kind in ("shipped", "file"):
            if split != "train":
                raise ConfigError(f"dataset split {split!r} was asked for, but {src.location} is a single file, which "
                                  "holds only the 'train' split.", "Use dataset.eval_fraction to hold out rows of it, or "
                                  "point dataset.name at a directory or hub dataset with splits.")
            _check_utf8(Path(src.location))
            return datasets.load_dataset(FILE_BUILDERS[Path(src.location).suffix], data_files=src.location, split="train")
        return datasets.load_dataset(src.location, cfg.subset, split=split)
    except (ConfigError, DataError):
        raise
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"Dataset {cfg.name!r} has no split {split!r} ({exc}).", "Use one of its splits.") from exc
        raise DataError(f"Cannot read dataset {src.location}: {exc}.", _FILE_HINT) from exc
    except Exception as exc:  # datasets raises many types for malformed files
        root = exc
        while root.__cause__ is not None:  # DatasetGenerationError wraps the parser's own message
            root = root.__cause__
        detail = f"{type(exc).__name__}: {exc}" if root is exc else f"{type(root).__name__}: {root}"
        raise DataError(f"Cannot read dataset {src.location}: {detail}.", _FILE_HINT) from exc


TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


def _check_utf8(path: Path) -> None:
    """Text files must be UTF-8: pyarrow reads other encodings without complaint and fails later, on access."""
    if path.suffix not in TEXT_SUFFIXES:
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"Dataset {path} is not UTF-8: line {number} has the byte 0x{line[exc.start]:02x} at "
                                f"column {exc.start + 1}, which is not valid UTF-8.",
                                f"Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > "
                                f"{path.stem}.utf8{path.suffix}).") from exc


_FILE_HINT = ("Check that the file is valid for its extension (.jsonl: one JSON object per line; .json: a list of "
              "objects or JSON lines; .csv with a header row; .parquet) and is UTF-8 encoded.")


def _map_columns(ds, cfg: DatasetConfig):
    missing = [src for src in cfg.columns.values() if src not in ds.column_names]
    if missing:
        raise DataError(f"dataset.columns maps to {missing}, which {cfg.name!r} does not have (its columns: "
                        f"{ds.column_names}).", "Fix the mapping: dataset.columns.<canonical>=<column in your data>.")
    return ds.rename_columns({src: dst for dst, src in cfg.columns.items() if src != dst})


def _format(ds, cfg: DatasetConfig) -> str:
    if cfg.format != "auto":
        fmt = cfg.format
    else:
        try:
            fmt = formats.detect(ds.column_names, ds[0])
        except formats.RowError as exc:
            raise DataError(f"Cannot tell the format of dataset {cfg.name!r}: {exc}.",
                            "Set dataset.format, or map your columns with dataset.columns.<canonical>=<yours> "
                            "(canonical: prompt, chosen, rejected, completion, messages, question, answer).") from exc
    missing = [c for c in formats.REQUIRED[fmt] if c not in ds.column_names]
    if missing:
        try:
            fits = formats.detect(ds.column_names, ds[0])
        except formats.RowError:
            fits = None
        mapping = "map your columns with dataset.columns.<needed>=<your column>"
        fix = (f"Its columns fit format {fits}: set dataset.format=auto (or ={fits}), or give the data as "
               f"dataset_name={cfg.name}, which starts from no dataset preset; or {mapping}." if fits else
               f"Set dataset.format to the data's format (dataset.format=auto detects it), or {mapping}.")
        raise DataError(f"Dataset {cfg.name!r} lacks column(s) {missing} that format {fmt} needs (its columns: "
                        f"{ds.column_names}).", fix)
    return fmt


def _convert(ds, fmt: str, kind: str, cfg: DatasetConfig):
    from datasets import Dataset

    adapt = formats.adapter(fmt, kind, cfg.name)
    keep_extra = kind == "prompts"  # rewards read the other columns (e.g. answer)
    rows, dropped, identical = [], [], []
    for i, row in enumerate(ds):
        try:
            out = adapt(row)
        except formats.RowError as exc:
            if fmt in DROPPABLE and "do not share" in str(exc):
                dropped.append(i)
                continue
            raise DataError(f"Row {i} of dataset {cfg.name!r} does not fit the {fmt} format: {exc}.",
                            f"Fix or remove that row; the {fmt} format expects {_EXPECT[fmt]}.") from exc
        if kind == "preferences" and out["chosen"] == out["rejected"]:
            identical.append(i)  # DPO's and a reward model's losses compare the two: no signal, zero gradient
            continue
        rows.append({**row, **out, ROW: i} if keep_extra else {**out, ROW: i})
    _report_dropped(dropped, len(ds), cfg.name, "whose chosen and rejected dialogues do not share a prompt")
    _report_dropped(identical, len(ds), cfg.name, "whose chosen and rejected responses are identical (no preference "
                    "to learn from)")
    if not rows and identical:
        raise DataError(f"Every usable preference pair of dataset {cfg.name!r} ({len(identical)} of {len(ds)} rows) has "
                        "the same chosen and rejected response, so none carries a preference: DPO and reward models "
                        "learn from the difference between the two, which is zero.",
                        "Check that the chosen and rejected columns (or the dataset.columns mapping) hold the preferred "
                        "and the dispreferred response, and that they differ.")
    if not rows:
        raise DataError(f"No usable rows in dataset {cfg.name!r}.", "Check the data against its format.")
    return Dataset.from_list(rows)


def _report_dropped(rows: list[int], total: int, name: str, why: str) -> None:
    """Log and show, once per dataset split, how many rows were dropped and why (the first row numbers)."""
    if not rows:
        return
    more = " ..." if len(rows) > 10 else ""
    log.warning("dropped %d of %d rows of %s %s: rows %s%s", len(rows), total, name, why, rows[:10], more)
    from aligntune.run.console import console

    console.print(f"[yellow]warning[/yellow]: dropped {len(rows)} of {total} rows of {name} {why} (rows "
                  f"{rows[:10]}{more}).")


_EXPECT = {
    "prompt": "a non-empty 'prompt' (text or a list of {role, content} messages)",
    "messages": "'messages': a list of {role, content} turns",
    "prompt_completion": "non-empty 'prompt' and 'completion'",
    "hh_rlhf": "'chosen' and 'rejected' dialogues of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns that differ "
               "only in the last Assistant reply",
    "ultrafeedback": "'chosen' and 'rejected' message lists that differ only in the last (assistant) message",
    "prompt_chosen_rejected": "non-empty 'prompt', 'chosen' and 'rejected', all text or all messages",
    "gsm8k": "'question' and an 'answer' that ends with '#### <final answer>'",
    "unpaired": "non-empty 'prompt' and 'completion' (both text or both messages) and a 'label' of true or false",
}


def _with_system(row: dict, system: str) -> dict:
    """Prepend a system message; text rows become conversational (completions become assistant turns)."""
    sys_msg = {"role": "system", "content": system}
    out = dict(row)
    if "messages" in row:
        msgs = row["messages"]
        out["messages"] = msgs if msgs and msgs[0].get("role") == "system" else [sys_msg, *msgs]
        return out
    prompt = row["prompt"]
    if isinstance(prompt, str):
        out["prompt"] = [sys_msg, {"role": "user", "content": prompt}]
        for col in ("chosen", "rejected", "completion"):
            if isinstance(row.get(col), str):
                out[col] = [{"role": "assistant", "content": row[col]}]
    elif not (prompt and prompt[0].get("role") == "system"):
        out["prompt"] = [sys_msg, *prompt]
    return out


def _unpaired_source(fmt: str, cfg: DatasetConfig) -> str:
    """What the rows of an unpaired (KTO) load are read as: "preferences" to unpair, or "unpaired" as they are."""
    if fmt in formats.PREFERENCE_FORMATS and not cfg.unpair:
        raise DataError(f"Dataset {cfg.name!r} holds preference pairs ({fmt} format), and KTO learns from unpaired rows: "
                        "a prompt, one completion and a label saying whether it is desirable.",
                        "Add dataset.unpair=true to use each pair as two rows (chosen: label true, rejected: label "
                        "false), or give rows with 'prompt', 'completion' and a boolean 'label'.")
    if cfg.unpair and fmt not in formats.PREFERENCE_FORMATS:
        already = "is unpaired already" if fmt == "unpaired" else f"is in {fmt} format, which has no pairs"
        raise DataError(f"dataset.unpair=true turns preference pairs into unpaired rows, and dataset {cfg.name!r} "
                        f"{already}.", "Drop dataset.unpair." if fmt == "unpaired" else
                        "Drop dataset.unpair and give unpaired rows ('prompt', 'completion', boolean 'label').")
    return "preferences" if cfg.unpair else "unpaired"


def _unpair(ds):
    from datasets import Dataset

    return Dataset.from_list([{**one, ROW: row[ROW]} for row in ds for one in formats.unpair(row)])


def check_labels(ds, name: str, split: str) -> None:
    """KTO weighs desirable against undesirable rows: both kinds must be there."""
    desirable = sum(ds["label"])
    if 0 < desirable < len(ds):
        return
    which, other = ("desirable (label true)", "undesirable") if desirable else ("undesirable (label false)", "desirable")
    raise DataError(f"Every one of the {len(ds)} rows of dataset {name!r} ({split}) is {which}, and KTO needs both "
                    f"desirable and undesirable examples: its loss moves each completion relative to the other kind "
                    "through the shared KL reference point.",
                    f"Add {other} rows (label {'false' if desirable else 'true'}), or, for desirable completions only, "
                    "use algorithm=sft.")


def load(cfg: DatasetConfig, seed: int, kind: str, fit=None):
    """(train, eval or None) with canonical columns for `kind` (prompts | preferences | sft | unpaired).

    `fit(dataset, rows, split)` sees each final split (rows: each row's position in its source split) and returns
    it, changed or not, or raises."""
    src = resolve(cfg.name)
    raw = _map_columns(_read(src, cfg, cfg.split), cfg)
    if len(raw) == 0:
        raise DataError(f"Dataset {cfg.name!r} (split {cfg.split!r}) has no rows.", "Point dataset.name at data with rows.")
    fmt = _format(raw, cfg)
    wanted, kind = kind, (_unpaired_source(fmt, cfg) if kind == "unpaired" else kind)
    train = _convert(raw, fmt, kind, cfg)
    held_out = None
    if cfg.eval_split is not None:
        raw_eval = _map_columns(_read(src, cfg, cfg.eval_split), cfg)
        held_out = _convert(raw_eval, fmt, kind, cfg) if len(raw_eval) else None
    if cfg.shuffle:
        train = train.shuffle(seed=seed)
    if cfg.eval_fraction is not None:
        parts = train.train_test_split(test_size=cfg.eval_fraction, seed=seed, shuffle=False)
        if len(parts["test"]) == 0 or len(parts["train"]) == 0:
            raise DataError(f"dataset.eval_fraction={cfg.eval_fraction} of {len(train)} rows leaves an empty split.",
                            "Use a fraction that leaves rows on both sides.")
        train, held_out = parts["train"], parts["test"]
    if cfg.max_samples is not None:
        train = train.select(range(min(cfg.max_samples, len(train))))
    if cfg.system_prompt:
        train = train.map(lambda row: _with_system(row, cfg.system_prompt))
        if held_out is not None:
            held_out = held_out.map(lambda row: _with_system(row, cfg.system_prompt))
    if wanted == "unpaired" and kind == "preferences":
        train, held_out = _unpair(train), _unpair(held_out) if held_out is not None else None
        if cfg.shuffle:  # else a pair's rows stay neighbours, and TRL's KL estimate pairs a completion with its own prompt
            train = train.shuffle(seed=seed)
            held_out = held_out.shuffle(seed=seed) if held_out is not None else None
    if wanted == "unpaired":
        check_labels(train, cfg.name, cfg.split)
    out = []
    for ds, split in ((train, cfg.split), (held_out, cfg.eval_split or f"{cfg.split}, held out")):
        if ds is not None and fit is not None:
            ds = fit(ds, ds[ROW], split)
        out.append(ds.remove_columns(ROW) if ds is not None else None)
    return out[0], out[1]
