"""`implicit-snn plot` on the JSON reports of analyze and eval: the series drawn, the files, the errors."""

import json
import math
import sys
from pathlib import Path

import pytest

from implicit_snn.app import figures
from implicit_snn.app.cli import main
from tests.helpers import cli_error

RUNS = Path(__file__).resolve().parent.parent / "docs" / "runs"
ANALYZE = RUNS / "repro-f400-lif-seed0" / "analysis.json"  # LIF and IF on the same weights
EVAL_T = RUNS / "repro-f400-lif-noval-seed0" / "eval-time-steps.json"
EVAL_IF = RUNS / "repro-f400-lif-noval-seed0" / "eval-if.json"
EVAL_ANALYTIC = RUNS / "repro-f400-lif-noval-seed0" / "eval-analytic.json"
MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
STEPS = [1, 2, 5, 10, 30, 100]


def activity():
    def layer(number, counts):
        total = sum(counts)
        return {"layer": number, "shape": [4], "neurons": 4, "firing_rate": 0.1 * number, "silent": counts[0] / total,
                "saturated": counts[-1] / total, "never_firing": 0.0, "always_saturated": 0.0, "spikes_per_sample": 1.0,
                "histogram": {"spike_counts": list(range(len(counts))), "fraction": [c / total for c in counts]}}

    return {"samples": 8, "time_steps": 5, "layers": [layer(1, [6, 2, 1, 1, 0, 0]), layer(2, [2, 2, 2, 2, 1, 1])]}


def energy():
    def layer(name, sops, macs, ann_macs):
        return {"name": name, "kind": "linear", "pre": "?", "post": "?", "synapses": ann_macs, "spikes_per_sample": 1.0,
                "sops_per_sample": sops, "macs_per_sample": macs, "ann_macs_per_sample": ann_macs,
                "energy_pj": sops * 0.9 + macs * 4.6, "ann_energy_pj": ann_macs * 4.6}

    layers = [layer("input", 0.0, 313600.0, 313600.0), layer("feedback", 80000.0, 0.0, 160000.0),
              layer("hidden", 20000.0, 0.0, 40000.0), layer("readout", 4000.0, 0.0, 4000.0)]
    snn, ann = sum(row["energy_pj"] for row in layers), sum(row["ann_energy_pj"] for row in layers)
    return {"samples": 8, "time_steps": 5, "input": "constant", "energy_per_sop_pj": 0.9, "energy_per_mac_pj": 4.6,
            "layers": layers, "total": {"energy_pj": snn, "ann_energy_pj": ann, "ann_over_snn": ann / snn}}


def analysis(*, convergence=True, with_activity=True, with_energy=True):
    lif = {"producer": "lif", "leak": 0.95, "time_steps": 5}
    ide = {"producer": "if", "leak": None, "time_steps": 5}
    if convergence:
        lif["convergence"] = [{"time_steps": t, "distance": 0.6 / t ** 0.5, "fixed_point_residual": 0.9 / t ** 0.5}
                              for t in STEPS]
        ide["convergence"] = [{"time_steps": t, "distance": 1.0 / t, "fixed_point_residual": 2.0 / t} for t in STEPS]
    if with_activity:
        lif["activity"] = activity()
    if with_energy:
        lif["energy"] = energy()
    return {"kind": "analysis", "checkpoint": "runs/x/checkpoint-best.pt", "model": "f400", "dataset": "fashion-mnist",
            "split": "test", "device": "cpu", "trained_time_steps": 5, "producers": [lif, ide], "backward": []}


def old_format(entry):
    """A report as analyze wrote it before it had sections: one producer, its rows as "equilibrium_gap"."""
    return {"checkpoint": "docs/runs/repro-f400-lif-seed0/checkpoint-best.pt", "producer": entry["producer"],
            "equilibrium_gap": entry["convergence"], "feedback": {}, "backward": []}


