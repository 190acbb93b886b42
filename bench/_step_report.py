"""bench_step.py's results: the workers' rounds summarised, the ratio tables, markdown and the plot."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

TIMES = ("step_ms", "forward_ms", "backward_ms", "optimiser_ms")
FLOOR = ("ops_ms", "vjp_ms", "jt_ms", "bare_transposed_ms")
KIND_ORDER = {"ide": 0, "bptt": 1, "baseline": 2, "peer": 3}
FIXED_BUDGET = ("phantom", "spide")  # backward solvers that run their budget whatever the tolerance


def bptt_label(precision: str) -> str:
    """BPTT's row label: the standard mixed precision is bf16 autocast."""
    return "BPTT" if precision == "fp32" else f"BPTT {precision}-autocast"


def median_of(records: Iterable[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else math.nan


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


# -- summaries -------------------------------------------------------------------------------

def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """Per-round medians and their median for each time; VJPs, convergence, memory, floor."""
    rounds = entry["rounds"]
    if not rounds:
        return {}
    summary: dict[str, Any] = {"rounds_done": len(rounds)}
    summary["round_medians"] = {key: [median_of(r["steps"], key) for r in rounds] for key in TIMES}
    summary.update({key: statistics.median(summary["round_medians"][key]) for key in TIMES})
    steps = [s for r in rounds for s in r["steps"]]
    vjps = [s["vjps"] for s in steps if "vjps" in s]
    if vjps:
        summary["vjps"] = statistics.mean(vjps)
    converged = [s["converged"] for s in steps if "converged" in s]
    if converged:
        summary["converged_fraction"] = statistics.mean(converged)
        summary["all_converged"] = all(c == 1.0 for c in converged)
    summary["memory"] = rounds[-1]["memory"]
    summary["loss"] = rounds[-1].get("loss")
    floors = [r["floor"] for r in rounds if "floor" in r]
    if floors:
        summary["floor"] = floor_summary(floors, summary["forward_ms"])
    summary["steps"] = [r["steps"] for r in rounds]
    return summary


def floor_summary(floors: list[dict[str, Any]], forward_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    errors = sorted({f[k] for f in floors for k in ("error", "jt_error") if k in f})
    if errors:
        out["errors"] = errors
    for key in FLOOR:
        values = [f[key] for f in floors if key in f]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_rounds"] = values
    diffs = [f["jt_rel_diff"] for f in floors if "jt_rel_diff" in f]
    if diffs:
        out["jt_rel_diff"] = max(diffs)
    out["forward_over_ops"] = _ratio(forward_ms, out.get("ops_ms"))
    out["vjp_over_bare"] = _ratio(out.get("vjp_ms"), out.get("bare_transposed_ms"))
    out["jt_over_bare"] = _ratio(out.get("jt_ms"), out.get("bare_transposed_ms"))
    return out


def configuration_record(entry: dict[str, Any]) -> dict[str, Any]:
    config = entry["config"]
    record = {key: config.get(key) for key in ("label", "kind", "model", "T", "leak", "method", "solver", "tol",
                                               "solver_options", "solver_label", "revision", "peer", "batch_size",
                                               "input_shape", "spike_input", "precision")}
    record["status"] = entry["status"]
    if entry.get("error"):
        record["error"] = entry["error"]
    if entry.get("info"):
        record["info"] = entry["info"]
    record.update(summarize(entry))
    return record


# -- ratio tables ----------------------------------------------------------------------------

def _index(configs: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {(c["model"], c["T"], c["label"]): c for c in configs if c.get("step_ms") is not None}


def ratio_tables(configs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    done = _index(configs)
    ok = list(done.values())
    tables: dict[str, list[dict[str, Any]]] = {"bptt_over_ide": [], "baseline_speedup": [], "memory_vs_t": [], "floor": []}
    for c in ok:
        if c["kind"] != "ide":
            continue
        precision = c.get("precision") or "fp32"
        # Precision against precision, and a low-precision IDE against float32 BPTT too.
        labels = dict.fromkeys([bptt_label(precision), bptt_label("fp32")])
        for label in labels:
            bptt = done.get((c["model"], c["T"], label))
            if bptt is not None:
                tables["bptt_over_ide"].append({
                    "model": c["model"], "T": c["T"], "ide": c["label"], "bptt": label,
                    "bptt_step_ms": bptt["step_ms"], "ide_step_ms": c["step_ms"],
                    "step_ratio": _ratio(bptt["step_ms"], c["step_ms"]),
                    "memory_ratio": _ratio(bptt["memory"]["growth_mib"], c["memory"]["growth_mib"])})
    for c in ok:
        if c["kind"] != "baseline":
            continue
        current = done.get((c["model"], c["T"], c["label"].replace(f"IDE@{c['revision']}", "IDE", 1)))
        if current is not None:
            tables["baseline_speedup"].append({
                "model": c["model"], "T": c["T"], "solver": c["solver_label"] + ("" if (c.get("precision") or "fp32") == "fp32" else f" {c['precision']}"),
                "baseline": c["revision"],
                "baseline_step_ms": c["step_ms"], "current_step_ms": current["step_ms"],
                **{f"{key[:-3]}_speedup": _ratio(c[key], current[key]) for key in TIMES},
                "baseline_vjps": c.get("vjps"), "current_vjps": current.get("vjps")})
    for model, label in dict.fromkeys((c["model"], c["label"]) for c in _sorted(ok)):
        by_t = {c["T"]: c for c in ok if c["model"] == model and c["label"] == label}
        lo = 5 if 5 in by_t else min(by_t)
        hi = 100 if 100 in by_t else max(by_t)
        if hi > lo:
            m_lo, m_hi = by_t[lo]["memory"]["growth_mib"], by_t[hi]["memory"]["growth_mib"]
            tables["memory_vs_t"].append({"model": model, "label": label, "T_lo": lo, "T_hi": hi,
                                          "memory_lo_mib": m_lo, "memory_hi_mib": m_hi, "ratio": _ratio(m_hi, m_lo)})
    for c in ok:
        floor = c.get("floor")
        if floor:
            tables["floor"].append({"model": c["model"], "T": c["T"], "label": c["label"], "forward_ms": c["forward_ms"],
                                    **{k: floor.get(k) for k in ("ops_ms", "forward_over_ops", "vjp_ms", "jt_ms",
                                                                 "bare_transposed_ms", "vjp_over_bare", "jt_over_bare",
                                                                 "jt_rel_diff")}})
    return tables


def build_report(entries: list[dict[str, Any]], *, header: dict[str, Any], command: str, settings: dict[str, Any],
                 revisions: dict[str, Any]) -> dict[str, Any]:
    configs = [configuration_record(e) for e in entries]
    return {**header, "command": command, "revisions": revisions, "settings": settings,
            "configurations": configs, "ratios": ratio_tables(configs)}


# -- markdown --------------------------------------------------------------------------------

def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number to ``digits`` significant figures (no exponent below 1e6), or "—"."""
    if value is None or not math.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    decimals = max(digits - 1 - int(math.floor(math.log10(abs(value)))), 0)
    return f"{value:.{decimals}f}"


def _x(value: Optional[float]) -> str:
    return "—" if value is None else f"{fmt(value)}×"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _config_row(c: dict[str, Any], rounds: int) -> list[str]:
    if c.get("step_ms") is None:
        why = (c.get("error") or c["status"]).strip().splitlines()[0]
        return [c["label"], f"{c['status']}: {why[:160]}"] + ["—"] * 6
    memory = c["memory"]
    vjps = fmt(c.get("vjps")) if "vjps" in c else "—"
    if c.get("solver") in FIXED_BUDGET and c.get("kind") != "bptt":
        vjps += " (budget)"  # a fixed budget, run as asked: its tolerance never stops it
    elif c.get("all_converged") is False:
        vjps += f" ({100 * c['converged_fraction']:.0f}% conv.)"
    label = c["label"]
    if c["status"] != "ok" or c["rounds_done"] < rounds:
        label += f" ({c['rounds_done']}/{rounds} rounds{', then ' + c['status'] if c['status'] != 'ok' else ''})"
    return [label, fmt(c["step_ms"]), fmt(c["forward_ms"]), fmt(c["backward_ms"]), fmt(c["optimiser_ms"]), vjps,
            fmt(memory["growth_mib"]), fmt(memory["peak_mib"])]


def _sorted(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """IDE, BPTT, baseline, peer; within a kind, the order of the command line."""
    return sorted(configs, key=lambda c: KIND_ORDER.get(c["kind"], 9))


def markdown(report: dict[str, Any]) -> str:
    s, configs, ratios = report["settings"], report["configurations"], report["ratios"]
    memory_kind = "CUDA max_memory_allocated" if report["device"] == "cuda" else "the worker's peak RSS (ru_maxrss)"
    revisions = report["revisions"]
    rev_text = f"current {revisions['current'].get('commit') or '?'}"
    if revisions["current"].get("dirty"):
        rev_text += " (with uncommitted changes)"
    if "baseline" in revisions:
        rev_text += f", baseline {revisions['baseline']['rev']} = {revisions['baseline']['commit']}"
    out = [f"# Training step, IDE against BPTT ({report['device_name']}, torch {report['torch']}, {report['date']})\n",
           f"SGD (lr 0.05, momentum 0.9, weight decay 5e-4) on one fixed random batch of {s['batch_size']}, train mode, "
           f"{s['threads']} thread(s) per worker; each configuration in its own process, the configurations "
           f"alternating over {s['rounds']} rounds of {s['steps']} steps (after {s['warmup']} warm-up steps), "
           "every round from the same weights; times in ms are the median of per-round medians. forward = model(x) "
           "and the loss, backward = loss.backward(), optimiser = zero_grad + step. IDE: the preset's LIF producer, "
           "backward solver:relative tolerance, at most 30 iterations; VJPs per backward. BPTT: surrogate gradient "
           f"(sigmoid, slope 4). Memory: growth of {memory_kind} from before the first step to after the timed "
           "steps (MiB), and the peak itself.\n",
           f"Command: `{report['command']}`  \nRevisions: {rev_text}\n"]
    if report.get("interrupted"):
        out.append(f"**Interrupted** ({report['interrupted']}): partial results, rounds as counted per row.\n")
    head = ["configuration", "step ms", "forward", "backward", "optimiser", "VJPs", "mem growth MiB", "peak MiB"]
    for model in dict.fromkeys(c["model"] for c in configs):
        out.append(f"## {model}\n")
        for steps in sorted({c["T"] for c in configs if c["model"] == model}):
            rows = [_config_row(c, s["rounds"]) for c in _sorted([c for c in configs if c["model"] == model and c["T"] == steps])]
            out.append(f"### T = {steps}\n\n" + _table(head, rows))
    out.append(ratio_markdown(ratios))
    return "\n".join(out)


def ratio_markdown(ratios: dict[str, list[dict[str, Any]]]) -> str:
    parts = ["## Ratios\n"]
    if ratios["bptt_over_ide"]:
        rows = [[r["model"], str(r["T"]), r["ide"], r.get("bptt", "BPTT"), fmt(r["bptt_step_ms"]), fmt(r["ide_step_ms"]),
                 _x(r["step_ratio"]), _x(r["memory_ratio"])] for r in ratios["bptt_over_ide"]]
        parts.append("### BPTT against IDE\n\n" + _table(
            ["model", "T", "IDE", "BPTT", "BPTT step ms", "IDE step ms", "BPTT / IDE step", "BPTT / IDE memory growth"],
            rows))
    if ratios["baseline_speedup"]:
        rows = [[r["model"], str(r["T"]), r["solver"], fmt(r["baseline_step_ms"]), fmt(r["current_step_ms"]),
                 _x(r["step_speedup"]), _x(r["forward_speedup"]), _x(r["backward_speedup"]),
                 f"{fmt(r['baseline_vjps'])} → {fmt(r['current_vjps'])}"] for r in ratios["baseline_speedup"]]
        parts.append("### IDE speed-up over the baseline (baseline / current)\n\n" + _table(
            ["model", "T", "solver", "baseline step ms", "current step ms", "step", "forward", "backward", "VJPs"], rows))
    if ratios["memory_vs_t"]:
        rows = [[r["model"], r["label"], fmt(r["memory_lo_mib"]), fmt(r["memory_hi_mib"]), f"T={r['T_hi']} / T={r['T_lo']}",
                 _x(r["ratio"])] for r in ratios["memory_vs_t"]]
        parts.append("### Memory growth against T\n\n" + _table(
            ["model", "configuration", "at low T MiB", "at high T MiB", "Ts", "ratio"], rows))
    if ratios["floor"]:
        rows = [[r["model"], str(r["T"]), r["label"], fmt(r["forward_ms"]), fmt(r["ops_ms"]), _x(r["forward_over_ops"]),
                 fmt(r["vjp_ms"], 2), fmt(r["jt_ms"], 2), fmt(r["bare_transposed_ms"], 2), _x(r["vjp_over_bare"]),
                 _x(r["jt_over_bare"])] for r in ratios["floor"]]
        parts.append("### Arithmetic floors\n\nforward against its linear/conv ops alone (the simulation's and the "
                     "differentiable evaluation's, no neuron updates); one VJP of the fixed-point map at the step's "
                     "equilibrium (autograd; jt: the network's explicit operator, where it has one) against the "
                     "bare transposed ops (forward layers and feedback).\n\n" + _table(
                         ["model", "T", "configuration", "forward ms", "ops ms", "forward / ops", "VJP ms", "jt ms",
                          "bare ms", "VJP / bare", "jt / bare"], rows))
    return "\n".join(parts)


# -- the plot --------------------------------------------------------------------------------

def plot(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Two panels per model, step time and memory growth against T; None (with a note) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no plot")
        return None
    configs = [c for c in report["configurations"] if c.get("step_ms") is not None]
    models = list(dict.fromkeys(c["model"] for c in configs))
    if not models:
        print("note: nothing finished; no plot")
        return None
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    style = {"ide": "-", "bptt": "-", "baseline": "--", "peer": ":"}
    for row, model in zip(axes, models):
        mine = [c for c in configs if c["model"] == model]
        for label in dict.fromkeys(c["label"] for c in _sorted(mine)):
            series = sorted((c for c in mine if c["label"] == label), key=lambda c: c["T"])
            ts = [c["T"] for c in series]
            line = style.get(series[0]["kind"], "-")
            row[0].plot(ts, [c["step_ms"] for c in series], line, marker="o", label=label)
            row[1].plot(ts, [max(c["memory"]["growth_mib"], 1e-3) for c in series], line, marker="o", label=label)
        for ax, ylabel in zip(row, ("ms per training step", "peak memory growth (MiB)")):
            if len({c["T"] for c in mine}) > 1:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel("T (time steps)")
            ax.set_ylabel(ylabel)
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(f"Training step, IDE against BPTT ({report['device_name']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    print(f"plot: {path}")
    return path
