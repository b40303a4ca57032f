"""`aligntune/config/` is a leaf: of aligntune it imports only `aligntune.errors` (DESIGN.md), and never torch.

Checked twice: statically (every import statement in config/, function-local ones included, since the old cycles
hid in lazy imports) and at run time (a fresh interpreter imports every config module and composes configs of
every backend, then lists what got imported)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import aligntune

CONFIG = Path(aligntune.__file__).parent / "config"
ALLOWED = ("aligntune.errors", "aligntune.config")


def _allowed(module: str) -> bool:
    return module == "aligntune" or any(module == a or module.startswith(a + ".") for a in ALLOWED)


def test_config_modules_import_nothing_of_aligntune_but_errors():
    found = []
    for path in sorted(CONFIG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] if node.module != "aligntune" else [f"aligntune.{a.name}" for a in node.names]
            else:
                continue
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.startswith("aligntune") and not _allowed(n)]
    assert not found, "aligntune/config/ must stay a leaf:\n" + "\n".join(found)


def test_composing_loads_no_other_aligntune_package_and_no_torch():
    modules = sorted(p.stem for p in CONFIG.glob("*.py") if p.stem != "__init__")
    assert {"compose", "schema", "aliases"} <= set(modules)
    code = "\n".join([
        "import importlib, json, sys",
        *[f"importlib.import_module('aligntune.config.{m}')" for m in modules],
        "from aligntune.config import compose",
        "for overrides in ([], ['algorithm=dpo'], ['algorithm=ppo', 'logger=tensorboard'], ['backend=verl'],",
        "                  ['experiment=smoke']):",
        "    compose.load(overrides)",
        "print(json.dumps(sorted(sys.modules)))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.splitlines()[-1])
    # aligntune.configs is the data package holding the shipped YAML (searchpath.shipped_dir finds it)
    outside = [m for m in loaded if m.startswith("aligntune") and not _allowed(m) and m != "aligntune.configs"]
    assert not outside, f"composing imported {outside}"
    assert "torch" not in loaded
