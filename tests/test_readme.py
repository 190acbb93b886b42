"""The README's library example runs as written and does what it says."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST is not installed (scripts/setup.sh installs it)")
def test_model_example_trains_a_step_and_reports_solver_statistics():
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.producer.time_steps == 30 and type(model.producer).__name__ == "IFProducer"
    assert type(model.adjoint.solver).__name__ == "Anderson" and model.adjoint.max_iter == 20
    assert namespace["loss"].item() > 0


def test_implicit_grad_example_runs_and_computes_implicit_gradients():
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(python_blocks()[1], "README.md", "exec"), namespace)
    assert namespace["found"].success
    assert namespace["W"].grad is not None and float(namespace["W"].grad.abs().sum()) > 0
    assert namespace["stats"][0].success


def test_quick_start_commands_exist():
    text = README.read_text(encoding="utf-8")
    root = README.parent
    for script in re.findall(r"^bash (scripts/\S+\.sh)", text, flags=re.M):
        assert (root / script).is_file(), script
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
