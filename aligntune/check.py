"""`aligntune check`: a team's CI in one line. Every experiment option on the search path is composed and validated
(no torch import, about a second each); with --smoke each also trains under `debug=smoke` (the tiny model, a few
steps; its dataset, rewards and algorithm kept) into a run directory of its own.

    aligntune check --config-dir configs --smoke [--junit check.xml]
    aligntune check experiment='team_*' --allow-hub-skips

Which experiments: those named or globbed with experiment=NAME|GLOB (repeatable; experiment='*' is every one on the
path, shipped ones included); by default the user directories' experiments when any directory is on the search path,
else the shipped ones. An experiment that needs the Hugging Face Hub while it cannot be reached is reported as
"needs the Hub": not a pass, so the check fails unless --allow-hub-skips. Other KEY=VALUE items apply to every
experiment. Exit code: 0 when every experiment passed (or was a permitted hub skip), else 2.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aligntune.errors import EXIT_USAGE, AligntuneError, ConfigError

USAGE = ("Usage: aligntune check [--config-dir DIR ...] [experiment=NAME|GLOB ...] [KEY=VALUE ...] [--smoke] "
         "[--junit FILE] [--out DIR] [--allow-hub-skips]")
PASSED, FAILED, HUB = "passed", "failed", "needs the Hub"


@dataclass
class Result:
    name: str
    origin: str  # "shipped" or the user directory it comes from
    algorithm: str = ""
    model: str = ""
    dataset: str = ""
    status: str = PASSED
    seconds: float = 0.0
    error: str = ""
    run_dir: str = ""
    extra: dict = field(default_factory=dict)


def needs_hub(exc: BaseException) -> bool:
    """aligntune's hub checks (aligntune/hub.py, the reward model's, the SmolLM2 preset's) refuse with a paragraph
    that names the Hugging Face Hub and says it cannot be reached / the id is not cached."""
    text = str(exc)
    return isinstance(exc, AligntuneError) and "Hugging Face Hub" in text and (
        "reach" in text or "local cache" in text)


def parse(args: list[str]) -> tuple[dict, list[str], list[str], list[Path]]:
    """(options, experiment patterns, other overrides, user directories)."""
    from aligntune.config import searchpath

    opts = {"smoke": False, "junit": None, "out": None, "allow_hub_skips": False}
    flags, items = [], []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in ("--junit", "--out"):
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{name} needs a value.", USAGE)
                value, i = args[i + 1], i + 1
            opts[name[2:]] = value
        elif a == "--smoke":
            opts["smoke"] = True
        elif a == "--allow-hub-skips":
            opts["allow_hub_skips"] = True
        elif name in searchpath.FLAGS:
            flags.append(a)
            if not eq and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        elif a.startswith("-"):
            raise ConfigError(f"aligntune check does not take {a}.", USAGE)
        elif "=" not in a:
            raise ConfigError(f"aligntune check takes KEY=VALUE items and flags, not '{a}'.", USAGE)
        else:
            items.append(a)
        i += 1
    _, items, dirs = searchpath.split(flags, items)
    patterns = [o.split("=", 1)[1] for o in items if o.startswith("experiment=")]
    overrides = [o for o in items if not o.startswith("experiment=")]
    return opts, [p for pat in patterns for p in pat.split(",") if p], overrides, dirs


def select(patterns: list[str], dirs: list[Path]) -> dict[str, Path]:
    """{experiment: its file} of the experiments to check, in name order."""
    from aligntune.config.searchpath import options, shipped_dir

    found = options("experiment", dirs)
    if not patterns:
        shipped = shipped_dir()
        chosen = {n: p for n, p in found.items() if not p.is_relative_to(shipped)} if dirs else found
        if not chosen:
            raise ConfigError(f"No experiment option in {', '.join(map(str, dirs))} (looked for experiment/*.yaml).",
                              "Put your experiments in <dir>/experiment/<name>.yaml, or start from `aligntune init`.")
        return dict(sorted(chosen.items()))
    chosen = {}
    for pattern in patterns:
        matched = {n: p for n, p in found.items() if fnmatch.fnmatchcase(n, pattern)}
        if not matched:
            raise ConfigError(f"experiment={pattern} matches no experiment option on the search path.",
                              f"Valid options: {', '.join(sorted(found))}.")
        chosen.update(matched)
    return dict(sorted(chosen.items()))


def origin(path: Path) -> str:
    from aligntune.config.searchpath import shipped_dir

    if path.is_relative_to(shipped_dir()):
        return "shipped"
    root = path.parent.parent
    return str(root.relative_to(Path.cwd())) if root.is_relative_to(Path.cwd()) else str(root)


def validate(result: Result, overrides: list[str]) -> None:
    """Compose and preflight one experiment, torch-free; fills `result` in."""
    from aligntune import preflight
    from aligntune.config import compose

    start = time.perf_counter()
    try:
        run, _ = compose.load(overrides)
        result.algorithm, result.model, result.dataset = run.algorithm.name, run.model.name_or_path, run.dataset.name
        preflight.check(run)
    except AligntuneError as exc:
        result.status, result.error = (HUB if needs_hub(exc) else FAILED), exc.paragraph()
    except Exception as exc:  # a bug rather than the user's config: still one experiment's failure, not the check's
        result.status, result.error = FAILED, f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy (the error paragraph of a smoke run is read back from it)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def _paragraph(stderr: str) -> str:
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            para = [line[len("error:"):].strip()]
            para += [ln.strip() for ln in lines[i + 1:] if ln.startswith("  ") and not ln.strip().startswith("(run with")]
            return " ".join(para)
    return ""


def smoke(result: Result, argv: list[str], run_dir: Path) -> None:
    """Train one experiment under debug=smoke, in this process, through `aligntune train`."""
    from aligntune import cli
    from aligntune.run.rundir import RunFiles

    start = time.perf_counter()
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        try:
            code = cli.main(["train", *argv, "debug=smoke", f"hydra.run.dir={run_dir}"])
        except Exception as exc:  # a crash in one experiment must not stop the check of the others
            code, tee.copy.write(f"error: {type(exc).__name__}: {exc}\n")
    result.seconds += time.perf_counter() - start
    result.run_dir = str(run_dir)
    if code == 0:
        return
    error = _paragraph(tee.copy.getvalue())
    error = error or str(RunFiles(run_dir).summary().get("error", ""))
    result.status = FAILED
    result.error = error or f"aligntune train exited {code}; see {RunFiles(run_dir).log_file}."


def junit(results: list[Result], path: str, smoke_run: bool) -> None:
    import xml.etree.ElementTree as ET

    failures = sum(r.status == FAILED for r in results)
    suite = ET.Element("testsuite", name="aligntune check" + (" --smoke" if smoke_run else ""), tests=str(len(results)),
                       failures=str(failures), skipped=str(sum(r.status == HUB for r in results)), errors="0",
                       time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=r.origin, name=f"experiment={r.name}", time=f"{r.seconds:.3f}")
        if r.status == FAILED:
            ET.SubElement(case, "failure", message=r.error[:200]).text = r.error
        elif r.status == HUB:
            ET.SubElement(case, "skipped", message=r.error[:200]).text = r.error
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def table(results: list[Result], smoke_run: bool):
    from rich.table import Table

    t = Table(title="aligntune check" + (" --smoke" if smoke_run else ""), show_lines=True)
    style = {PASSED: "green", FAILED: "bold red", HUB: "yellow"}
    rows = [[r.name, r.origin, r.algorithm, r.model, r.dataset, r.status, f"{r.seconds:.2f}", r.error] for r in results]
    for i, col in enumerate(("experiment", "from", "algorithm", "model", "dataset", "status", "seconds", "error")):
        widest = max([len(col), *(len(row[i]) for row in rows)])
        t.add_column(col, overflow="fold", min_width=40 if col == "error" else min(widest, 36))
    for row in rows:
        row[5] = f"[{style[row[5]]}]{row[5]}[/]"
        t.add_row(*row)
    return t


def check_command(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    opts, patterns, overrides, dirs = parse(args)
    from aligntune.config.searchpath import as_override

    chosen = select(patterns, dirs)
    out = Path(opts["out"] or Path("outputs") / "check" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    cd = [a for d in dirs for a in ("--config-dir", str(d))]
    if opts["smoke"]:  # the engines' one-time import is not any experiment's time
        start = time.perf_counter()
        import torch  # noqa: F401
        import transformers.trainer  # noqa: F401  (transformers loads its Trainer, and peft with it, lazily)
        import trl  # noqa: F401

        import aligntune.run.checkpoints  # noqa: F401  (the trainer callbacks every run installs)

        print(f"imported torch, transformers (its Trainer, peft) and trl in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    results = []
    for name, path in chosen.items():
        result = Result(name, origin(path))
        validate(result, [f"experiment={name}", *overrides, *as_override(dirs)])
        if opts["smoke"] and result.status == PASSED:
            smoke(result, [*cd, f"experiment={name}", *overrides], out / name)
        results.append(result)
    from aligntune.run.console import console

    console.print(table(results, opts["smoke"]), width=max(console.width, 160), crop=False)  # CI logs: 80 columns squeeze it
    if opts["junit"]:
        junit(results, opts["junit"], opts["smoke"])
        console.print(f"JUnit XML written to {opts['junit']}", soft_wrap=True)
    bad = [r for r in results if r.status == FAILED or (r.status == HUB and not opts["allow_hub_skips"])]
    skipped = sum(r.status == HUB for r in results)
    summary = f"{sum(r.status == PASSED for r in results)} of {len(results)} passed"
    if skipped:
        summary += f", {skipped} need the Hub" + (" (allowed)" if opts["allow_hub_skips"] else
                                                  " (not a pass: --allow-hub-skips lets them through)")
    console.print(("[bold red]" if bad else "[bold green]") + summary + "[/]", soft_wrap=True)
    return EXIT_USAGE if bad else 0
