"""Figures drawn from the JSON reports of ``implicit-snn analyze`` and ``implicit-snn eval`` (needs matplotlib).

    implicit-snn plot analysis-lif.json analysis-if.json --out convergence.png
    implicit-snn plot eval-time-steps.json eval-if.json --out time-steps.pdf
    implicit-snn plot analysis.json --figure energy --out energy.svg

The series each figure draws are computed by pure functions (``convergence_series``,
``time_steps_series``, ``activity_series``, ``energy_bars``) that need no matplotlib, so that
bad input is refused before anything is drawn.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

from . import plotting
from .plotting import FORMATS, write_figure

# What `implicit-snn plot --figure` can draw; the first is the one for run directories.
FIGURES = ("curves", "convergence", "time-steps", "activity", "energy")
_PRODUCER_NAMES = {"lif": "LIF", "if": "IF"}
_REFERENCE = {"color": "grey", "linestyle": "--", "linewidth": 1.0}


class ConvergenceLine(NamedTuple):
    """One (report, producer) line of the convergence figure, its rows sorted by T."""
    label: str
    producer: Optional[str]
    time_steps: list[float]
    distance: list[float]  # ‖a_T − a*‖ / ‖a*‖
    residual: list[float]  # ‖f(a_T) − a_T‖ / ‖a_T‖


class TimeStepsLine(NamedTuple):
    """One eval report's accuracy (%) and mean firing rate against T, sorted by T."""
    label: str
    time_steps: list[float]
    accuracy: list[float]
    rate_time_steps: list[float]  # the T that carry a firing rate
    firing_rate: list[float]


class ActivityPanel(NamedTuple):
    """One producer's spiking layers: the bar heights and, per layer, its firing-rate distribution."""
    label: str
    time_steps: int
    layers: list[str]
    firing_rate: list[float]
    silent: list[float]
    saturated: list[float]
    histograms: list[tuple[list[float], list[float]]]  # per layer: (rate = count / T, share of neurons in %)


class EnergyPanel(NamedTuple):
    """One producer's energy per synaptic layer, in nJ per sample."""
    label: str
    names: list[str]
    sop_nj: list[float]
    mac_nj: list[float]
    ann_nj: list[float]
    total_nj: float
    ann_total_nj: float
    ann_over_snn: float
    energy_per_sop_pj: float
    energy_per_mac_pj: float


def report_kind(report: Any) -> str:
    """``"analysis"`` or ``"eval"``: the report's ``kind``, or for older reports the section that tells."""
    if not isinstance(report, dict):
        raise ValueError(f"a report is a JSON object, got {type(report).__name__}; "
                         "allowed: the JSON written by analyze --json or eval --json")
    kind = report.get("kind")
    if kind in ("analysis", "eval"):
        return kind
    if kind is not None:
        raise ValueError(f"unknown report kind {kind!r}; allowed: 'analysis', 'eval'")
    # Reports written before "kind" existed: old analysis reports have "equilibrium_gap".
    if "producers" in report or "equilibrium_gap" in report:
        return "analysis"
    if "results" in report:
        return "eval"
    raise ValueError("neither an analysis report (no 'producers' or 'equilibrium_gap') "
                     "nor an eval report (no 'results')")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read an analysis or eval report from a JSON file; any problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report {path}: no such file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"report {path}: not valid JSON ({error})") from None
    try:
        report_kind(report)
    except ValueError as error:
        raise ValueError(f"report {path}: {error}") from None
    return report


def producer_label(producer: Optional[str], leak: Optional[float] = None) -> str:
    """How a neuron model is named in legends: ``LIF (λ=0.95)``, ``IF``, or the producer's own name."""
    name = _PRODUCER_NAMES.get(producer or "", producer or "?")
    return f"{name} (λ={leak:g})" if isinstance(leak, (int, float)) and producer == "lif" else name


