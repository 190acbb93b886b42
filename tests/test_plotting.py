"""`implicit-snn plot`: per-epoch curves from metrics.jsonl, its choices and its errors."""

import json
import math
import sys

import pytest

from implicit_snn.app import plotting
from implicit_snn.app.cli import main


def write_run(folder, rows):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "a", [{"epoch": e, "test_acc": 0.8 + 0.01 * e, "train_loss": 1.0 / e,
                                    "backward_evals_mean": 10.0, "firing_rate": 0.15, "val_acc": 0.85}
                                   for e in range(1, 4)])
    b = write_run(tmp_path / "b", [{"epoch": 1, "test_acc": 0.9, "train_loss": math.nan}])  # e.g. an imported log
    return a, b


def test_series_are_percentages_and_skip_missing_or_non_finite_values(two_runs):
    a, b = (plotting.read_metrics(d) for d in two_runs)
    assert plotting._series(a, "test_acc") == ([1, 2, 3], pytest.approx([81.0, 82.0, 83.0]))
    assert plotting._series(a, "train_loss") == ([1, 2, 3], pytest.approx([1.0, 0.5, 1 / 3]))
    assert plotting._series(b, "train_loss") == ([], [])
    assert plotting._series(b, "val_acc") == ([], [])


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_plot_writes_the_figure_in_the_suffix_format(two_runs, tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs" / f"curves{suffix}"
    assert main(["plot", *map(str, two_runs), "--out", str(out), "--metrics", "test_acc", "val_acc",
                 "--labels", "first", "second", "--title", "two runs"]) == 0
    assert out.read_bytes().startswith(magic) and out.stat().st_size > 1000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.jpg"], "unknown format '.jpg'; use .png, .pdf, .svg"),
    (["--out", "x.png", "--labels", "one"], "1 label(s) for 2 run(s)"),
    (["--out", "x.png", "--metrics", "backward_rel_residual_mean"], "no run has metric(s) ['backward_rel_residual_mean']"),
])
def test_bad_plot_requests_are_one_line_errors(two_runs, tmp_path, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["plot", *map(str, two_runs), *[str(tmp_path / a) if a.startswith("x.") else a for a in argv]])
    assert message in str(info.value)
    assert not list(tmp_path.glob("x.*"))


def test_a_folder_without_metrics_and_a_missing_matplotlib_are_named(two_runs, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="has no metrics.jsonl"):
        main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"plotting needs matplotlib: pip install 'implicit-snn\[plot\]'"):
        main(["plot", *map(str, two_runs), "--out", str(tmp_path / "x.png")])
