"""A research project's own models.py or solvers.py beside implicit-snn's top-level packages."""

from __future__ import annotations

import subprocess
import sys


def _user_project(tmp_path):
    (tmp_path / "models.py").write_text('raise RuntimeError("the project\'s own models.py was imported")\n')
    (tmp_path / "solvers.py").write_text("SOLVER = 'mine'\n")
    return tmp_path


def test_the_commands_ignore_a_models_py_in_the_working_directory(tmp_path):
    project = _user_project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "implicit_snn", "solvers"], capture_output=True, text=True, cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "broyden" in proc.stdout and "analytic" in proc.stdout


def test_importing_the_library_beside_a_solvers_py_says_what_hides_what(tmp_path):
    project = _user_project(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import implicit_snn"], capture_output=True, text=True, cwd=project)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: `import solvers` finds {project / 'solvers.py'}, not implicit-snn's solvers")
    assert "rename that module or work from another directory" in last


def test_the_library_imports_nothing_of_the_application():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "implicit_snn"
    # __main__ is the `python -m implicit_snn` entry point: the application's, not the library's.
    library = [p for p in root.rglob("*.py") if "app" not in p.relative_to(root).parts and p.name != "__main__.py"]
    assert len(library) > 20
    for path in library:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [alias.name for alias in node.names]
            for name in names:
                assert not name.startswith(("implicit_snn.app", "models")) and name.lstrip(".") != "app" \
                    and not name.lstrip(".").startswith("app."), f"{path.relative_to(root)} imports {name}"
    proc = subprocess.run([sys.executable, "-c", "import sys, implicit_snn; "
                           "print(sorted(m for m in sys.modules if m.startswith(('implicit_snn.app', 'models'))))"],
                          capture_output=True, text=True, cwd=root.parent)
    assert proc.stdout.strip() == "[]", proc.stderr