def producer_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The producer entries of an analysis report; an old report (top-level ``producer`` and
    ``equilibrium_gap``) is one entry whose ``convergence`` rows are its ``equilibrium_gap``."""
    if report_kind(report) != "analysis":
        raise ValueError("this figure needs an analysis report (analyze --json), got an eval report")
    if "producers" not in report:
        return [{"producer": report.get("producer"), "leak": report.get("leak"),
                 "time_steps": report.get("trained_time_steps"), "convergence": report.get("equilibrium_gap") or []}]
    entries = report["producers"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("the analysis report's 'producers' must be a list of objects, one per neuron model")
    return entries


def _number(row: dict[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} is {value!r}; allowed: a finite number")
    return float(value)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _labels(reports: Sequence[dict[str, Any]], labels: Optional[Sequence[str]]) -> list[Optional[str]]:
    if labels is None:
        return [None] * len(reports)
    if len(labels) != len(reports):
        raise ValueError(f"{len(labels)} label(s) for {len(reports)} report(s); give one label per report")
    return list(labels)


def _run_name(report: dict[str, Any], index: int) -> str:
    checkpoint = report.get("checkpoint")
    return Path(checkpoint).parent.name if isinstance(checkpoint, str) and Path(checkpoint).parent.name \
        else f"report {index + 1}"


def _told_apart(names: list[str], owners: list[int], reports: Sequence[dict[str, Any]],
                given: list[Optional[str]]) -> list[str]:
    """Legend entries: a given report label goes in front; two equal entries (the same producer in
    two reports) are told apart by their run's folder."""
    out = [f"{given[o]}: {n}" if given[o] else n for n, o in zip(names, owners)]
    if len(set(out)) < len(out):
        out = [n if given[o] else f"{_run_name(reports[o], o)}: {n}" for n, o in zip(out, owners)]
    return out


def convergence_series(reports: Sequence[dict[str, Any]],
                       labels: Optional[Sequence[str]] = None) -> list[ConvergenceLine]:
    """The convergence figure's lines: one per (report, producer entry) with convergence rows."""
    given = _labels(reports, labels)
    found: list[tuple[int, Optional[str], str, list[tuple[float, float, float]]]] = []
    for index, report in enumerate(reports):
        for entry in producer_entries(report):
            # Log axes cannot show zero or negative values: such rows are left out.
            points = sorted((row["time_steps"], row["distance"], row["fixed_point_residual"])
                            for row in entry.get("convergence") or []
                            if isinstance(row, dict) and all(_positive(row.get(k)) for k in
                                                             ("time_steps", "distance", "fixed_point_residual")))
            if points:
                producer = entry.get("producer")
                found.append((index, producer, producer_label(producer, entry.get("leak")), points))
    names = _told_apart([f[2] for f in found], [f[0] for f in found], reports, given)
    return [ConvergenceLine(name, producer, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
            for name, (_, producer, _, points) in zip(names, found)]


def one_over_t_reference(lines: Sequence[ConvergenceLine]) -> tuple[list[float], list[float], list[float]]:
    """The dashed ∝ 1/T guide over all lines' T range, through the IF line's (else the first line's)
    point at its largest T: (T, distance, residual) at the two ends."""
    anchor = next((line for line in lines if line.producer == "if"), lines[0])
    t_anchor = anchor.time_steps[-1]
    ends = [min(line.time_steps[0] for line in lines), max(line.time_steps[-1] for line in lines)]
    return (ends, [anchor.distance[-1] * t_anchor / t for t in ends],
            [anchor.residual[-1] * t_anchor / t for t in ends])


def _common(reports: Sequence[dict[str, Any]], key: str) -> Optional[str]:
    values = {r.get(key) for r in reports}
    return values.pop() if len(values) == 1 and isinstance(next(iter(values)), str) else None


def _about(reports: Sequence[dict[str, Any]]) -> str:
    words = [w for w in (_common(reports, "model"), _common(reports, "dataset")) if w]
    split = _common(reports, "split")
    return (" — " + " on ".join(words) if words else "") + (f" ({split})" if split else "")


def plot_convergence(reports: Sequence[dict[str, Any]], out: str | Path, *, labels: Optional[Sequence[str]] = None,
                     title: Optional[str] = None) -> Path:
    """The simulated rates' distance to the equilibrium and their fixed-point residual against T
    (log–log), one line per (report, producer), with a ∝ 1/T guide; writes ``out``."""
    plotting.figure_format(out)
    lines = convergence_series(reports, labels)
    if not lines:
        raise ValueError("no report has convergence rows (equilibrium_gap); allowed: analysis reports "
                         "with the convergence section measured")
    ref_t, ref_distance, ref_residual = one_over_t_reference(lines)

    def draw(fig: Any, axes: Any) -> None:
        panels = [(axes[0, 0], "distance", ref_distance, r"relative distance $\|a_T - a^*\| / \|a^*\|$",
                   "distance of the simulated rates to the equilibrium"),
                  (axes[0, 1], "residual", ref_residual, r"fixed-point residual $\|f(a_T) - a_T\| / \|a_T\|$",
                   "fixed-point residual of the simulated rates")]
        for ax, field, reference, ylabel, panel_title in panels:
            for line in lines:
                ax.plot(line.time_steps, getattr(line, field), marker="o", markersize=3, linewidth=1.2,
                        label=line.label)
            ax.plot(ref_t, reference, label=r"$\propto 1/T$", **_REFERENCE)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("simulation length T (time steps)")
            ax.set_ylabel(f"{ylabel} (ratio)")
            ax.set_title(panel_title, fontsize="medium")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize="small")
        fig.suptitle(title or f"Simulated firing rates against the equilibrium{_about(reports)}")

    return write_figure(out, draw, panels=(1, 2), figsize=(12, 4.2))


