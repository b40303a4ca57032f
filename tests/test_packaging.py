"""The configs/ tree and shipped data travel inside the package: from an editable install and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_directory_is_declared():
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "aligntune").rglob("__init__.py")}
    found |= {"aligntune.configs" + "".join("." + part for part in d.relative_to(ROOT / "configs").parts)
              for d in [ROOT / "configs", *(p for p in (ROOT / "configs").rglob("*") if p.is_dir() and p.name != "__pycache__")]}
    assert found <= declared_packages(), sorted(found - declared_packages())


def test_editable_install_finds_configs_from_any_directory(tmp_path):
    code = "from aligntune.config import compose; print(compose.config_dir()); compose.load([])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert (Path(out.strip()) / "primary" / "train.yaml").is_file()


def test_wheel_ships_configs_and_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("aligntune-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"aligntune/configs/primary/train.yaml", "aligntune/configs/model/tiny.yaml", "aligntune/configs/experiment/smoke.yaml",
               "aligntune/configs/hydra/job_logging/aligntune.yaml", "aligntune/data/shipped/letters.jsonl"}
    assert shipped <= names, sorted(shipped - names)
    # Compose from the unpacked wheel alone (not the source tree), in an unrelated directory.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import aligntune, sys; from aligntune import preflight; from aligntune.config import compose; run, _ = preflight.load(['experiment=smoke']); "
            "print(aligntune.__file__); print(compose.config_dir()); print(run.dataset.name)")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         cwd=work, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    module, configs, dataset = out.stdout.split()
    assert module.startswith(str(site)) and configs.startswith(str(site)) and dataset == "letters"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line)
    assert command in (ROOT / ".ci" / "run").read_text()


def test_tests_mirror_the_package():
    """tests/<a>/<b>/test_x.py sits beside aligntune/<a>/<b>/: each test folder names a package folder."""
    stray = [str(d.relative_to(ROOT / "tests")) for d in (ROOT / "tests").rglob("*") if d.is_dir()
             and d.name not in ("fixtures", "__pycache__") and "fixtures" not in d.parts
             and not (ROOT / "aligntune" / d.relative_to(ROOT / "tests")).is_dir()]
    assert not stray, f"test folders without a package folder: {stray}"
