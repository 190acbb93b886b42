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