def time_steps_series(reports: Sequence[dict[str, Any]],
                      labels: Optional[Sequence[str]] = None) -> list[TimeStepsLine]:
    """The T-sweep figure's lines: one per eval report, accuracy in %; labelled by ``labels`` or the producer."""
    given = _labels(reports, labels)
    names, found = [], []
    for index, report in enumerate(reports):
        if report_kind(report) != "eval":
            raise ValueError(f"report {index + 1} is an analysis report; the time-steps figure needs eval reports")
        results = [r for r in report.get("results") or [] if isinstance(r, dict)]
        if any(r.get("time_steps") is None for r in results):
            raise ValueError(f"report {index + 1} ({report.get('producer')}) has no time steps (an analytic "
                             "evaluation): it cannot make a T sweep; allowed: eval reports of a spiking producer")
        rows = sorted((r for r in results if _positive(r["time_steps"])), key=lambda r: r["time_steps"])
        accuracy = [(r["time_steps"], 100.0 * r["acc"]) for r in rows if isinstance(r.get("acc"), (int, float))]
        rates = [(r["time_steps"], r["firing_rate"]) for r in rows
                 if isinstance(r.get("firing_rate"), (int, float)) and math.isfinite(r["firing_rate"])]
        names.append(producer_label(report.get("producer"), report.get("leak")))
        found.append((accuracy, rates))
    steps = {t for accuracy, _ in found for t, _ in accuracy}
    if len(steps) < 2:
        raise ValueError(f"the eval report(s) have {len(steps)} time-step value(s) with an accuracy; "
                         "a T sweep needs at least 2")
    # One line per report: a given label is the whole legend entry.
    names = list(labels) if labels is not None else _told_apart(names, list(range(len(reports))), reports, given)
    return [TimeStepsLine(name, [t for t, _ in accuracy], [a for _, a in accuracy],
                          [t for t, _ in rates], [r for _, r in rates])
            for name, (accuracy, rates) in zip(names, found)]


