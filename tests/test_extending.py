"""docs/extending.md runs as written: every Python block of it is executed, and its checks hold.

The page is split into sections at its ``## `` headings. The blocks of one section run in order in
one shared namespace, fresh for each section: a section's later blocks use the classes and
imports of its first (the plugin code, then the example that checks it), as a reader runs them in
one session, while no section depends on another, so that each can be read and copied alone.
The examples end in ``assert`` lines on real values (a solver reaching a known fixed point, an
equilibrium satisfying a = f(a), a gradient against a finite difference, a CLI epoch's summary);
an example that fails raises here. Whatever a section registers is removed afterwards (as in
tests/test_registry.py and tests/test_data.py), so the registries are as the packages left them.

Two kinds of block are files rather than code to run in this process: the ``# run_cli.py``
launcher, and the ``# my_plugin.py`` blocks, which also run in their section and together make
``my_plugin.py``. The last section's test writes both files to a temporary folder and runs the
page's ``python run_cli.py ...`` command lines there in a fresh process, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

import models
import solvers
from implicit_snn import data, producers
from implicit_snn.data._registry import DATASETS
from implicit_snn.producers._registry import PRODUCERS
from models._registry import MODELS
from solvers._registry import SOLVERS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", flags=re.S | re.M)
PLUGIN, LAUNCHER = "# my_plugin.py", "# run_cli.py"

# Each registry, how to list its names and how to forget one.
REGISTRIES = {
    "solver": (solvers.available_solvers, SOLVERS.remove),
    "producer": (producers.available_producers, PRODUCERS.remove),
    "model": (models.available_models, MODELS.remove),
    "dataset": (data.available_datasets, DATASETS.remove),
}
# What each section's example registers (and must have registered).
REGISTERS = {
    "1": {"solver": {"secant"}},
    "2": {"producer": {"lif_polished"}},
    "3": {"model": {"tanh64"}},
    "4": {"dataset": {"bars"}},
    "5": {},
}


def sections() -> dict[str, list[tuple[str, str]]]:
    """Section number (the heading's first word, "1." → "1") → its fenced blocks as (language, code)."""
    text = PAGE.read_text(encoding="utf-8")
    out: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        out[heading.split()[0].rstrip(".")] = FENCE.findall(body)
    return out


def python_blocks(section: str) -> list[str]:
    return [code for language, code in sections()[section] if language == "python"]


def runnable(section: str) -> list[str]:
    """The blocks of ``section`` that run in this process: every Python block but the launcher file."""
    return [code for code in python_blocks(section) if not code.startswith(LAUNCHER)]


@pytest.fixture
def clean_registries():
    """Forget every name registered during the test; then the registries must be as before."""
    before = {kind: set(names()) for kind, (names, _) in REGISTRIES.items()}
    yield before
    for kind, (names, remove) in REGISTRIES.items():
        for name in set(names()) - before[kind]:
            remove(name)
        assert set(names()) == before[kind], kind


def test_every_python_block_is_run_or_written():
    """The extractor misses no block: as many as the page has ```python fences, each with a check."""
    text = PAGE.read_text(encoding="utf-8")
    found = [code for section in sections() for code in python_blocks(section)]
    assert len(found) == text.count("```python") == 10
    run = [code for section in sections() for code in runnable(section)]
    assert len(run) == len(found) - 1  # all but run_cli.py
    assert sorted(REGISTERS) == [s for s in sections() if runnable(s)]
    for section in REGISTERS:
        # Each section's last block checks what the section shows; plugin code is not a check.
        last = runnable(section)[-1]
        assert not last.startswith(PLUGIN) and "assert " in last, section


@pytest.mark.parametrize("section", sorted(REGISTERS))
def test_section_runs_and_its_checks_hold(section, clean_registries, tmp_path, monkeypatch):
    # Anything an example writes, by a relative path or in tempfile's folders, lands in tmp_path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # A real module, as a reader's script is (dataclasses look their module up in sys.modules).
    module = types.ModuleType(f"extending_section_{section}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for index, code in enumerate(runnable(section)):
        # dont_inherit: the blocks run without this file's `from __future__ import annotations`.
        exec(compile(code, f"{PAGE.name}, section {section}, block {index + 1}", "exec", dont_inherit=True),
             module.__dict__)
    for kind, (names, _) in REGISTRIES.items():
        added = set(names()) - clean_registries[kind]
        assert added == REGISTERS[section].get(kind, set()), (kind, added)


@pytest.mark.slow
def test_the_command_line_runs_with_the_plugin(tmp_path):
    """run_cli.py and my_plugin.py as the page builds them; the page's commands, in a fresh process."""
    blocks = [code for section in sections() for code in python_blocks(section)]
    plugin = "\n\n".join(code for code in blocks if code.startswith(PLUGIN))
    (launcher,) = [code for code in blocks if code.startswith(LAUNCHER)]
    (tmp_path / "my_plugin.py").write_text(plugin, encoding="utf-8")
    (tmp_path / "run_cli.py").write_text(launcher, encoding="utf-8")
    commands = [line for language, code in sections()["6"] if language == "bash"
                for line in code.splitlines() if line.startswith("python run_cli.py ")]
    assert len(commands) == 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def run(argv: list[str]) -> str:
        done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    listed = run(["run_cli.py", "solvers"])
    assert "secant" in listed and "lif_polished" in listed
    for command in commands:
        argv = shlex.split(command)[1:]
        out = run(argv)
        run_dir = tmp_path / argv[argv.index("--out") + 1]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["epochs"] == 1 and 0 <= summary["final_test_acc"] <= 1, out
        assert "final test accuracy" in out
    config = json.loads((tmp_path / "runs" / "tanh64" / "config.json").read_text())
    assert (config["model"], config["producer"], config["f_solver"], config["b_solver"]) == (
        "tanh64", "analytic", "secant", "secant")
    config = json.loads((tmp_path / "runs" / "polished" / "config.json").read_text())
    assert (config["producer"], config["time_steps"]) == ("lif_polished", 5)
    # The page's claim: the plugin model's checkpoint is evaluated by a process that imported the plugin.
    assert "accuracy" in run(["run_cli.py", "eval", "runs/tanh64"])
