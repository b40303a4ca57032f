"""CPU threads: torch gets the cores this process may use, shared among the processes that train at once.

torch starts one intra-op thread per core the machine *has*, whatever the process may use (CPU affinity, a
container's cgroup quota) and however many other trainings share those cores. On a 2-core machine two such
processes slowed generation ~40x (283 s against 6.2 s): spinning threads fight over cores. So a run sets
`torch.set_num_threads(usable cores // processes training at once)` (unless OMP_NUM_THREADS is set), where the processes are the parallel
sweep workers (launcher=joblib's n_jobs) times the accelerate processes on this machine (LOCAL_WORLD_SIZE), and
warns once, with the numbers, when other processes keep the cores busy during its first steps.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger("aligntune")


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup, in cores (cgroup v2 cpu.max, or v1 cfs quota), or None."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def processes_on_this_machine(parallel_jobs: int = 1) -> int:
    """How many training processes share this machine's cores: sweep jobs in parallel x local accelerate processes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, parallel_jobs) * max(1, local)


def configure(parallel_jobs: int = 1, cores: int | None = None) -> int:
    """Set torch's intra-op threads to this process's share of the usable cores; returns the count. An explicit
    OMP_NUM_THREADS (the user's, or torchrun's for several processes) is left in charge."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        log.info("torch threads: %d (OMP_NUM_THREADS=%s)", torch.get_num_threads(), os.environ["OMP_NUM_THREADS"])
        return torch.get_num_threads()
    cores = cores if cores is not None else usable_cores()
    share = processes_on_this_machine(parallel_jobs)
    threads = max(1, cores // share)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("torch threads: %d (%d usable cores shared by %d training process(es))", threads, cores, share)
    return threads


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat, steal included)."""
    fields = Path("/proc/stat").read_text().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds this process and its waited-for children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoadWarning(TrainerCallback):
    """Warns once when, over the first `steps` optimizer steps, other processes used more than `limit` of the cores
    (CPU runs only): the run is then much slower than it would be alone, and the numbers say why."""

    def __init__(self, threads: int, cores: int, steps: int = 2, limit: float = 0.5):
        self.threads, self.cores, self.steps, self.limit = threads, cores, steps, limit
        self.start: tuple[float, float, float] | None = None
        self.checked = False
        self.other_cores: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self.start = (time.perf_counter(), busy_seconds(), own_seconds())
        except (OSError, ValueError):  # no /proc/stat (not Linux): nothing to measure
            self.checked = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.checked or self.start is None or state.global_step < self.steps:
            return
        self.checked = True
        t0, busy0, own0 = self.start
        elapsed = time.perf_counter() - t0
        if elapsed <= 0:
            return
        self.other_cores = max(0.0, ((busy_seconds() - busy0) - (own_seconds() - own0)) / elapsed)
        if self.other_cores > self.limit * self.cores:
            text = (f"warning: other processes used {self.other_cores:.1f} of this machine's {self.cores} usable cores "
                    f"during the first {state.global_step} steps (torch runs {self.threads} threads here), so this run "
                    "is much slower than it would be alone: torch processes sharing cores slow each other many times "
                    "over (~40x measured for two on 2 cores). Stop the other jobs, or run fewer at once "
                    "(hydra.launcher.n_jobs, distributed.num_processes).")
            print(text, file=sys.stderr, flush=True)
            log.warning(text)
