"""One process of a launched run (see launch.py): `python -m aligntune.distributed.worker <run dir> <overrides>`.

accelerate's launcher (torchrun) starts one per process with RANK/WORLD_SIZE set. Each recomposes the
job's config from its overrides, checks it is the one the launcher composed, and trains; global rank 0
writes the run directory. Exit codes: 0 done, 2 a user error (written to summary.json), 1 anything else.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from aligntune.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    AligntuneError,
    ConfigError,
    report,
)


def recompose(run_dir: Path, overrides: list[str], rank: int = 0):
    """The job's config, composed by the one compose function from the job's overrides (its recorded search path
    included) and pre-flighted, checked to be the one the launcher composed (launch/expected_config.json)."""
    from aligntune import preflight

    run, _ = preflight.load(overrides)
    expected = json.loads((run_dir / "launch" / "expected_config.json").read_text(encoding="utf-8"))
    if json.loads(json.dumps(asdict(run), default=str)) != expected:
        raise ConfigError(f"The worker of rank {rank} composed a different config from the launcher's "
                          f"(run dir {run_dir}).", "Launch from the directory the command was started in, with the "
                          "same aligntune installation on every machine.")
    return run


def main(argv: list[str]) -> int:
    from aligntune.core.job import AlignmentJob

    run_dir, overrides = Path(argv[0]), list(argv[1:])
    rank = int(os.environ.get("RANK", "0"))
    try:
        run = recompose(run_dir, overrides, rank)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != run.distributed.num_processes:
            raise ConfigError(f"The launcher started {world} processes, and the config asks for "
                              f"distributed.num_processes={run.distributed.num_processes}.",
                              "Launch through `aligntune train`, which writes a matching accelerate config.")
        AlignmentJob(run, run_dir, overrides).train()
    except AligntuneError as exc:
        if rank == 0:
            report(exc)
            from aligntune.run.rundir import RunDir

            rundir = RunDir(run_dir)
            if not rundir.summary_file.exists():
                rundir.fail(exc)
        return EXIT_USAGE
    except Exception:
        import logging

        logging.getLogger("aligntune").exception("rank %d failed", rank)
        raise
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.exit(code if code in (0, EXIT_USAGE) else EXIT_FAILURE)