def plot_time_steps(reports: Sequence[dict[str, Any]], out: str | Path, *, labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None) -> Path:
    """Accuracy (%) and mean firing rate against the simulation length T, one line per eval report
    (the paper's Table 2 as a figure); writes ``out``."""
    plotting.figure_format(out)
    lines = time_steps_series(reports, labels)
    split = _common(reports, "split") or "evaluation"

    def draw(fig: Any, axes: Any) -> None:
        panels = [(axes[0, 0], "time_steps", "accuracy", f"{split} accuracy (%)"),
                  (axes[0, 1], "rate_time_steps", "firing_rate", "mean firing rate (spikes per neuron per step)")]
        for ax, steps, field, ylabel in panels:
            for line in lines:
                if getattr(line, steps):
                    ax.plot(getattr(line, steps), getattr(line, field), marker="o", markersize=3, linewidth=1.2,
                            label=line.label)
            ax.set_xscale("log")
            ax.set_xlabel("simulation length T (time steps)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
            if len(lines) > 1:
                ax.legend(fontsize="small")
        one = f": {lines[0].label}" if len(lines) == 1 else ""
        fig.suptitle(title or f"Accuracy and firing rate against T{one}{_about(reports)}")

    return write_figure(out, draw, panels=(1, 2), figsize=(12, 4.2))


def _entry_label(entry: dict[str, Any]) -> str:
    return producer_label(entry.get("producer"), entry.get("leak"))


def activity_series(report: dict[str, Any]) -> list[ActivityPanel]:
    """The activity figure's panels: one per producer entry with an activity section."""
    panels = []
    for entry in producer_entries(report):
        activity = entry.get("activity")
        if not isinstance(activity, dict) or not activity.get("layers"):
            continue
        steps = activity.get("time_steps") or entry.get("time_steps")
        if not _positive(steps):
            raise ValueError(f"the {_entry_label(entry)} activity section has no time_steps; "
                             "allowed: a positive number of steps")
        layers = activity["layers"]
        histograms = []
        for layer in layers:
            histogram = layer.get("histogram") or {}
            counts, fractions = histogram.get("spike_counts") or [], histogram.get("fraction") or []
            if len(counts) != len(fractions):
                raise ValueError(f"layer {layer.get('layer')}: {len(counts)} spike counts for {len(fractions)} "
                                 "fractions in its histogram; allowed: one fraction per count")
            histograms.append(([c / steps for c in counts], [100.0 * f for f in fractions]))
        names = [f"layer {layer.get('layer')}" for layer in layers]
        where = [f"{_entry_label(entry)} activity, {name}" for name in names]
        bars = {key: [_number(layer, key, at) for layer, at in zip(layers, where)]
                for key in ("firing_rate", "silent", "saturated")}
        panels.append(ActivityPanel(_entry_label(entry), int(steps), names, bars["firing_rate"], bars["silent"],
                                    bars["saturated"], histograms))
    return panels


def plot_activity(report: dict[str, Any], out: str | Path, *, title: Optional[str] = None) -> Path:
    """Per spiking layer, for each producer: mean firing rate, silent and saturated fractions as
    grouped bars, and the distribution of the neurons' firing rates; writes ``out``."""
    plotting.figure_format(out)
    panels = activity_series(report)
    if not panels:
        raise ValueError("the analysis report has no activity section; allowed: a report of analyze "
                         "with the spiking activity measured")

    def draw(fig: Any, axes: Any) -> None:
        bars = [("firing_rate", "mean firing rate (spikes per step)"), ("silent", "silent (no spike in T steps)"),
                ("saturated", "saturated (a spike every step)")]
        width = 0.8 / len(bars)
        for row, panel in zip(axes, panels):
            ax = row[0]
            for k, (field, name) in enumerate(bars):
                offset = (k - (len(bars) - 1) / 2) * width
                ax.bar([i + offset for i in range(len(panel.layers))], getattr(panel, field), width,
                       label=name)
            ax.set_xticks(range(len(panel.layers)), panel.layers)
            ax.set_xlabel("spiking layer")
            ax.set_ylabel("fraction (0–1)")
            ax.set_ylim(0, 1)
            ax.set_title(f"{panel.label}: activity per layer, T={panel.time_steps}", fontsize="medium")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize="small")
            ax = row[1]
            for name, (rates, shares) in zip(panel.layers, panel.histograms):
                ax.step(rates, shares, where="mid", marker="o", markersize=3, linewidth=1.2, label=name)
            # Most neurons are often silent: on a linear axis the other bins would be invisible.
            if any(shares and shares[0] >= 50 for _, shares in panel.histograms):
                ax.set_yscale("log")
            ax.set_xlim(-0.05, 1.05)
            ax.set_xlabel("firing rate (spikes per step = count / T)")
            ax.set_ylabel("share of neurons (%)")
            ax.set_title(f"{panel.label}: distribution of the firing rates", fontsize="medium")
            ax.grid(alpha=0.3, which="both")
            if len(panel.layers) > 1:
                ax.legend(fontsize="small")
        fig.suptitle(title or f"Spiking activity{_about([report])}")

    return write_figure(out, draw, panels=(len(panels), 2), figsize=(12, 4.2 * len(panels)))


