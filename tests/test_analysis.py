"""implicit_snn.analysis and `implicit-snn analyze`: the simulation against its equilibrium, backward solvers
compared on one training step, the feedback norm; the model is left exactly as it was."""

import json

import pytest
import torch

import models
from implicit_snn.analysis import compare_backward, equilibrium_gap, feedback_norm
from implicit_snn.app.cli import main

from tests.helpers import SMALL, cli_error


def trained_like_f400(seed=0):
    """A small F400-shaped model (one hidden layer, fully connected feedback) after a few SGD steps."""
    torch.manual_seed(seed)
    model = models.from_spec("32 (F32)", (1, 6, 6), 3, producer="lif", producer_options=dict(time_steps=5, leak=0.95))
    x, y = torch.rand(48, 1, 6, 6), torch.randint(0, 3, (48,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training, model.producer, model.adjoint


def assert_unchanged(model, before):
    state, training, producer, adjoint = before
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert (model.training, model.producer, model.adjoint) == (training, producer, adjoint)


@pytest.mark.slow
def test_if_rates_converge_to_the_equilibrium_and_lif_rates_stay_within_a_bounded_error():
    model, x, y = trained_like_f400()
    before = snapshot(model)
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]
    lif = equilibrium_gap(model, batches, [400])
    model.set_producer("if", {"time_steps": 5})
    before = snapshot(model)
    rows = equilibrium_gap(model, batches, [2, 10, 400])
    assert_unchanged(model, before)
    assert [r.time_steps for r in rows] == [2, 10, 400] and all(r.samples == 48 for r in rows)
    assert all(r.solve_converged == 1.0 for r in rows + lif)
    distances = [r.distance for r in rows]
    residuals = [r.fixed_point_residual for r in rows]
    # Supplement Theorem 2: IF rates converge to a* (error O(1/T)); Proposition 2: the LIF's
    # weighted rates only approach it within a bounded random error.
    assert distances[0] > distances[1] > distances[2] and distances[2] < 0.02
    assert residuals[0] > residuals[2] and residuals[2] < 0.02
    assert lif[0].distance > 2 * distances[2]
    assert rows[-1].agreement >= rows[0].agreement and 0.0 <= rows[0].agreement <= 1.0
    # The equilibrium's accuracy does not depend on T.
    assert len({r.accuracy_equilibrium for r in rows}) == 1


def test_the_gap_needs_a_spiking_producer():
    model, x, y = trained_like_f400()
    model.set_producer("analytic")
    with pytest.raises(ValueError, match="needs a spiking producer"):
        equilibrium_gap(model, [(x, y)], [5])


@pytest.mark.slow
def test_backward_solvers_compared_on_the_same_training_step():
    model, x, y = trained_like_f400()
    model.eval()  # compare_backward switches to train mode itself and restores eval after
    before = snapshot(model)
    rows, reference = compare_backward(model, x, y, ["broyden", "fixed_point"], b_max_iter=30, b_tol=1e-6)
    starved, _ = compare_backward(model, x, y, ["fixed_point"], b_max_iter=1, b_tol=1e-6)
    assert_unchanged(model, before)
    assert reference.success
    for row in rows:
        assert row.status == "SUCCESS" and row.converged == 1.0 and row.grad_error < 1e-4 and row.n_evals > 1
    # One step of plain iteration (a budget of 1): visibly wrong, and reported as not converged.
    (one,) = starved
    assert one.status != "SUCCESS" and one.converged < 1.0 and one.grad_error > 100 * max(r.grad_error for r in rows)
    # Solvers that both converged agree with each other, since they share the dropout masks and weights.
    assert abs(rows[0].grad_error - rows[1].grad_error) < 1e-4


@pytest.mark.slow
def test_feedback_norm_is_the_true_norm_for_linear_and_conv_feedback():
    model, _, _ = trained_like_f400()
    report = feedback_norm(model)
    weight = model.network.feedback.effective_weight(update=False).detach()
    assert report["operator_norm"] == pytest.approx(float(torch.linalg.matrix_norm(weight.double(), 2)), rel=1e-9)
    assert report["norm_over_vth"] == pytest.approx(report["operator_norm"] / 2.0)
    conv = models.from_spec("4C3 (F4C3)", (1, 5, 5), 3)
    report = feedback_norm(conv, iterations=300)
    op, weight = conv.network.feedback.op, conv.network.feedback.effective_weight(update=False).detach()
    # The dense matrix of the convolution on 4×5×5 inputs, and its exact norm.
    basis = torch.eye(4 * 25).reshape(-1, 4, 5, 5)
    dense = torch.nn.functional.conv2d(basis, weight, None, op.stride, op.padding).reshape(100, -1).T
    assert report["operator_norm"] == pytest.approx(float(torch.linalg.matrix_norm(dense.double(), 2)), rel=1e-3)
    reshaped = float(torch.linalg.matrix_norm(weight.reshape(4, -1).double(), 2))
    assert report["norm"] == pytest.approx(reshaped, rel=1e-9)  # the norm the default constraint holds


def test_analyze_command_reports_gap_and_solvers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    report = tmp_path / "analysis.json"
    assert main(["analyze", str(out), "--time-steps", "1", "50", "--b-solver", "broyden", "anderson",
                 "--samples", "64", "--batch-size", "32", "--threads", "1", "--json", str(report), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "simulated rates a_T against the equilibrium" in printed and "anderson" in printed
    data = json.loads(report.read_text())
    gaps = data["producers"][0]["convergence"]
    assert [g["time_steps"] for g in gaps] == [1, 50]
    assert all(g["samples"] == 64 for g in gaps)
    assert gaps[1]["distance"] < gaps[0]["distance"]
    assert [b["solver"] for b in data["backward"]] == ["broyden", "anderson"]
    assert all(b["status"] == "SUCCESS" and b["grad_error"] < 1e-4 for b in data["backward"])
    assert data["feedback"]["vth"] == 2.0


def test_analyze_rejects_the_analytic_producer(tmp_path, capsys):
    out = tmp_path / "run"
    no_time_steps = [arg for arg in SMALL if arg not in ("--time-steps", "3")]
    assert main(["train", *no_time_steps, "--epochs", "1", "--producer", "analytic", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["time_steps"] is None  # the preset's T played no part
    with pytest.raises(SystemExit, match="analyze compares the spiking simulation"):
        main(["analyze", str(out)])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A one-epoch LIF run on synthetic data (a module fixture: several analyze tests read it)."""
    out = tmp_path_factory.mktemp("analyze") / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_analyze_writes_every_section_for_each_producer_and_its_figures_in_the_run_directory(small_run, capsys):
    pytest.importorskip("matplotlib")
    assert main(["analyze", str(small_run), "--producer", "lif", "if", "--time-steps", "1", "20", "--samples", "40",
                 "--b_solver", "broyden", "spide", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((small_run / "analysis.json").read_text())
    assert report["kind"] == "analysis" and report["sections"] == ["convergence", "backward", "activity", "energy"]
    lif, if_ = report["producers"]
    assert (lif["producer"], lif["leak"], if_["producer"], if_["leak"]) == ("lif", 0.95, "if", None)
    for entry in (lif, if_):
        assert entry["time_steps"] == 3  # the run's T: activity and energy run at it
        assert [g["time_steps"] for g in entry["convergence"]] == [1, 20]
        assert entry["activity"]["samples"] == 40 and entry["energy"]["samples"] == 40
        layer = entry["activity"]["layers"][0]
        assert sum(layer["histogram"]["fraction"]) == pytest.approx(1.0) and len(layer["histogram"]["fraction"]) == 4
        names = [row["name"] for row in entry["energy"]["layers"]]
        assert names == ["input", "feedback 1→1", "readout"]
        steps = {row["solver"]: row for row in entry["energy"]["training_step"]}
        assert set(steps) == {"phantom", "broyden", "spide"} and steps["spide"]["backward"]["spikes"] > 0
    # IF's gap falls further than LIF's by T = 20 (Theorem 2 against Proposition 2).
    assert if_["convergence"][1]["distance"] < lif["convergence"][1]["distance"]
    for figure in ("convergence", "activity", "energy"):
        assert (small_run / f"analysis-{figure}.png").read_bytes().startswith(b"\x89PNG")
    assert "LIF (λ=0.95): activity per layer at T=3" in printed and "IF: operations and energy per sample" in printed
    assert "one training step per sample" in printed


def test_analyze_runs_only_the_sections_asked_for(small_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(small_run), "--sections", "activity", "--samples", "16", "--out", str(out),
                 "--no-plots"]) == 0
    report = json.loads((out / "analysis.json").read_text())
    (entry,) = report["producers"]
    assert set(entry) == {"producer", "leak", "time_steps", "activity"} and "backward" not in report
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json"]  # --no-plots: the JSON only
    assert "simulated rates a_T" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--producer", "if", "--leak", "0.9"], "error: --leak does not apply to the if producer, only to lif"),
    (["--producer", "lif", "lif"], "--producer lists a producer twice"),
    (["--json", "a.json", "--out", "b"], "give --json FILE or --out DIR, not both"),
    (["--energy-per-sop", "-1"], "argument --energy-per-sop"),
    (["--sections", "speed"], "argument --sections"),
])
def test_analyze_refuses_bad_settings_in_one_line(small_run, capsys, argv, message):
    assert message in cli_error(["analyze", str(small_run), *argv], capsys)


def test_eval_sweep_draws_accuracy_and_firing_rate_against_t(small_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    report = tmp_path / "sweep.json"
    assert main(["eval", str(small_run), "--time-steps", "1", "3", "8", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["kind"] == "eval" and [r["time_steps"] for r in data["results"]] == [1, 3, 8]
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    single = tmp_path / "one.json"
    assert main(["eval", str(small_run), "--json", str(single)]) == 0
    assert not (tmp_path / "one.png").exists()  # one T is not a sweep


def test_analyze_on_spike_input_runs_at_the_trained_t_and_counts_input_events(tmp_path, capsys):
    from tests.helpers import write_nmnist

    write_nmnist(tmp_path / "NMNIST")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "nmnist", "--data-root", str(tmp_path), "--model", "8 (F8)", "--val-size", "0",
                 "--epochs", "1", "--batch-size", "2", "--time-steps", "4", "--threads", "1", "--out", str(out)]) == 0
    assert main(["analyze", str(out), "--sections", "activity", "energy", "--time-steps", "2", "9", "--split", "train",
                 "--b_solver", "broyden", "--no-plots"]) == 0
    (entry,) = json.loads((out / "analysis.json").read_text())["producers"]
    # The data are binned into 9 frames for the longest T, but the producer runs the trained 4.
    assert entry["time_steps"] == 4 and entry["activity"]["time_steps"] == 4
    assert len(entry["activity"]["layers"][0]["histogram"]["fraction"]) == 5
    energy = entry["energy"]
    assert energy["input"] == "spikes" and energy["layers"][0]["spikes_per_sample"] is not None
    assert energy["layers"][0]["dense_macs_per_sample"] == 4 * energy["layers"][0]["synapses"]
    # The test split holds one sample: too few for a training step with batch norm, said in one line.
    message = cli_error(["analyze", str(out), "--sections", "energy", "--no-plots"], capsys)
    assert "the backward and energy sections run a training step, which needs at least 2 samples" in message
