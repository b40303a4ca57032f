"""torch's threads share the usable cores among the processes training at once (aligntune/run/threads.py)."""

from __future__ import annotations

import types

import pytest
import torch

from aligntune.run import threads


def test_cgroup_quota_is_read_in_cores(tmp_path):
    assert threads.cgroup_cpu_limit(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert threads.cgroup_cpu_limit(v1) == 3.0


def test_usable_cores_are_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert threads.usable_cores(tmp_path) == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.usable_cores(tmp_path) == 1  # 1.5 cores of quota: one thread does not oversubscribe


@pytest.mark.parametrize("jobs,local,expected", [(1, None, 4), (2, None, 2), (1, "2", 2), (2, "2", 1), (8, None, 1)])
def test_threads_are_divided_among_sweep_workers_and_accelerate_processes(monkeypatch, jobs, local, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    before = torch.get_num_threads()
    try:
        assert threads.configure(jobs, cores=4) == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_an_explicit_omp_num_threads_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert threads.configure(1, cores=4) == before and torch.get_num_threads() == before


def test_other_load_is_warned_once_with_the_numbers(monkeypatch, capsys):
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(threads, "busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(threads, "own_seconds", lambda: clock["own"])
    warning = threads.OtherLoadWarning(threads=2, cores=2, steps=2)
    warning.on_train_begin(None, None, None)
    clock.update(t=10.0, busy=35.0, own=18.0)  # 10 s: the machine was busy 35 core-s, 18 of them ours
    warning.on_step_end(None, types.SimpleNamespace(global_step=1), None)
    assert capsys.readouterr().err == ""  # not before `steps` steps
    warning.on_step_end(None, types.SimpleNamespace(global_step=2), None)
    err = capsys.readouterr().err
    assert "other processes used 1.7 of this machine's 2 usable cores during the first 2 steps" in err
    assert "torch runs 2 threads" in err and "hydra.launcher.n_jobs" in err
    warning.on_step_end(None, types.SimpleNamespace(global_step=3), None)
    assert capsys.readouterr().err == ""  # once


def test_an_idle_machine_warns_nothing(monkeypatch, capsys):
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(threads, "busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(threads, "own_seconds", lambda: clock["own"])
    warning = threads.OtherLoadWarning(threads=2, cores=2)
    warning.on_train_begin(None, None, None)
    clock.update(t=10.0, busy=20.5, own=19.9)
    warning.on_step_end(None, types.SimpleNamespace(global_step=2), None)
    assert capsys.readouterr().err == "" and warning.other_cores == pytest.approx(0.06)