def energy_bars(report: dict[str, Any]) -> list[EnergyPanel]:
    """The energy figure's panels: per producer entry with an energy section, per synaptic layer the
    SOP energy (sops × pJ per SOP), MAC energy (macs × pJ per MAC) and the non-spiking network's, in nJ."""
    panels = []
    for entry in producer_entries(report):
        energy = entry.get("energy")
        if not isinstance(energy, dict) or not energy.get("layers"):
            continue
        where = f"{_entry_label(entry)} energy"
        sop_pj, mac_pj = _number(energy, "energy_per_sop_pj", where), _number(energy, "energy_per_mac_pj", where)
        layers = energy["layers"]
        sop = [_number(layer, "sops_per_sample", f"{where}, {layer.get('name')}") * sop_pj / 1e3 for layer in layers]
        mac = [_number(layer, "macs_per_sample", f"{where}, {layer.get('name')}") * mac_pj / 1e3 for layer in layers]
        ann = [_number(layer, "ann_energy_pj", f"{where}, {layer.get('name')}") / 1e3 for layer in layers]
        total = energy.get("total") or {}
        total_nj = total["energy_pj"] / 1e3 if _positive(total.get("energy_pj")) else sum(sop) + sum(mac)
        ann_total_nj = total["ann_energy_pj"] / 1e3 if _positive(total.get("ann_energy_pj")) else sum(ann)
        ratio = total["ann_over_snn"] if _positive(total.get("ann_over_snn")) else \
            (ann_total_nj / total_nj if total_nj > 0 else math.inf)
        panels.append(EnergyPanel(_entry_label(entry), [str(layer.get("name")) for layer in layers], sop, mac, ann,
                                  total_nj, ann_total_nj, ratio, sop_pj, mac_pj))
    return panels


def plot_energy(report: dict[str, Any], out: str | Path, *, title: Optional[str] = None) -> Path:
    """Per synaptic layer, the SNN's energy per sample (SOP and MAC parts stacked) beside the
    non-spiking network's, in nJ, one panel per producer; writes ``out``."""
    plotting.figure_format(out)
    panels = energy_bars(report)
    if not panels:
        raise ValueError("the analysis report has no energy section; allowed: a report of analyze "
                         "with the energy estimate measured")

    def draw(fig: Any, axes: Any) -> None:
        width = 0.38
        for ax, panel in zip(axes[:, 0], panels):
            left = [i - width / 2 for i in range(len(panel.names))]
            right = [i + width / 2 for i in range(len(panel.names))]
            ax.bar(left, panel.sop_nj, width, label="SNN: synaptic operations (SOP)")
            ax.bar(left, panel.mac_nj, width, bottom=panel.sop_nj, label="SNN: multiply–accumulates (MAC)")
            ax.bar(right, panel.ann_nj, width, label="non-spiking network (MAC)", color="grey")
            ax.set_xticks(range(len(panel.names)), panel.names)
            ax.set_xlabel(f"synaptic layer (assumed: {panel.energy_per_sop_pj:g} pJ per SOP, "
                          f"{panel.energy_per_mac_pj:g} pJ per MAC)")
            ax.set_ylabel("energy per sample (nJ)")
            ax.set_title(f"{panel.label}: SNN {panel.total_nj:,.4g} nJ, non-spiking {panel.ann_total_nj:,.4g} nJ "
                         f"per sample (non-spiking / SNN = {panel.ann_over_snn:.2f})", fontsize="medium")
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize="small")
        fig.suptitle(title or f"Estimated inference energy{_about([report])}")

    return write_figure(out, draw, panels=(len(panels), 1), figsize=(9, 4.4 * len(panels)))


