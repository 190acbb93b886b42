"""The command line lists what is registered and runs the demo; bad flags get one-line errors."""

import pytest

from implicit_snn.app.cli import main
from tests.helpers import cli_error


def test_solvers_lists_every_solver_and_producer(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("broyden", "anderson", "fixed_point", "neumann", "exact", "torchdeq_anderson", "analytic"):
        assert name in out


def test_demo_reports_converged_backward_solves(capsys):
    assert main(["demo", "--dim", "40", "--batch-size", "4", "--b_solver", "broyden", "fixed_point",
                 "--b-max-iter", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count("SUCCESS") == 2


@pytest.mark.parametrize("argv, message", [
    (["demo", "--b_solver", "broydn"], "invalid choice: 'broydn'"),
    (["demo", "--b_tol", "-1"], "must be a number > 0"),
    (["demo", "--norm", "1.5"], "--norm must be below 1"),
])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    assert message in cli_error(argv, capsys)


def test_models_lists_presets_with_the_papers_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for text in ("f400", "478,811", "1,184", "f64c5_nmnist", "20,808", "290,763", "cifarnet_f", "11,840,011"):
        assert text in out