def check_figure(path, fmt):
    path = Path(path)
    assert path.read_bytes().startswith(MAGIC[fmt]) and path.stat().st_size > 1000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_report_kinds_new_and_old():
    assert figures.report_kind(analysis()) == "analysis"
    old = old_format(json.loads(ANALYZE.read_text())["producers"][0])
    assert figures.report_kind(old) == "analysis"  # no "kind": equilibrium_gap
    assert figures.report_kind(json.loads(EVAL_T.read_text())) == "eval"  # no "kind": results
    assert figures.report_kind({"kind": "eval", "results": []}) == "eval"
    with pytest.raises(ValueError, match="neither an analysis report"):
        figures.report_kind({"checkpoint": "x"})
    with pytest.raises(ValueError, match="unknown report kind 'train'"):
        figures.report_kind({"kind": "train"})


def test_convergence_series_labels_and_the_one_over_t_guide():
    lines = figures.convergence_series([analysis()])
    assert [line.label for line in lines] == ["LIF (λ=0.95)", "IF"]
    assert lines[1].time_steps == STEPS and lines[1].distance == pytest.approx([1.0 / t for t in STEPS])
    assert lines[0].residual == pytest.approx([0.9 / t ** 0.5 for t in STEPS])
    # The guide runs through the IF line's point at its largest T, although LIF comes first.
    ends, distance, residual = figures.one_over_t_reference(lines)
    assert ends == [1, 100] and distance == pytest.approx([1.0, 0.01]) and residual == pytest.approx([2.0, 0.02])
    # Several reports: the given labels go in front; the same producer twice is told apart by its run.
    named = figures.convergence_series([analysis(), analysis()], labels=["seed 0", "seed 1"])
    assert [line.label for line in named] == ["seed 0: LIF (λ=0.95)", "seed 0: IF",
                                              "seed 1: LIF (λ=0.95)", "seed 1: IF"]
    other = analysis() | {"checkpoint": "runs/y/checkpoint-best.pt"}
    assert [line.label for line in figures.convergence_series([analysis(), other])][::2] == \
        ["x: LIF (λ=0.95)", "y: LIF (λ=0.95)"]


def test_an_old_analysis_report_is_one_producer_entry():
    lif_entry, if_entry = json.loads(ANALYZE.read_text())["producers"]
    old = old_format(if_entry)
    (line,) = figures.convergence_series([old])
    assert line.label == "IF" and line.time_steps == [row["time_steps"] for row in old["equilibrium_gap"]]
    assert line.distance[-1] == old["equilibrium_gap"][-1]["distance"]
    lif, ide = figures.convergence_series([old_format(lif_entry), old])
    assert lif.label == "LIF"  # the old report does not state the leak
    assert figures.one_over_t_reference([lif, ide])[0] == [1, 1000]


def test_time_steps_series_is_accuracy_in_percent_per_report():
    lif, ide = figures.time_steps_series([json.loads(EVAL_T.read_text()), json.loads(EVAL_IF.read_text())])
    assert (lif.label, ide.label) == ("LIF", "IF")
    assert [line.label for line in figures.time_steps_series([json.loads(EVAL_IF.read_text())] * 2, ["a", "b"])] == \
        ["a", "b"]
    assert lif.time_steps == [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50]
    assert lif.accuracy[0] == pytest.approx(29.99) and ide.time_steps == [5, 30]
    assert ide.firing_rate[0] == pytest.approx(0.13199915260076522)


def test_activity_series_is_the_firing_rate_distribution():
    (panel,) = figures.activity_series(analysis())  # IF has no activity section
    assert panel.label == "LIF (λ=0.95)" and panel.layers == ["layer 1", "layer 2"]
    assert panel.firing_rate == [0.1, 0.2] and panel.silent == [0.6, 0.2]
    rates, shares = panel.histograms[0]
    assert rates == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0]) and shares == pytest.approx([60, 20, 10, 10, 0, 0])


