"""The `aligntune` command. A thin front: subcommands are parsed here, `train` is handed to Hydra.

    aligntune --help
    aligntune train [GROUP=OPTION] [KEY=VALUE] [-m] [--cfg job] [-v] [--traceback]

Before Hydra launches anything, every job of the command (one, or each point of a sweep) is
composed and validated (`aligntune.config.compose.load`), so a bad value fails the whole command
in about a second with one paragraph, before torch is imported.
"""

from __future__ import annotations

import argparse
import os
import sys

from aligntune import __version__
from aligntune.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AligntuneError,
    ConfigError,
    RunInterrupted,
    report,
    traceback_requested,
)

COMMANDS = {
    "train": "train a model from the composed config; `aligntune train --help` lists the options",
    "check": "compose and validate every experiment of the search path (--smoke: also train each under debug=smoke): CI in one line",
    "init": "write a starter project: configs/experiment/example.yaml, rewards/my_reward.py, its test, a CI workflow",
    "eval": "evaluate a run (or model) on held-out data, side by side with its starting model",
    "generate": "sample completions from a run (or model): prompt=\"...\" or -i for interactive",
    "vllm-serve": "serve a run's model (or a model) with TRL's vLLM server, for rollout.vllm.mode=server (CUDA, vllm)",
    "rewards": "list the built-in reward functions",
    "report": "write plots and report.md of a run (or of every job of a sweep, plus the sweep's comparison)",
    "compare": "overlay the curves of several runs, one figure per metric, and print their final metrics side by side",
}

# Hydra flags that only print (no job runs): their overrides are not validated first.
PRINT_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--version"}
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn", "--config-path", "-cp",
               "--config-dir", "-cd", "--experimental-rerun"}  # --config-dir: aligntune.config.searchpath takes it

