"""The README's library example runs as written and does what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs_and_computes_implicit_gradients():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["found"].success
    assert namespace["W"].grad is not None and float(namespace["W"].grad.abs().sum()) > 0
    assert namespace["stats"][0].success


def test_quick_start_commands_exist():
    text = README.read_text(encoding="utf-8")
    root = README.parent
    for script in re.findall(r"^bash (scripts/\S+\.sh)", text, flags=re.M):
        assert (root / script).is_file(), script
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
