"""The layering is a checked contract (import-linter, configured in pyproject.toml): solvers ←
library core ← models ← the application; a planted upward import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("solvers", "implicit_snn", "models")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages found first in ``tree``, with the project's contracts."""
    linter = Path(sys.executable).parent / "lint-imports"
    if not linter.exists():
        pytest.skip("import-linter is not installed (pip install 'implicit-snn[test]')")
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(linter), str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=tree,
                          env=env, timeout=120)


def test_the_tree_keeps_its_layering_contracts():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module, planted", [
    ("solvers/_driver.py", "import implicit_snn.network"),
    ("implicit_snn/network.py", "import models"),
    ("implicit_snn/training.py", "from implicit_snn.app import rundir"),
    ("models/_spec.py", "import implicit_snn.app.config"),
])
def test_a_planted_upward_import_breaks_a_contract(tmp_path, module, planted):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{planted}  # planted\n", encoding="utf-8")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1 and "BROKEN" in proc.stdout, proc.stdout + proc.stderr


def test_importing_the_library_loads_nothing_of_the_application():
    proc = subprocess.run([sys.executable, "-c", "import sys, implicit_snn, solvers; "
                           "print(sorted(m for m in sys.modules if m.startswith(('implicit_snn.app', 'models'))))"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "[]", proc.stderr
