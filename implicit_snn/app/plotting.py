"""Per-epoch curves of one or several runs, from their ``metrics.jsonl`` (needs matplotlib), and
the helpers every figure shares (``figures`` draws the analysis and eval reports with them).

    implicit-snn plot runs/a runs/b --out curves.png
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..files import atomic_write_bytes
from .rundir import RunDir

# Metric name in metrics.jsonl → axis label; percentages are shown as such.
METRICS: dict[str, str] = {
    "test_acc": "test accuracy (%)",
    "val_acc": "validation accuracy (%)",
    "train_acc": "training accuracy (%)",
    "train_loss": "training loss",
    "test_loss": "test loss",
    "backward_evals_mean": "backward VJPs per step",
    "backward_rel_residual_mean": "backward relative residual",
    "backward_converged_fraction": "backward converged (%)",
    "firing_rate": "mean firing rate",
    "train_seconds": "training seconds per epoch",
}
DEFAULT_METRICS = ("test_acc", "train_loss", "backward_evals_mean", "firing_rate")
_PERCENT = {"test_acc", "val_acc", "train_acc", "backward_converged_fraction"}
_LOG_SCALE = {"backward_rel_residual_mean"}
FORMATS = ("png", "pdf", "svg")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run directory's metrics file."""
    run = RunDir(run_dir)
    if not run.metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir} has no {run.METRICS} (not a run directory, or no epoch finished yet)")
    return run.read_metrics()


def _series(rows: list[dict[str, Any]], metric: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[metric]) for row in rows
              if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]
    scale = 100.0 if metric in _PERCENT else 1.0
    return [e for e, _ in points], [v * scale for _, v in points]


def figure_format(out: str | Path) -> str:
    """The figure format named by ``out``'s suffix: png, pdf or svg."""
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"plot file {out.name}: unknown format {out.suffix!r}; use {', '.join('.' + f for f in FORMATS)}")
    return fmt


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a missing matplotlib is an error saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError("plotting needs matplotlib: pip install 'implicit-snn[plot]'") from None
    return plt


def write_figure(out: str | Path, draw: Callable[[Any, Any], None], *, panels: tuple[int, int] = (1, 1),
                 figsize: tuple[float, float] = (6.0, 3.6)) -> Path:
    """Make a figure of ``panels`` (rows, columns) axes, let ``draw(fig, axes)`` fill it, write it to ``out``.

    ``axes`` is always a 2-D array. The format follows ``out``'s suffix; the file is written
    atomically (a reader never sees half a figure) and the figure is closed even when drawing fails.
    """
    fmt = figure_format(out)
    plt = pyplot()
    fig, axes = plt.subplots(*panels, figsize=figsize, squeeze=False)
    try:
        draw(fig, axes)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, *, metrics: Sequence[str] = DEFAULT_METRICS,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None) -> Path:
    """Draw each metric against the epoch, one panel per metric and one line per run; write ``out``.

    The format follows ``out``'s suffix (png, pdf or svg); the file is written atomically. A run
    without a metric (e.g. no validation split) is left out of that panel; a metric no run has
    is an error. Returns the written path.
    """
    figure_format(out)  # a bad suffix is reported before any file is read
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    if not metrics:
        raise ValueError("no metric to plot")
    labels = list(labels) if labels else [Path(d).name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} label(s) for {len(run_dirs)} run(s); give one label per run")
    runs = [read_metrics(d) for d in run_dirs]
    missing = [m for m in metrics if not any(_series(rows, m)[0] for rows in runs)]
    if missing:
        raise ValueError(f"no run has metric(s) {missing}")

    def draw(fig: Any, axes: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        for ax, metric in zip(axes.flat, metrics):
            for rows, label in zip(runs, labels):
                epochs, values = _series(rows, metric)
                if epochs:
                    # Short runs get markers: a one-epoch run would otherwise draw nothing.
                    ax.plot(epochs, values, label=label, linewidth=1.2, marker="o" if len(epochs) <= 20 else None,
                            markersize=3)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(METRICS[metric])
            if metric in _LOG_SCALE:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize="small")
        if title:
            fig.suptitle(title)

    columns = min(2, len(metrics))
    rows_of_panels = math.ceil(len(metrics) / columns)
    return write_figure(out, draw, panels=(rows_of_panels, columns), figsize=(6 * columns, 3.6 * rows_of_panels))