COMMAND_USAGE = {
    "check": "Usage: aligntune check [--config-dir DIR ...] [experiment=NAME|GLOB ...] [KEY=VALUE ...] [--smoke] "
             "[--junit FILE] [--out DIR] [--allow-hub-skips]",
    "init": "Usage: aligntune init [DIR] (default: the current directory; never overwrites a file)",
    "eval": "Usage: aligntune eval run=<run dir or model path> [KEY=VALUE ...] (e.g. eval.num_prompts=32 eval.samples=8), "
            "or aligntune eval model=<preset, aligntune:<id>, path or hub id> [dataset=... KEY=VALUE ...]",
    "generate": "Usage: aligntune generate run=<run dir or model path> | model=<preset, aligntune:<id>, path or hub id> "
                "prompt=\"...\" [samples=N temperature=T max_new_tokens=N seed=S system=\"...\" device=auto|cpu|cuda "
                "dtype=auto|fp32|bf16|fp16] [-i]",
    "vllm-serve": "Usage: aligntune vllm-serve run=<run dir> | model=<preset, aligntune:<id>, path or hub id> "
                  "[dry_run=true] [trl vllm-serve's options, e.g. --port 8001 --tensor_parallel_size 2]",
    "rewards": "Usage: aligntune rewards",
    "report": "Usage: aligntune report <run dir or sweep dir> [--mark-crashed] (a run whose process is gone shows as "
              "crashed; --mark-crashed writes that into its summary.json)",
    "compare": "Usage: aligntune compare <run dir> <run dir> ... [--out DIR] (a sweep dir stands for its jobs; "
               "figures go to compare_<metric>.png in the current directory by default)",
}

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sc = next((i for i, a in enumerate(argv[:2]) if a in ("-sc", "--shell-completion")), None)
    if sc is not None and (sc == 0 or argv[0] == "train"):  # aligntune [train] -sc install=bash|query=bash
        from aligntune import completion

        return completion.command(argv[sc + 1:sc + 2])
    if argv and argv[0] == "train":
        return train_command(argv[1:])
    if argv and argv[0] in COMMANDS and not any(a in ("-h", "--help") for a in argv[1:]):
        return _other_command(argv[0], argv[1:])
    parser = argparse.ArgumentParser(
        prog="aligntune",
        description="Config-driven alignment of language models (GRPO, DPO, PPO, reward models, SFT), composed with Hydra.",
        epilog="Run `aligntune train --help` for config groups, shortcuts and examples. Shell completion (subcommands, "
               "groups, options, keys): eval \"$(aligntune -sc install=bash)\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aligntune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, description=text + ". " + COMMAND_USAGE.get(name, ""))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return EXIT_USAGE  # unreachable: known commands return above


def console() -> int:
    """The `aligntune` command (console script and `python -m aligntune`): `main`, then, if a reward call that timed
    out is still stuck in its thread (rewards/watchdog.py: it cannot be killed), an immediate exit with the run's
    code once the output is flushed, instead of finalizing the interpreter around it. In-process callers use main."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
    from aligntune.rewards import watchdog

    if watchdog.hung():
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _other_command(name: str, args: list[str]) -> int:
    from aligntune import check, commands, starter, vllm_serve

    run = {"check": check.check_command, "init": starter.init_command, "eval": commands.eval_command, "generate": commands.generate_command, "rewards": commands.rewards_command,
           "report": commands.report_command, "compare": commands.compare_command,
           "vllm-serve": vllm_serve.vllm_serve_command}[name]
    try:
        return run(args)
    except AligntuneError as exc:
        if traceback_requested():
            import traceback

            traceback.print_exc()
        report(exc)
        return EXIT_USAGE


def split_args(args: list[str]) -> tuple[list[str], list[str], dict]:
    """(hydra flags, overrides, our own options) from `aligntune train` arguments."""
    flags, overrides, ours = [], [], {"verbose": False, "traceback": False, "multirun": False, "print_only": False}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-v", "--verbose"):
            ours["verbose"] = True
        elif a == "--traceback":
            ours["traceback"] = True
        elif a.startswith("-"):
            flags.append(a)
            name = a.split("=", 1)[0]
            ours["multirun"] |= name in ("-m", "--multirun")
            ours["print_only"] |= name in PRINT_FLAGS
            if name in VALUE_FLAGS and "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("-"):
                if name not in ("--info", "-i") or args[i + 1] in ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"):
                    flags.append(args[i + 1])
                    i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides, ours


# Hydra's modes: one per command (Hydra raises a bare ValueError for two)
MODES = {"-r": "--run", "--run": "--run", "-m": "--multirun", "--multirun": "--multirun", "-c": "--cfg", "--cfg": "--cfg",
         "-i": "--info", "--info": "--info", "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}


def check_one_mode(flags: list[str]) -> None:
    modes = sorted({MODES[f.split("=", 1)[0]] for f in flags if f.split("=", 1)[0] in MODES})
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} were both given, and Hydra runs one mode per command.",
                          "Keep one: to see the config of each job of a sweep, run it without -m for one point "
                          "(e.g. aligntune train --cfg job algorithm.beta=0.0), or drop --cfg/--info to run the sweep.")


def _is_hydra_override(o: str) -> bool:
    """Hydra's own settings (run dir, sweeper, ...), which the job's composition does not need. The search path is
    not one of them: it decides which options exist."""
    from aligntune.config import overrides

    return overrides.is_hydra(o) and not overrides.is_searchpath(o)


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to validate: the one job, or values covering every point of the sweep (its grid, the ends
    of Optuna intervals, the search space of an hparams_search preset)."""
    plain = [o for o in overrides if not _is_hydra_override(o)]
    if not multirun:
        return [plain]
    from aligntune.config import compose, sweeps

    jobs = sweeps.validation_jobs(plain)
    if any(o.startswith("hparams_search=") for o in plain):
        jobs = sweeps.validation_jobs(plain, compose.sweeper_params(jobs[0]))
    return jobs


def validate(overrides: list[str], multirun: bool) -> int:
    """Compose and check every job; returns how many were checked. Raises ConfigError."""
    from aligntune import preflight
    from aligntune.config import sweeps

    sweeps.check_presets([o for o in overrides if not _is_hydra_override(o)], multirun)
    jobs = _jobs(overrides, multirun)
    for job in jobs:
        preflight.load(job)
    return len(jobs)


def _inherited_changes(typed: list[str], ours: dict) -> list[str]:
    """The overrides aligntune.inherited adds (a preset's value the run cannot use), each noticed in one line. For
    the print-only flags (--cfg job) the notices go to stderr, and a config that does not compose is left to Hydra."""
    from aligntune import inherited
    from aligntune.run.console import show_notice

    try:
        extra, notices = inherited.apply_to_jobs(_jobs(typed, ours["multirun"]))
    except AligntuneError:
        if ours["print_only"]:
            return []
        raise
    for text in notices:
        show_notice(text, stderr=ours["print_only"])
    return extra


def train_command(args: list[str]) -> int:
    flags, overrides, ours = split_args(args)
    from aligntune.config import searchpath

    try:
        flags, overrides, ours["config_dirs"] = searchpath.split(flags, overrides)
    except AligntuneError as exc:
        report(exc)
        return EXIT_USAGE
    saved_env = {k: os.environ.get(k) for k in ("ALIGNTUNE_TRACEBACK", "HYDRA_FULL_ERROR")}
    if ours["traceback"]:
        os.environ["ALIGNTUNE_TRACEBACK"] = "1"
    try:
        return _train(flags, overrides, ours)
    finally:
        for key, value in saved_env.items():  # --traceback is for this command only
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _train(flags: list[str], overrides: list[str], ours: dict) -> int:
    from aligntune.config import aliases

    if ours["verbose"]:
        overrides.append("verbose=true")
    typed = list(overrides)  # validated as typed, so an error can say which shortcut it came from
    overrides, _ = aliases.rewrite(overrides)
    from aligntune.config.searchpath import as_override

    if any(f in ("-h", "--help") for f in flags):
        return print_train_help(overrides, ours["config_dirs"])
    sweep_dir = None
    try:
        from aligntune.config import compose

        check_one_mode(flags)
        compose.check_grammar(typed, ours["multirun"])  # before Hydra, which would print its own multi-line error
        from aligntune.run import resume

        if resume.requested(overrides) and not ours["print_only"]:
            # the run's recorded search path, unless this command names directories of its own
            typed = overrides = resume.plan(overrides, ours["multirun"], as_override(ours["config_dirs"]))
        else:
            searchpath = as_override(ours["config_dirs"])
            typed, overrides = typed + searchpath, overrides + searchpath
        extra = _inherited_changes(typed, ours)
        typed, overrides = typed + extra, overrides + extra
        if not ours["print_only"]:
            validate(typed, ours["multirun"])
        from aligntune.config import sweeps

        if ours["multirun"] and not ours["print_only"]:
            sweep_dir = _sweep_dir(overrides)
            overrides = [*overrides, sweeps.fixed_keys_override(overrides), f"hydra.sweep.dir='{sweep_dir}'"]
        code = _run_hydra(flags + overrides)
    except AligntuneError as exc:
        if traceback_requested():
            import traceback

            traceback.print_exc()
        report(exc)
        return EXIT_USAGE
    if sweep_dir is None or not os.path.isdir(sweep_dir):
        return code
    return _finish_sweep(sweep_dir, code)


def _sweep_dir(overrides: list[str]) -> str:
    """The sweep's directory, decided here once (hydra.sweep.dir as the first job composes it, the user's own
    hydra.sweep.dir included) and given to Hydra, so the command knows where its jobs write, whichever launcher
    runs them, without any state kept across Hydra's boundary."""
    from omegaconf import OmegaConf

    from aligntune.config import compose

    first = _jobs(overrides, True)[0] + [o for o in overrides if _is_hydra_override(o)]
    return str(OmegaConf.select(compose.compose(first, with_hydra=True), "hydra.sweep.dir"))


def _finish_sweep(sweep_dir: str, code: int) -> int:
    """After a sweep: list its jobs, write and print the comparison (and the best trial of a search). Jobs are
    read back from their summary.json, so this works whichever launcher ran them (in this process or not); the
    command exits with the code the first failed job recorded there (RunFiles.exit_code)."""
    from aligntune.run import report
    from aligntune.run.console import console
    from aligntune.run.rundir import RunFiles

    _, jobs = report.find_runs(sweep_dir)
    if code == 0 and jobs:
        console.print(f"[bold]{len(jobs)} jobs[/bold] written to:")
        for job in jobs:
            console.print(f"  {job}", soft_wrap=True)
    rows = _write_sweep_comparison(sweep_dir) if jobs else []
    _print_best_trial(sweep_dir)
    failed = [r["job"] for r in rows if r.get("status") != "completed"]
    if code == 0 and failed:
        console.print(f"[bold red]{len(failed)} of {len(rows)} jobs failed[/bold red]:")
        for job in failed:
            console.print(f"  {os.path.join(sweep_dir, job)}", soft_wrap=True)
    # a job that completed may still fail the sweep (its optimized_metric was missing): its summary says so
    codes = [c for c in (RunFiles(job).exit_code() for job in jobs) if c != 0]
    return codes[0] if code == 0 and codes else code


def _write_sweep_comparison(sweep_dir: str) -> list[dict]:
    """<sweep>/comparison.csv and .md, printed as a table. A sweep's results stand without it: a failure warns."""
    from aligntune.run import report
    from aligntune.run.console import console

    try:
        rows, columns = report.write_comparison(sweep_dir)
    except Exception as exc:
        print(f"warning: could not write the sweep comparison in {sweep_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []
    console.print(report.comparison_table(rows, columns, f"sweep {os.path.basename(os.path.normpath(sweep_dir))}"))
    console.print(f"comparison written to {os.path.join(sweep_dir, 'comparison.csv')} and comparison.md", soft_wrap=True)
    return rows


def _print_best_trial(sweep_dir: str) -> None:
    """A hyper-parameter search (hparams_search=...): Optuna's best trial, from its optimization_results.yaml."""
    from aligntune.run import report
    from aligntune.run.console import console

    best = report.best_trial(sweep_dir)
    if best:
        console.print(f"[bold]best trial[/bold]: {best} ({os.path.join(sweep_dir, 'optimization_results.yaml')})",
                      soft_wrap=True)


TRAIN_HELP = """\
aligntune train: align a language model. The config is composed by Hydra from the groups below.

usage: aligntune train [GROUP=OPTION ...] [KEY=VALUE ...] [-m] [--cfg job] [-v] [--traceback]

config groups (GROUP=OPTION; the default is marked *):
{groups}

shortcuts (land on their real keys, also in sweeps):
{shortcuts}

flags:
  -m, --multirun     one job per combination of comma-separated values (a sweep)
  --cfg job          print the composed config and exit (no torch import)
  -v, --verbose      the engines' own logs on the console (train.log always has them)
  --traceback        full tracebacks for errors (also ALIGNTUNE_TRACEBACK=1)
  --hydra-help       Hydra's own flags
  -sc install=bash   shell completion of groups, options and keys: eval "$(aligntune -sc install=bash)"

examples:
  aligntune train experiment=smoke
  aligntune train algorithm=grpo group_size=16 learning_rate=1e-5
  aligntune train -m algorithm.beta=0.0,0.01 experiment=smoke
  aligntune train experiment=smoke debug=smoke      # any experiment, shrunk for CI
  aligntune train -m hparams_search=grpo_optuna experiment=smoke   # Optuna search (pip install 'aligntune[optuna]')
  aligntune train -m launcher=joblib group_size=4,8 # sweep jobs in parallel processes
  aligntune train 'logger=[tensorboard,wandb]'      # experiment trackers (tensorboard | wandb | mlflow | trackio)

Runs go to outputs/<date>/<time>_<id>/ (sweeps: outputs/multirun/<date>/<time>_<id>/<n>_<swept values>/)
under the current directory. Checkpoint with train.save_steps=N; continue an interrupted run with
resume=<run dir> (or resume=latest).
"""


def print_train_help(overrides: list[str], dirs: list | None = None) -> int:
    from aligntune.config import aliases, compose
    from aligntune.config.searchpath import primary_dir

    defaults = {}
    for line in (primary_dir() / "train.yaml").read_text().splitlines():
        line = line.strip()
        if line.startswith("- ") and ":" in line and not line.startswith("- override"):
            group, _, option = line[2:].partition(":")
            defaults[group.strip()] = option.strip()
    rows = []
    for group in ("model", "dataset", "algorithm", "backend", "distributed", "experiment", "debug", "rewards", "hparams_search", "launcher"):
        options = [o + ("*" if defaults.get(group) == o else "") for o in compose.group_options(group, dirs)]
        rows.append(f"  {group + ':':<16}{', '.join(options)}")
    shortcuts = [f"  {k + ' -> ' + v}" for k, v in aliases.SHORTCUTS.items()]
    print(TRAIN_HELP.format(groups="\n".join(rows), shortcuts="\n".join(shortcuts)))
    return 0


def _run_hydra(argv: list[str]) -> int:
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from aligntune.config import compose
    from aligntune.config.searchpath import primary_dir

    compose.register()
    GlobalHydra.instance().clear()
    saved = sys.argv
    sys.argv = ["aligntune train", *compose.hydra_overrides(argv)]  # the same search path as every other stage
    if traceback_requested():
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(version_base="1.3", config_path=str(primary_dir()), config_name=compose.CONFIG_NAME)(_task)()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return 0


def _job_failed(run_dir: str, exc: BaseException, code: int, multirun: bool) -> None:
    """A single run exits with `code`. In a sweep the job is marked failed and the sweep goes on;
    the command's exit code says so at the end."""
    if not multirun:
        raise SystemExit(code)
    from pathlib import Path

    from aligntune.run.rundir import RunDir

    rundir = RunDir(run_dir)
    rundir.fail_unless_failed(exc)  # failed before the run directory was set up
    rundir.record(exit_code=code)  # what the sweep's exit status is read from (_finish_sweep)
    print(f"job {Path(run_dir).name} failed; the sweep goes on with the next job.", file=sys.stderr)


def _default_run(searchpath: list[str]):
    """The default job's config on the run's search path, for the start panel to compare with; None (the panel
    falls back to the whole config tree) if it cannot be composed here: the panel is a view, never a reason for a
    run to fail."""
    import logging

    from aligntune.config import compose

    try:
        return compose.default_run(searchpath)
    except Exception as exc:
        logging.getLogger("aligntune").warning("the start panel shows the whole config: %s: %s", type(exc).__name__, exc)
        return None


def _task(cfg) -> float | None:
    """One Hydra job: typed config -> AlignmentJob -> train. User errors exit 2, others 1 (in a sweep:
    the job is marked failed, and the others still run). The job's config is composed by compose.load from the
    job's overrides and search path, as every other stage composes it; Hydra's own copy (`cfg`) is not used."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from aligntune.config import compose
    from aligntune.run import console
    from aligntune.run.rundir import RunFiles

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        from aligntune.config.searchpath import as_override, from_overrides

        searchpath = as_override(from_overrides(list(hc.overrides.hydra)))  # the user directories, as recorded
        recorded = list(hc.overrides.task) + searchpath  # what resume, eval and workers recompose from
        run, _ = compose.load(recorded)  # the one composition every stage uses (validated before)
        console.show_start(run, run_dir, list(hc.overrides.task), None if run.verbose else _default_run(searchpath))
        from aligntune.core.job import run_job

        launcher = hc.launcher
        parallel = int(launcher.get("n_jobs") or 1) if "joblib" in str(launcher.get("_target_", "")) else 1
        parallel = (os.cpu_count() or 1) if parallel < 0 else parallel  # joblib's -1: one job per core
        summary = run_job(run, run_dir, recorded, parallel_jobs=parallel)
    except AligntuneError as exc:
        if traceback_requested():
            import traceback

            traceback.print_exc()
        report(exc)
        _job_failed(run_dir, exc, EXIT_USAGE, multirun)
        return None
    except RunInterrupted as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        print(f"interrupted at once: the run directory {run_dir} is marked interrupted (no checkpoint was written "
              "for the step in progress).", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        import logging
        import traceback

        logging.getLogger("aligntune").error("run failed", exc_info=exc)
        if traceback_requested():
            traceback.print_exc()
        print(f"error: the run failed with {type(exc).__name__}: {exc}\n  The traceback is in {RunFiles(run_dir).log_file} "
              "(or run again with --traceback).", file=sys.stderr)
        _job_failed(run_dir, exc, EXIT_FAILURE, multirun)
        return None
    return _objective(run, summary, run_dir, multirun)


def _objective(run, summary: dict, run_dir: str, multirun: bool) -> float | None:
    """What the task returns (Optuna optimises it): summary[optimized_metric], or the final reward by default. A
    named metric the run did not log is an error: the run stays complete, the command exits 2."""
    from aligntune.errors import ConfigError

    key = run.optimized_metric or "reward"
    value = summary.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if run.optimized_metric is None:
        return None
    have = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    held_out = " eval_* metrics need held-out rows (dataset.eval_fraction or dataset.eval_split)." if key.startswith("eval_") else ""
    report(ConfigError(f"optimized_metric={key} is not among the final metrics of {run_dir}.{held_out}",
                       f"Use one of: {', '.join(have)}."))
    if not multirun:
        raise SystemExit(EXIT_USAGE)
    from aligntune.run.rundir import RunDir

    RunDir(run_dir).record(exit_code=EXIT_USAGE)  # completed, but the sweep fails (cli._finish_sweep)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
