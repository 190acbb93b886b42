"""What the command line does with bad input, with bugs and with its own output: usage errors are
one line naming the flag, anything else keeps its traceback, a log file gets one line per epoch."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import solvers
from implicit_snn.app.build import model_from_config
from implicit_snn.app.cli import main
from implicit_snn.app.config import resolve
from implicit_snn.app.errors import UsageError, flag_message
from implicit_snn.producers import Equilibrium, Producer, register_producer
from implicit_snn.producers._registry import PRODUCERS
from tests.helpers import SMALL, cli_error


@pytest.fixture
def buggy_producer():
    """A user's producer whose simulation has a bug (a TypeError inside its __call__)."""
    @dataclasses.dataclass(frozen=True)
    class Buggy(Producer):
        time_steps: int = 5

        def __call__(self, network, x) -> Equilibrium:
            return len(x) + "steps"  # the bug: int + str

    register_producer("test_buggy")(Buggy)
    yield "test_buggy"
    PRODUCERS.remove("test_buggy")


def test_a_bug_in_a_users_producer_keeps_its_traceback(buggy_producer, tmp_path):
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", *SMALL, "--producer", buggy_producer, "--epochs", "1", "--out", str(tmp_path / "run")])


def test_debug_shows_the_traceback_of_a_usage_error_too(tmp_path, capsys):
    argv = ["train", "--model", "f4000", "--out", str(tmp_path / "x")]
    assert cli_error(argv, capsys).startswith("error: unknown model 'f4000'")
    with pytest.raises(UsageError, match="unknown model 'f4000'"):
        main(["--debug", *argv])


def test_library_argument_names_become_flags():
    settings = {"batch_size", "b_max_iter", "time_steps", "leak"}
    assert flag_message("`batch_size` 1 is too small; `b_max_iter` too", settings) == \
        "--batch-size 1 is too small; --b_max_iter too"
    assert flag_message("set `root` to DIR; `b_solver` and `b_options`", settings | {"b_solver", "b_options"}) == \
        "set --data-root to DIR; --b_solver and --b_options"
    assert flag_message("`backward` is no setting", settings) == "`backward` is no setting"  # no old names
    assert flag_message("`not_a_setting` stays", settings) == "`not_a_setting` stays"


def test_every_driver_option_reaches_the_backward_from_the_run_settings():
    options = {"check_every": 7, "throw": True, "return_best": False, "divergence_factor": 10.0, "memory": 5}
    model = model_from_config(resolve({}, {"b_solver": "broyden", "b_options": options}), num_classes=10)
    assert model.adjoint.call_options == {k: v for k, v in options.items() if k != "memory"}
    assert model.adjoint.solver.memory == 5
    with pytest.raises(solvers.ConvergenceError):  # throw=True from --b_options raises, as asked
        x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        model.set_backward("broyden", b_max_iter=1, b_tol=1e-12, b_options={"throw": True})
        torch.nn.functional.cross_entropy(model.train()(x), y).backward()


def test_an_unknown_backward_option_is_one_line_listing_what_is_accepted(tmp_path, capsys):
    message = cli_error(["train", *SMALL, "--b_solver", "broyden", "--b_options", "memroy=5", "--out", str(tmp_path / "x")], capsys)
    assert "memroy" in message and "memory" in message and "check_every" in message and "throw" in message


def test_one_epoch_is_one_line_in_a_log_file(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and len(epochs[0]) > 120  # longer than the console's width, yet not wrapped
    assert all(" | test " in line and line.endswith("img/s)") for line in epochs)
    assert len(lines) == 4  # the start line, two epochs, the final accuracy


def test_analyze_measures_exactly_the_samples_asked_for(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    report = tmp_path / "analyze.json"
    assert main(["analyze", str(out), "--samples", "37", "--batch-size", "16", "--time-steps", "2",
                 "--b_solver", "broyden", "--repeats", "1", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["producers"][0]["convergence"][0]["samples"] == 37


def test_a_solve_setting_passed_as_an_option_says_which_flag_sets_it(tmp_path, capsys):
    message = cli_error(["train", *SMALL, "--b_options", "max_iter=2", "--out", str(tmp_path / "x")], capsys)
    assert "`max_iter` is not an option but a setting of the solve itself (--b_max_iter" in message
