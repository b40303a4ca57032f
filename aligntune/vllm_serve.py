"""`aligntune vllm-serve`: a thin front over TRL's `trl vllm-serve`, the server GRPO/RLOO's
`rollout.engine=vllm rollout.vllm.mode=server` generate with.

    aligntune vllm-serve run=outputs/2026-11-24/10-00-00_ab12cd [--port 8001 --tensor_parallel_size 2 ...]
    aligntune vllm-serve model=smollm2_135m                       # a preset, aligntune:<id>, local dir or hub id
    aligntune vllm-serve run=<run dir> dry_run=true               # print the command, start nothing

run= resolves a run directory to the model it saved: model/, or, for a LoRA run, model_merged/ (vLLM serves full
weights; a run trained without model.lora.save_merged=true has only the adapter and is refused). Every argument
starting with `-` goes to `trl vllm-serve` as it is (TRL's own options, and vLLM's, which TRL forwards).
The server needs vLLM and a CUDA GPU: without them the command is refused before anything starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aligntune.errors import ConfigError

USAGE = ("Usage: aligntune vllm-serve run=<run dir> | model=<preset, aligntune:<id>, path or hub id> [dry_run=true] "
         "[--host H --port P --tensor_parallel_size N ... (trl vllm-serve's options)]")


def served_model(run_dir: Path) -> Path:
    """The full-weight model a run directory (or its model/ folder) saved."""
    from aligntune.run.rundir import RunFiles

    folder = RunFiles(run_dir).weights()
    if (folder / "config.json").is_file():
        return folder
    merged = RunFiles(run_dir if folder != run_dir else run_dir.parent).model_merged
    if (folder / "adapter_config.json").is_file():
        if (merged / "config.json").is_file():
            return merged
        raise ConfigError(f"run={run_dir} saved a LoRA adapter ({folder}), and vLLM serves full weights; the run has "
                          "no model_merged/ beside it.",
                          "Train with model.lora.save_merged=true (it writes model_merged/: the adapter merged into "
                          "the base), or serve the base model and load the adapter with vLLM's own --enable-lora.")
    raise ConfigError(f"run={run_dir} holds no model to serve: no model/ folder, config.json or adapter_config.json.",
                      "Point run= at a completed run directory (or its model/ folder), or use model=<path or hub id>.")


def command(model: str, extra: list[str]) -> list[str]:
    """The `trl vllm-serve` command line (a list: no shell quoting involved)."""
    return [sys.executable, "-m", "trl.cli.main", "vllm-serve", "--model", model, *extra]


def check_runnable() -> None:
    """vLLM installed and a CUDA GPU present, in one paragraph each."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("aligntune vllm-serve starts TRL's vLLM server (trl vllm-serve), and vLLM is not installed.",
                          "Install it on a CUDA machine (pip install 'aligntune[vllm]'), or add dry_run=true to print "
                          "the command for one; without vLLM, GRPO and RLOO generate with rollout.engine=hf.")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("aligntune vllm-serve starts TRL's vLLM server, which runs on CUDA GPUs, and this machine has "
                          "none (torch.cuda.is_available() is False).",
                          "Run it on a GPU machine, or add dry_run=true to print the command for one.")


def parse(args: list[str]) -> tuple[str | None, str | None, bool, list[str]]:
    """(run=, model=, dry_run, the arguments for trl vllm-serve)."""
    run = model = None
    dry_run, extra = False, []
    for i, a in enumerate(args):
        if a.startswith("-"):
            extra = args[i:]  # from the first option on, everything is trl vllm-serve's (values included)
            break
        key, sep, value = a.partition("=")
        if key == "run" and sep:
            run = value
        elif key == "model" and sep:
            model = value
        elif key == "dry_run" and value in ("true", "false"):
            dry_run = value == "true"
        else:
            raise ConfigError(f"aligntune vllm-serve does not take {a!r}.",
                              "It takes run= or model=, dry_run=true, then trl vllm-serve's own options as --name value "
                              "(e.g. --port 8001).")
    if any(a == "--model" or a.startswith("--model=") for a in extra):
        raise ConfigError("aligntune vllm-serve got --model among the options for trl vllm-serve.",
                          "Name the model with run=<run dir> or model=<model> instead.")
    return run, model, dry_run, extra


def vllm_serve_command(args: list[str]) -> int:
    run, model, dry_run, extra = parse(args)
    if (run is None) == (model is None):
        raise ConfigError("aligntune vllm-serve needs exactly one of run=<run directory> and model=<model>.",
                          USAGE.replace("Usage: ", "e.g. "))
    if run is not None:
        path = Path(run).expanduser()
        if not path.exists():
            raise ConfigError(f"run={run} does not exist.", "Point run= at a run directory (outputs/<date>/<time>_<id>).")
        location = str(served_model(path))
    else:
        from aligntune.commands import _inference_location

        location = _inference_location(model)
    cmd = command(location, extra)
    if dry_run:
        import shlex

        print(shlex.join(cmd))
        return 0
    check_runnable()
    return subprocess.run(cmd, check=False).returncode