def write_report_figures(report: dict[str, Any], out_prefix: str | Path, *, fmt: str = "png") -> list[Path]:
    """Write ``<out_prefix>-convergence``, ``-activity`` and ``-energy`` (each only where the analysis
    report has that section) in format ``fmt``; returns the written paths."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; use {', '.join(FORMATS)}")
    # Appended, not Path.with_suffix: a prefix such as "runs/x/analysis.v2" keeps its dot.
    path = {name: Path(f"{out_prefix}-{name}.{fmt}") for name in ("convergence", "activity", "energy")}
    written = []
    if convergence_series([report]):
        written.append(plot_convergence([report], path["convergence"]))
    if activity_series(report):
        written.append(plot_activity(report, path["activity"]))
    if energy_bars(report):
        written.append(plot_energy(report, path["energy"]))
    return written


def plot_files(paths: Sequence[str | Path], out: str | Path, *, figure: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None,
               title: Optional[str] = None) -> Path:
    """What ``implicit-snn plot`` draws: run directories as per-epoch curves, JSON reports as the
    ``figure`` asked (default: convergence for analysis reports, time-steps for eval reports)."""
    if figure is not None and figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")
    plotting.figure_format(out)
    # A file, or a name ending in .json, is a report; anything else is a run directory as before.
    is_report = [Path(p).is_file() or Path(p).suffix.lower() == ".json" for p in paths]
    if not any(is_report):
        if figure not in (None, "curves"):
            raise ValueError(f"--figure {figure} draws JSON reports of analyze/eval, not run directories; "
                             "run directories make --figure curves")
        return plotting.plot_runs(paths, out, metrics=metrics or plotting.DEFAULT_METRICS, labels=labels,
                                  title=title)
    if not all(is_report):
        run_dir = next(p for p, r in zip(paths, is_report) if not r)
        report_file = next(p for p, r in zip(paths, is_report) if r)
        raise ValueError(f"{run_dir} is a run directory but {report_file} is a JSON report; "
                         "plot run directories or reports, not both in one figure")
    if metrics:
        raise ValueError("--metrics chooses the curves of run directories; JSON reports draw fixed series")
    reports = [load_report(p) for p in paths]
    kinds = {report_kind(r) for r in reports}
    if figure is None:
        if len(kinds) > 1:
            raise ValueError("the reports mix analysis and eval reports; plot one kind per figure")
        figure = "convergence" if kinds == {"analysis"} else "time-steps"
    wanted = "eval" if figure == "time-steps" else "analysis"
    if figure == "curves" or kinds != {wanted}:
        allowed = "run directories" if figure == "curves" else f"{wanted} reports"
        raise ValueError(f"--figure {figure} draws {allowed}; got {' and '.join(sorted(kinds))} report(s)")
    if figure in ("activity", "energy"):
        if len(reports) != 1:
            raise ValueError(f"--figure {figure} draws one analysis report, got {len(reports)}")
        if labels:
            raise ValueError(f"--labels names the lines of several reports; --figure {figure} draws one report")
        draw = plot_activity if figure == "activity" else plot_energy
        return draw(reports[0], out, title=title)
    draw = plot_convergence if figure == "convergence" else plot_time_steps
    return draw(reports, out, labels=labels, title=title)
