"""Shell completion (aligntune/completion.py): the query Hydra's bash hook runs on TAB, driven as the shell drives it
(COMP_LINE/COMP_POINT in a subprocess), and the installed hook itself in bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

EXPERIMENT = "# @package _global_\n# A team experiment.\ndefaults:\n  - override /model: tiny\n"


def complete(line: str, cwd, env_extra: dict | None = None, point: int | None = None) -> list[str]:
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line) if point is None else point), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "aligntune", "-sc", "query=bash"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout.split()


@pytest.fixture
def team(workdir):
    (workdir / "configs" / "experiment").mkdir(parents=True)
    (workdir / "configs" / "experiment" / "team_exp.yaml").write_text(EXPERIMENT)
    return workdir


def test_subcommands_complete_after_aligntune(workdir):
    assert {"train", "check", "init", "eval", "report"} <= set(complete("aligntune ", workdir))
    assert complete("aligntune ch", workdir) == ["check"]


def test_train_completes_groups_options_keys_and_shortcuts(workdir):
    assert {"model=", "dataset=", "experiment=", "train.", "group_size="} <= set(complete("aligntune train ", workdir))
    assert "model=tiny" in complete("aligntune train model=", workdir)
    assert complete("aligntune train algorithm.be", workdir) == ["algorithm.beta="]
    assert "train.max_steps=" in complete("aligntune train train.max_", workdir)
    assert complete("aligntune train group_", workdir) == ["group_size="]
    # the cursor (COMP_POINT) decides the word, not the end of the line
    assert "model=tiny" in complete("aligntune train model= seed=3", workdir, point=len("aligntune train model="))


def test_a_user_directory_on_the_line_or_in_the_environment_adds_its_options(team):
    assert "experiment=team_exp" not in complete("aligntune train experiment=", team)
    assert complete("aligntune train --config-dir configs experiment=team", team) == ["experiment=team_exp"]
    assert complete("aligntune train -cd configs experiment=team", team) == ["experiment=team_exp"]
    env = {"ALIGNTUNE_CONFIG_PATH": str(team / "configs")}
    assert complete("aligntune train experiment=team", team, env) == ["experiment=team_exp"]
    assert complete("aligntune check -cd configs experiment=team", team) == ["experiment=team_exp"]
    assert complete("aligntune train --config-dir con", team) == ["configs/"]
    assert complete("aligntune train --config-dir nowhere experiment=team", team) == []  # no error on TAB


def test_install_registers_the_hook_for_aligntune_and_bad_specs_are_refused(workdir):
    for argv in (["-sc", "install=bash"], ["train", "-sc", "install=bash"]):
        proc = subprocess.run([sys.executable, "-m", "aligntune", *argv], capture_output=True, text=True, cwd=workdir)
        assert proc.returncode == 0
        assert proc.stdout.rstrip().endswith("-F hydra_bash_completion aligntune"), proc.stdout[-200:]
    proc = subprocess.run([sys.executable, "-m", "aligntune", "-sc", "query=tcsh"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "install=bash" in proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_installed_bash_hook_completes_a_team_experiment(team):
    bindir = team / "bin"
    bindir.mkdir()
    (bindir / "aligntune").write_text(f'#!/bin/sh\nexec {sys.executable} -m aligntune "$@"\n')
    (bindir / "aligntune").chmod(0o755)
    script = ('eval "$(aligntune -sc install=bash)"; COMP_LINE="aligntune train --config-dir configs experiment=team"; '
              'COMP_POINT=${#COMP_LINE}; COMP_CWORD=4; hydra_bash_completion; echo "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=team, timeout=60,
                          env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert proc.stdout.split() == ["experiment=team_exp"], proc.stdout + proc.stderr
