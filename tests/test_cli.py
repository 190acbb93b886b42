"""The command line lists what is registered and runs the demo; bad flags get one-line errors."""

import math

import pytest

import models
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


# The paper's neurons plus input units, and the reference implementation's trainable parameters
# for 10 classes (both counted outside this library), with each preset's input shape.
PAPER_COUNTS = {
    "f400": ((1, 28, 28), 1_184, 478_811), "f64c5": ((1, 28, 28), 13_328, 229_643),
    "f64c5_nmnist": ((2, 34, 34), 20_808, 290_763), "alexnet_f": ((3, 32, 32), 158_720, 3_709_515),
    "cifarnet_f": ((3, 32, 32), 232_448, 11_840_011),
}


def test_models_lists_presets_with_the_papers_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0]:  # a preset's first line (the network column may wrap onto more)
            name, neurons, with_inputs, params = cells[0], cells[3], cells[4], cells[5]
            rows[name] = tuple(int(n.replace(",", "")) for n in (neurons, with_inputs, params))
    assert set(rows) == set(PAPER_COUNTS) | set(models.available_models())
    for name, (in_shape, with_inputs, params) in PAPER_COUNTS.items():
        assert rows[name] == (with_inputs - math.prod(in_shape), with_inputs, params), name