def test_energy_bars_split_sop_and_mac_energy_in_nanojoules():
    (panel,) = figures.energy_bars(analysis())
    assert panel.names == ["input", "feedback", "hidden", "readout"]
    assert panel.sop_nj == pytest.approx([0.0, 80000 * 0.9 / 1e3, 20000 * 0.9 / 1e3, 4000 * 0.9 / 1e3])
    assert panel.mac_nj == pytest.approx([313600 * 4.6 / 1e3, 0.0, 0.0, 0.0])
    assert panel.ann_nj[1] == pytest.approx(160000 * 4.6 / 1e3)
    assert panel.total_nj == pytest.approx(sum(panel.sop_nj) + sum(panel.mac_nj))
    assert panel.ann_over_snn == pytest.approx(panel.ann_total_nj / panel.total_nj)
    assert (panel.energy_per_sop_pj, panel.energy_per_mac_pj) == (0.9, 4.6)


def test_each_figure_is_written_in_its_format(tmp_path):
    pytest.importorskip("matplotlib")
    report = analysis()
    evals = [json.loads(EVAL_T.read_text()), json.loads(EVAL_IF.read_text())]
    # Each format once per figure over this test and the command-line one, to keep the tests quick.
    for name, fmt, draw in [("convergence", "pdf", lambda out: figures.plot_convergence([report], out, title="t")),
                            ("time-steps", "svg", lambda out: figures.plot_time_steps(evals, out)),
                            ("activity", "png", lambda out: figures.plot_activity(report, out)),
                            ("energy", "pdf", lambda out: figures.plot_energy(report, out))]:
        out = tmp_path / name / f"figure.{fmt}"
        assert draw(out) == out
        check_figure(out, fmt)


@pytest.mark.parametrize("sections, expected", [
    ({}, ["convergence", "activity", "energy"]),
    ({"with_activity": False}, ["convergence", "energy"]),
    ({"convergence": False, "with_energy": False}, ["activity"]),
    ({"convergence": False, "with_activity": False, "with_energy": False}, []),
])
def test_write_report_figures_writes_the_figures_its_sections_allow(tmp_path, sections, expected):
    if expected:
        pytest.importorskip("matplotlib")
    paths = figures.write_report_figures(analysis(**sections), tmp_path / "runs" / "analysis.v2", fmt="svg")
    assert paths == [tmp_path / "runs" / f"analysis.v2-{name}.svg" for name in expected]
    assert sorted(p.name for p in (tmp_path / "runs").glob("*")) == sorted(p.name for p in paths)
    for path in paths:
        check_figure(path, "svg")


def test_the_plot_command_draws_the_committed_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "convergence.png"
    assert main(["plot", str(ANALYZE), "--out", str(out)]) == 0
    check_figure(out, "png")
    lif, if_ = figures.convergence_series([json.loads(ANALYZE.read_text())])
    assert (lif.label, if_.label) == ("LIF (λ=0.95)", "IF") and if_.time_steps[-1] == 1000
    # IF's distance falls like 1/T (within 10% over the last decade); LIF's levels off.
    assert if_.distance[-1] * 1000 == pytest.approx(if_.distance[if_.time_steps.index(100)] * 100, rel=0.1)
    assert lif.distance[-1] > 0.5 * lif.distance[lif.time_steps.index(100)]
    out = tmp_path / "time-steps.pdf"
    assert main(["plot", str(EVAL_T), str(EVAL_IF), "--out", str(out), "--labels", "LIF T-sweep", "IF"]) == 0
    check_figure(out, "pdf")
    report = tmp_path / "analysis.json"
    report.write_text(json.dumps(analysis()))
    for name, fmt in [("activity", "svg"), ("energy", "svg"), ("convergence", "svg"), ("time-steps", "png")]:
        out = tmp_path / f"{name}.{fmt}"
        source = str(EVAL_T) if name == "time-steps" else str(report)
        assert main(["plot", source, "--figure", name, "--out", str(out)]) == 0
        check_figure(out, fmt)
    assert "wrote" in capsys.readouterr().out


def test_plot_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"epochs": 3}))
    plain = tmp_path / "analysis.json"
    plain.write_text(json.dumps(analysis(convergence=False, with_activity=False, with_energy=False)))
    ANALYZE_LIF, ANALYZE_IF = tmp_path / "old-lif.json", tmp_path / "old-if.json"
    for path, entry in zip((ANALYZE_LIF, ANALYZE_IF), json.loads(ANALYZE.read_text())["producers"]):
        path.write_text(json.dumps(old_format(entry)))
    out = str(tmp_path / "x.png")
    cases = [
        ([str(run), str(EVAL_T)], f"{run} is a run directory but {EVAL_T} is a JSON report"),
        ([str(EVAL_T), str(ANALYZE_LIF)], "the reports mix analysis and eval reports"),
        ([str(EVAL_T), "--figure", "convergence"], "--figure convergence draws analysis reports; got eval report(s)"),
        ([str(ANALYZE_LIF), "--figure", "time-steps"], "--figure time-steps draws eval reports; got analysis"),
        ([str(ANALYZE_LIF), "--figure", "curves"], "--figure curves draws run directories"),
        ([str(run), "--figure", "energy"], "--figure energy draws JSON reports of analyze/eval, not run directories"),
        ([str(ANALYZE_LIF), str(ANALYZE_IF), "--figure", "activity"],
         "--figure activity draws one analysis report, got 2"),
        ([str(ANALYZE_LIF), "--figure", "energy"], "the analysis report has no energy section"),
        ([str(ANALYZE_LIF), "--figure", "activity"], "the analysis report has no activity section"),
        ([str(plain)], "no report has convergence rows"),
        ([str(EVAL_T), str(EVAL_ANALYTIC)], "report 2 (analytic) has no time steps (an analytic evaluation)"),
        ([str(EVAL_IF), "--labels", "a", "b"], "2 label(s) for 1 report(s)"),
        ([str(ANALYZE_LIF), "--metrics", "test_acc"], "--metrics chooses the curves of run directories"),
        ([str(bad)], f"report {bad}: not valid JSON"),
        ([str(other)], f"report {other}: neither an analysis report"),
        ([str(tmp_path / "missing.json")], f"report {tmp_path / 'missing.json'}: no such file"),
        ([str(ANALYZE_LIF), "--figure", "bars"], "invalid choice: 'bars'"),
    ]
    for argv, message in cases:
        assert message in cli_error(["plot", *argv, "--out", out], capsys), argv
    assert not list(tmp_path.glob("x.*"))


def test_a_sweep_needs_two_time_steps_and_reports_need_sections():
    with pytest.raises(ValueError, match="1 time-step value"):
        figures.time_steps_series([json.loads(EVAL_IF.read_text()) | {"results": [{"time_steps": 5, "acc": 0.9}]}])
    with pytest.raises(ValueError, match="needs an analysis report"):
        figures.energy_bars(json.loads(EVAL_T.read_text()))
    broken = analysis()
    broken["producers"][0]["energy"]["layers"][1]["sops_per_sample"] = math.nan
    with pytest.raises(ValueError, match="feedback: sops_per_sample is nan; allowed: a finite number"):
        figures.energy_bars(broken)
    with pytest.raises(ValueError, match="unknown figure format 'jpg'"):
        figures.write_report_figures(analysis(), "x", fmt="jpg")


def test_a_missing_matplotlib_is_named_for_reports_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = cli_error(["plot", str(ANALYZE), "--out", str(tmp_path / "x.png")], capsys)
    assert "plotting needs matplotlib: pip install 'implicit-snn[plot]'" in message
    assert not list(tmp_path.iterdir())
