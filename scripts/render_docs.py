"""Render the data tables of README.md, docs/benchmarks.md and docs/results.md from the committed result files.

Each table sits between ``<!-- render: NAME -->`` and ``<!-- /render -->`` and is made only from
files in the repository (bench/results/, docs/runs/), by the function registered under NAME below;
nothing between the markers is written by hand.

    python scripts/render_docs.py           # rewrite every table in place
    python scripts/render_docs.py --check   # exit 1 naming each table that differs from its files

Reads JSON and JSON lines only (no torch), so it runs in any Python 3.10+.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/benchmarks.md", "docs/results.md")
OPEN = re.compile(r"<!-- render: ([^\s>]*) -->")
BLOCK = re.compile(r"(<!-- render: ([^\s>]*) -->\n)(.*?)(<!-- /render -->)", re.S)

TABLES: dict[str, Callable[[], str]] = {}


def table(name: str):
    """Register a renderer: a function returning the markdown between the markers of NAME."""
    def register(function):
        TABLES[name] = function
        return function
    return register


# ---------------------------------------------------------------------------------------------
# Reading and formatting

def load(path: str):
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


def metrics(run: str) -> list[dict]:
    lines = (ROOT / run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def g3(x: float) -> str:
    """Three significant digits; no decimals from 100 on (thousands separated)."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def sci(x: float, digits: int = 1) -> str:
    """1.5e-05 → 1.5e-5."""
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def small(x: float) -> str:
    """0 stays 0, values from 0.01 on get two significant digits, smaller ones 1.5e-5."""
    return "0" if x == 0 else f"{x:.2g}" if abs(x) >= 0.01 else sci(x)


def tol(x: float) -> str:
    return sci(x, 0)


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def points(x: float) -> str:
    """A difference of two accuracies (fractions) in percentage points, signed."""
    value = f"{100 * x:+.2f}".replace("-", "−")
    return "+0.00" if value in ("+0.00", "−0.00") else value


def span(values, fmt: Callable[[float], str], unit: str = "") -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def machine(header: dict) -> str:
    """'AMD EPYC, 1 thread, torch 2.14.1+cu130, 2026-12-01' from a result file's header."""
    name = re.sub(r"\(R\)| Processor", "", header["device_name"])
    match = re.match(r"(.*?) \((\d+) threads?\)$", name)
    name, threads = (match.group(1), int(match.group(2))) if match else (name, None)
    parts = [name.strip()]
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    return ", ".join(parts + [f"torch {header['torch']}", header["date"][:10]])


# Flags renamed since some result files were written: their recorded commands are shown in
# today's spelling, so that they can be run as shown.
RENAMED_FLAGS = [(r"--spiking-steps(-for)?\b", r"--spide-steps\1"), (r"--b_option\b", "--b_options"),
                 (r"--f_option\b", "--f_options")]


#: One-off benchmark scripts that answered their question and left bench/: the commit that holds each.
RETIRED = {"bench/bench_compile.py": "1177209", "bench/bench_analysis.py": "1177209",
           "bench/bench_bn_backward.py": "1177209", "bench/bench_step_overheads.py": "1177209",
           "bench/bench_f400_steps.py": "1177209"}


def command(recorded: str) -> str:
    for old, new in RENAMED_FLAGS:
        recorded = re.sub(old, new, recorded)
    return recorded.strip()


def retired_note(text: str) -> str:
    """Where a command runs a retired script: how to get it back."""
    notes = [f"`{script}` is retired; `git show {commit}:{script}` restores it" for script, commit in RETIRED.items()
             if script in text]
    return (" (" + "; ".join(notes) + ")") if notes else ""


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def caption(text: str) -> str:
    return text + retired_note(text) + "\n\n"


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md: bench_step (one training step), IDE against BPTT

PEERS = {"eager": "eager PyTorch loop (BPTT)", "spikingjelly": "SpikingJelly (BPTT)", "snntorch": "snnTorch (BPTT)"}


def preset_backward(model: str) -> tuple[str, dict]:
    """The backward solver and options a preset trains with today (models.PRESETS; Broyden when unset)."""
    import models

    preset = models.PRESETS[model]
    return (preset.b_solver or "broyden"), dict(preset.b_options)


def is_paper_backward(config: dict) -> bool:
    """IDE with the paper's backward: Broyden to a relative residual of 1e-6."""
    return (config["kind"] == "ide" and config["solver"] == "broyden" and config["tol"] == 1e-6
            and not config["solver_options"])


def is_default(config: dict) -> bool:
    """IDE with the preset's default backward, in float32."""
    if config["kind"] != "ide" or (config.get("precision") or "fp32") != "fp32":
        return False
    solver, options = preset_backward(config["model"])
    if (config["solver"], config["solver_options"]) != (solver, options):
        return False
    return solver in ("phantom", "spide") or config["tol"] == 1e-6


def step_label(config: dict) -> str:
    precision = config.get("precision") or "fp32"
    if config["kind"] == "bptt":
        return "BPTT (built in)" + ("" if precision == "fp32" else f", {precision} autocast")
    if config["kind"] == "peer":
        return PEERS[config["peer"].split("_")[0]]
    solver, options = config["solver"], config["solver_options"]
    if solver == "phantom" and options.get("steps") == 0:
        label = "IDE, the Jacobian-free gradient (phantom, steps=0)"
    elif solver == "phantom":
        label = f"IDE, phantom, steps={options['steps']}"
    else:
        label = f"IDE, {solver}, b_tol {tol(config['tol'])}"
    if precision != "fp32":
        label += f", {precision} simulation"
    return label + " (default)" if is_default(config) else label


def step_command(data: dict, path: str) -> str:
    native = data.get("native_bf16")
    flags = "" if native is None else (f"; bf16 {'native' if native else 'emulated'}: {data['native_bf16_why']}")
    return caption(f"{machine(data)}{flags}. Command: `{command(data['command'])}` → `{path}` "
                   "(the medians of per-round medians; the file holds every round).")


def step_table(path: str, backward_ratio: bool = False, *, keep: Callable[[dict], bool] = lambda c: True) -> str:
    """One row per configuration of a bench_step result file that ``keep`` accepts, this tree's
    code only (a ``--baseline`` revision's rows are left out: they belong to the CHANGELOG). The
    BPTT ratio is against BPTT in the same precision; ``backward_ratio`` adds the backward against
    the paper's (Broyden to 1e-6) in the same precision."""
    data = load(path)
    configs = [c for c in data["configurations"] if c["kind"] != "baseline" and c["status"] == "ok" and keep(c)]
    several_t = len({c["T"] for c in configs}) > 1
    several_models = len({c["model"] for c in configs}) > 1
    precisions = sorted({c.get("precision") or "fp32" for c in configs}, key=lambda p: p != "fp32")
    # With several precisions every row is set against BPTT in each (precision against precision
    # as well as against float32 BPTT); with one, against BPTT in the same precision.
    ratio_columns = [f"BPTT {p}'s step / this step" for p in precisions] if len(precisions) > 1 else [
        "BPTT's step / this step"]
    header = (["model"] if several_models else []) + (["T"] if several_t else []) + [
        "configuration", "step ms", "forward ms", "backward ms", "VJPs", "memory growth MiB", *ratio_columns]
    if backward_ratio:
        header.append("backward / Broyden 1e-6's")
    rows = []
    for c in configs:
        precision = c.get("precision") or "fp32"
        group = [o for o in configs if o["model"] == c["model"] and o["T"] == c["T"]]
        same = [o for o in group if (o.get("precision") or "fp32") == precision]
        paper = next((o for o in same if is_paper_backward(o)), None)
        row = ([c["model"].upper()] if several_models else []) + ([str(c["T"])] if several_t else [])
        row += [step_label(c), g3(c["step_ms"]), g3(c["forward_ms"]), g3(c["backward_ms"]),
                (f"{c['vjps']:g}" if c.get("vjps") is not None else "—"), g3(c["memory"]["growth_mib"])]
        for against in (precisions if len(precisions) > 1 else [precision]):
            bptt = next((o for o in group if o["kind"] == "bptt" and (o.get("precision") or "fp32") == against), None)
            row.append(f"{bptt['step_ms'] / c['step_ms']:.2f}×" if bptt else "—")
        if backward_ratio:
            ratio = paper and c["kind"] == "ide"
            row.append(f"{c['backward_ms'] / paper['backward_ms']:.2f}×" if ratio else "—")
        rows.append(row)
    return step_command(data, path) + md_table(header, rows)


@table("step-defaults")
def _():
    """The defaults' side-by-side run: F400 at T = 5 and 30, F64C5 at T = 30."""
    return step_table("bench/results/step-cpu-defaults.json", backward_ratio=True,
                      keep=lambda c: c["model"] == "f400" or c["T"] == 30)


@table("step-f400-bf16")
def _():
    return step_table("bench/results/step-cpu-f400-bf16.json")


@table("step-f64c5-bf16")
def _():
    return step_table("bench/results/step-cpu-f64c5-bf16.json")


@table("step-f400-peers")
def _():
    return step_table("bench/results/step-cpu-f400-peers.json")


@table("step-f400-t5-backward-methods")
def _():
    return step_table("bench/results/step-cpu-f400-t5-backward-methods.json", backward_ratio=True)


@table("floors")
def _():
    """Arithmetic floors of bench_step: ranges over this tree's IDE configurations."""
    paths = ["bench/results/step-cpu-defaults.json"]
    columns = []
    for path in paths:
        data = load(path)
        ide = [c for c in data["configurations"] if c["kind"] == "ide" and c.get("floor")]
        for key in sorted({(c["model"], c["T"]) for c in ide}):
            columns.append((f"{key[0].upper()} T={key[1]}", [c["floor"] for c in ide if (c["model"], c["T"]) == key]))
    measures = [("forward / its linear and conv ops", "forward_over_ops"),
                ("explicit VJP (`jt`) / bare transposed ops", "jt_over_bare"),
                ("autograd VJP / bare transposed ops", "vjp_over_bare")]
    rows = [[name] + [span([f[key] for f in floors], lambda x: f"{x:.2f}", "×") for _, floors in columns]
            for name, key in measures]
    text = caption("Files: " + ", ".join(f"`{p}`" for p in paths) + " (their `Arithmetic floors` tables; "
                   "each range spans the backward configurations: phantom, Broyden to 1e-6 and to 1e-3).")
    return text + md_table(["measure"] + [name for name, _ in columns], rows)


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md: bench_solvers (the backward methods on real equilibria)

SOLVERS_REAL = "bench/results/solvers-real-cpu.json"
MODEL_NAMES = {"f400": "F400", "f64c5": "F64C5", "alexnet_f": "AlexNet-F", "cifarnet_f": "CIFARNet-F"}


def method_label(method: str) -> str:
    if method == "jacobian-free":
        return "Jacobian-free gradient (phantom, steps=0)"
    if method == "spiking":  # the SPIDE solver, measured under its former name
        return "spide"
    match = re.fullmatch(r"phantom λ=(\S+)", method)
    if match:
        return f"phantom, damping={match.group(1)}"
    match = re.fullmatch(r"broyden tol (\S+)", method)
    if match:
        value = float(match.group(1))
        paper = " (the paper's)" if value == 1e-6 else ""
        return f"broyden, b_tol {tol(value)}{paper}, b_max_iter 30"
    return method


def problem_label(problem: dict) -> str:
    spec, facts = problem["spec"], problem["facts"]
    steps = re.search(r"time_steps=(\d+)", facts["producer"]).group(1)
    state = (f"trained {facts['trained_epochs']} epoch{'s' if facts['trained_epochs'] != 1 else ''}"
             if facts.get("trained_epochs") else "initialisation")
    label = f"{MODEL_NAMES.get(spec['model'], spec['model'])}, {state}, T={steps}, batch {spec['batch']}"
    return label + " (coupled)" if facts.get("coupled") else label


def solvers_table(threshold: str) -> str:
    data = load(SOLVERS_REAL)
    problems = data["problems"]
    keys = [p["spec"]["key"] for p in problems]
    methods = [row["solver"] for row in data["summary"][keys[0]]]
    rows = []
    for method in methods:
        row = [method_label(method)]
        for key in keys:
            entry = next(r for r in data["summary"][key] if r["solver"] == method)
            hit = entry[threshold]
            if hit is not None:
                row.append(f"{hit['vjps']} / {hit['ms']:.0f}")
            else:
                row.append("—" if entry["largest_budget"] == 0 else f"> {entry['largest_budget']}")
        rows.append(row)
    return md_table(["method (VJPs / ms)"] + [problem_label(p) for p in problems], rows)


@table("solvers-0.999")
def _():
    data = load(SOLVERS_REAL)
    text = caption(f"{machine(data)}. Command: `{command(data['command'])}` → `{SOLVERS_REAL}`.")
    return text + solvers_table("0.999")


@table("solvers-0.99999")
def _():
    return solvers_table("0.99999")


@table("solvers-net-0.99999")
def _():
    return solvers_table("net 0.99999")


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md: epochs, solver overhead, profile, torch.compile, analyze

@table("epoch")
def _():
    path = "bench/results/epoch-cpu.json"
    data = load(path)
    recorded = command(data["command"])
    if recorded.startswith("bench_"):
        recorded = f"cd bench && python {recorded}"
    rows = []
    for label, rounds in data["per_round"].items():
        if label.startswith(f"IDE@{data['baseline']}"):
            continue
        name = "IDE (broyden, b_tol 1e-6)" if label.startswith("IDE") else "BPTT (built in)"
        vjps = [r["backward_evals_mean"] for r in rounds if r["backward_evals_mean"] is not None]
        rows.append([name, f"{data['median_train_seconds'][label]:.1f}",
                     ", ".join(f"{r['train_seconds']:.1f}" for r in rounds),
                     span([r["test_acc"] for r in rounds], pct, "%"),
                     span(vjps, lambda x: f"{x:.1f}") if vjps else "—"])
    text = caption(f"{machine(data)}, code at commit {data['head']}. Command: `{recorded}` → `{path}`.")
    return text + md_table(["training", f"epoch s (median of {data['rounds']})", "each round s",
                            "test accuracy after the epoch", "backward VJPs per step"], rows)


@table("solver-overhead")
def _():
    path = "bench/results/solver-overhead-cpu.json"
    data = load(path)
    m = data["measurement"]
    rows = [[r["solver"], f"{r['solve_ms']:.2f}", f"{r['work_ms_per_iter']:.2f}", f"{r['work_per_map']:.2f}×"]
            for r in m["rows"] if not r["variant"].startswith("before")]
    text = caption(f"{machine(data)}. Command: `python bench/bench_solver_overhead.py --rounds {data['rounds']} "
                   f"--steps {data['steps']} --threads {data['threads']}` → `{path}` (median of {data['rounds']} "
                   f"rounds; one map evaluation: {m['map_ms']:.3f} ms).")
    return text + md_table(["solver", f"{data['steps']}-step solve ms", "own work ms per iteration",
                            "× one map evaluation"], rows)


@table("profile")
def _():
    path = "bench/results/profile-f400-t5.json"
    data = load(path)
    phases = ["forward", "backward", "optimiser"]
    rows = [[group] + [f"{values[p]:.2f}" for p in phases] + [f"{sum(values[p] for p in phases):.2f}"]
            for group, values in data["groups"].items()]
    totals = [sum(v[p] for v in data["groups"].values()) for p in phases]
    rows.append(["**all**"] + [f"{t:.2f}" for t in totals] + [f"{sum(totals):.2f}"])
    calls = sum(op["calls"] for op in data["operators"])
    text = caption(f"{machine(data['header'])}. Command: `{command(data['command'])}` → `{path}` (ms per step; "
                   f"{data['steps']} profiled steps, {calls:,.0f} operator calls per step).")
    return text + md_table(["group"] + phases + ["step"], rows)


@table("compile")
def _():
    path = "bench/results/compile-f400.json"
    data = load(path)
    rows = [[name, f"{ms:.2f}"] for name, ms in data["median_ms"].items()]
    r = data["ratios"]
    text = caption(f"{machine(data['header'])}. Command: `{command(data['command'])}` → `{path}` (F400, "
                   f"T = {data['time_steps']}, batch {data['batch']}; median of {data['rounds']} rounds of "
                   f"{data['calls']} calls; warm-up and compilation {data['warmup_and_compile_s']:.1f} s).")
    return text + md_table(["configuration", "ms per call"], rows) + (
        f"\nBare loop over its products: eager {r['bare_eager_over_products']:.2f}×, compiled "
        f"{r['bare_compiled_over_products']:.2f}×; library forward, compiled over eager: "
        f"{r['library_compiled_over_eager']:.2f}×.\n")


@table("analysis-cost")
def _():
    path = "bench/results/analysis-cost-cpu.json"
    data = load(path)
    rows = [[name, f"{data['median_seconds'][name]:.1f}", ", ".join(f"{s:.1f}" for s in seconds)]
            for name, seconds in data["seconds"].items()]
    text = caption(f"{machine(data)}. Command: `python bench/bench_analysis.py {data['checkpoint']} --samples "
                   f"{data['samples']} --threads {data['threads']}` → `{path}` ({data['samples']:,} test images, "
                   f"median of {data['rounds']} rounds).")
    return text + md_table(["sections", "median s", "each round s"], rows)


# ---------------------------------------------------------------------------------------------
# docs/results.md: the F400 trainings

SEEDS = [f"docs/runs/repro-f400-lif-noval-seed{k}" for k in range(5)]
SEED_STATS = "docs/runs/f400-lif-seeds.json"


@table("f400-seed0-protocols")
def _():
    runs = {"validation split (trains on 55,000), seed 0": "docs/runs/repro-f400-lif-seed0",
            "all 60,000, seed 0": "docs/runs/repro-f400-lif-noval-seed0"}
    summaries = {name: load(f"{run}/summary.json") for name, run in runs.items()}

    def cell(s: dict, key: str, epoch_key: str | None = None) -> str:
        if s.get(key) is None:
            return "—"
        return f"{pct(s[key])}%" + (f" (epoch {s[epoch_key]})" if epoch_key else "")

    first = next(iter(summaries.values()))
    rows = [[f"final epoch ({first['epochs']})"] + [cell(s, "final_test_acc") for s in summaries.values()],
            ["checkpoint chosen on the validation split"]
            + [cell(s, "val_chosen_test_acc", "val_chosen_epoch") for s in summaries.values()],
            ["best epoch on the test set"] + [cell(s, "best_epoch_test_acc", "best_epoch") for s in summaries.values()],
            ["mean of the last 10 epochs"] + [cell(s, "last10_mean_test_acc") for s in summaries.values()]]
    text = caption("Files: " + ", ".join(f"`{run}/summary.json`" for run in runs.values()) + " (test accuracy).")
    return text + md_table(["protocol"] + list(runs), rows)


@table("f400-five-seeds")
def _():
    stats = load(SEED_STATS)
    group = stats["groups"]["all 60000"]
    if group["runs"] != SEEDS:
        raise SystemExit(f"error: {SEED_STATS} covers {group['runs']}, not {SEEDS}")
    rows = []
    for seed, run in enumerate(SEEDS):
        s, m = load(f"{run}/summary.json"), metrics(run)
        vjps = statistics.fmean(r["backward_evals_mean"] for r in m)
        converged = all(r["backward_converged_fraction"] == 1.0 for r in m)
        rows.append([str(seed), pct(s["final_test_acc"]), f"{pct(s['best_epoch_test_acc'])} (epoch {s['best_epoch']})",
                     pct(s["last10_mean_test_acc"]), f"{vjps:.1f}" + ("" if converged else " (not all converged)"),
                     f"{m[0]['firing_rate']:.3f} → {m[-1]['firing_rate']:.3f}", f"{s['peak_memory_mib']:,.0f}"])
    st = group["stats"]

    def mean_std(key: str) -> str:
        return f"**{pct(st[key]['mean'])} ± {pct(st[key]['std'])}**"

    rows.append([f"**mean ± std (n = {st['final']['n']})**", mean_std("final"), mean_std("best_epoch"),
                 mean_std("last10_mean"), "", "", ""])
    text = caption(f"Files: `docs/runs/repro-f400-lif-noval-seed{{0,1,2,3,4}}/{{summary.json,metrics.jsonl}}`, "
                   f"`{SEED_STATS}` (test accuracy %, sample standard deviation over seeds).")
    return text + md_table(["seed", "final", "best epoch", "last-10 mean", "backward VJPs per step (run mean)",
                            "firing rate, first → last epoch", "peak memory MiB"], rows)


#: t quantiles (two-sided 95%) for the paired differences' intervals, by degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
BTOL_PAIRED = "docs/runs/f400-btol1e-3-paired.json"
PHANTOM_PAIRED = "docs/runs/f400-phantom5-paired.json"
CONV2_PAIRED = "docs/runs/conv2-btol1e-3-paired.json"


SEED_MEASURES = ("final", "best_epoch", "last10_mean")


def seed_cells(stats: dict) -> list[str]:
    """A group's mean ± std test accuracy on each of ``SEED_MEASURES`` (a summarize_runs group's stats)."""
    return [f"{pct(stats[k]['mean'])} ± {pct(stats[k]['std'])}" for k in SEED_MEASURES]


def interval_cells(paired: dict) -> list[str]:
    """A paired difference's mean and 95% t interval, in points, on each of ``SEED_MEASURES``."""
    cells = []
    for key in SEED_MEASURES:
        d = paired[key]
        half = T_975[d["n"] - 1] * d["sem"]
        cells.append(f"{100 * d['mean']:+.2f} [{100 * (d['mean'] - half):+.2f}, {100 * (d['mean'] + half):+.2f}]")
    return cells


def logged_mean(runs: list[str], key: str) -> float:
    """The mean over runs and epochs of a metrics.jsonl field."""
    return statistics.fmean(r[key] for run in runs for r in metrics(run))


def paired_seeds(path: str, reference: str, group: str, *, times: bool = False, seeds: str = "0–4") -> str:
    """A cheaper backward's seeds against ``reference``'s: each group's mean ± std, and the paired
    differences with a t interval, from ``scripts/summarize_runs.py --paired``'s JSON; ``times``
    adds each group's backward milliseconds per step and seconds per training epoch, as logged."""
    data = load(path)
    rows = []
    for name, runs in data["groups"].items():
        row = [f"{name} ({runs['stats']['final']['n']} seeds)", *seed_cells(runs["stats"]),
               f"{logged_mean(runs['runs'], 'backward_evals_mean'):.1f}"]
        if times:
            row += [f"{logged_mean(runs['runs'], 'backward_ms_mean'):.0f}",
                    f"{logged_mean(runs['runs'], 'train_seconds'):.0f}"]
        rows.append(row)
    for name, paired in data["paired"].items():
        rows.append([f"paired {name.replace(' - ', ' − ')}, mean [95% interval]", *interval_cells(paired), ""]
                    + (["", ""] if times else []))
    runs = ", ".join(f"`{run}`" for g in data["groups"].values() for run in g["runs"][:1])
    text = caption(f"Files: `{path}` (`python scripts/summarize_runs.py \"{reference}=RUN,…\" \"{group}=RUN,…\" "
                   f"--paired {reference}:{group} --json {path}`), the runs' summary.json and metrics.jsonl ({runs}, …; "
                   f"seeds {seeds}). Test accuracy %, mean ± sample standard deviation over seeds; paired differences in "
                   "points with a t interval." + (" Backward ms per step and seconds per training epoch: the runs' "
                                                  "own logs, averaged over epochs and seeds." if times else ""))
    head = ["backward", "final", "best epoch", "last-10 mean", "VJPs per step"]
    return text + md_table(head + (["backward ms per step", "epoch s"] if times else []), rows)


@table("f400-btol-seeds")
def _():
    return paired_seeds(BTOL_PAIRED, "broyden1e-6", "btol1e-3")


@table("f400-phantom-seeds")
def _():
    return paired_seeds(PHANTOM_PAIRED, "broyden1e-6", "phantom5")


@table("f400-bf16-seeds")
def _():
    return paired_seeds("docs/runs/f400-bf16-paired.json", "phantom5", "bf16")


@table("precision-eval")
def _():
    """Trained checkpoints evaluated with the simulation in fp32 and bf16, and one step's gradient."""
    path = "bench/results/precision-eval.json"
    data = load(path)
    rows = []
    for r in data["rows"]:
        rates = ", ".join(f"{d:+.1e}" for d in r["firing_rate_difference_per_layer"])
        rows.append([f"`{r['run']}`", str(r["time_steps"]), f"{r['samples']:,}", f"{100 * r['accuracy_fp32']:.2f}%",
                     f"{100 * r['accuracy_bf16']:.2f}%", str(r["differing_predictions"]), rates,
                     sci(r["gradient_error_bf16"]), f"{r['batch_gradient_noise']:.2f}"])
    text = caption(f"{machine(data)}. Command: `{command(data['command'])}` → `{path}`. ∇θ error: ‖∇_bf16 − ∇_fp32‖ / "
                   f"‖∇_fp32‖ of one training step's parameter gradient (batch {data['rows'][0]['gradient_batch']}, the "
                   "same dropout masks, the adjoint solved by GMRES to 1e-7); batch-gradient noise: the same measure "
                   "between the fp32 gradients of two different batches.")
    return text + md_table(["run", "T", "test images", "accuracy fp32", "accuracy bf16", "predictions that differ",
                            "firing rate per layer, bf16 − fp32", "∇θ error of bf16", "batch-gradient noise"], rows)


@table("readme-defaults")
def _():
    """F400's default backward against the paper's: the paired 100-epoch seeds and the step at T = 5."""
    data = load(PHANTOM_PAIRED)
    step = load("bench/results/step-cpu-defaults.json")

    def step_ms(solver: str, options: dict) -> str:
        row = next(c for c in step["configurations"] if c["model"] == "f400" and c["T"] == 5 and c["kind"] == "ide"
                   and c["solver"] == solver and c["solver_options"] == options
                   and (solver != "broyden" or c["tol"] == 1e-6))
        return f"{row['step_ms']:.1f} ms"

    names = {"broyden1e-6": ("Broyden to 1e-6 (the paper's, `--b_solver broyden`)", ("broyden", {})),
             "phantom5": ("phantom, 5 steps (the default)", ("phantom", {"steps": 5}))}
    rows = []
    for group, runs in data["groups"].items():
        label, backward = names[group]
        rows.append([label, *seed_cells(runs["stats"]), f"{logged_mean(runs['runs'], 'backward_evals_mean'):.1f}",
                     step_ms(*backward)])
    rows.append(["paired difference, mean [95% interval]", *interval_cells(data["paired"]["phantom5 - broyden1e-6"]),
                 "", ""])
    text = caption(f"Files: `{PHANTOM_PAIRED}` (5 seeds of each, test accuracy %, mean ± std) and "
                   f"`bench/results/step-cpu-defaults.json` ({machine(step)}, batch 128, the two in one run).")
    return text + md_table(["F400, 100 epochs, all 60,000 images", "final", "best epoch", "last-10 mean",
                            "VJPs per step", "step at T = 5"], rows)


@table("conv2-btol-seeds")
def _():
    return paired_seeds(CONV2_PAIRED, "btol1e-6", "btol1e-3", times=True, seeds="0–2")


@table("f400-eval-time-steps")
def _():
    path = "docs/runs/repro-f400-lif-noval-seed0/eval-time-steps.json"
    data = load(path)
    trained = load("docs/runs/repro-f400-lif-noval-seed0/config.json").get("time_steps")
    results = data["results"]

    def t(r):
        return f"**{r['time_steps']}**" if r["time_steps"] == trained else str(r["time_steps"])

    rows = [["test accuracy %"] + [pct(r["acc"]) for r in results],
            ["firing rate"] + [f"{r['firing_rate']:.3f}" for r in results]]
    text = caption(f"File: `{path}` ({data['producer'].upper()}, {data['samples']:,} test images).")
    return text + md_table(["T"] + [t(r) for r in results], rows)


@table("f400-eval-producers")
def _():
    base = "docs/runs/repro-f400-lif-noval-seed0"
    rows = []
    for name, label in [("eval-time-steps.json", "LIF (trained)"), ("eval-if.json", "IF"),
                        ("eval-analytic.json", "analytic (the fixed point of f, no spikes)")]:
        data = load(f"{base}/{name}")
        for r in data["results"]:
            if name == "eval-time-steps.json" and r["time_steps"] not in (5, 30):
                continue
            note = ""
            if r.get("forward_status"):
                note = ", ".join(f"{k} {v}" for k, v in r["forward_status"].items()) + " batches"
            rows.append([label, str(r["time_steps"]) if r["time_steps"] is not None else "—", pct(r["acc"]),
                         f"`{base}/{name}`" + (f" ({note})" if note else "")])
    return md_table(["producer", "T", "test accuracy %", "file"], rows)


# ---------------------------------------------------------------------------------------------
# docs/results.md: analyze on the trained F400

ANALYSIS = "docs/runs/repro-f400-lif-seed0/analysis.json"


@table("f400-analysis-convergence")
def _():
    data = load(ANALYSIS)
    producers = {p["producer"]: {c["time_steps"]: c for c in p["convergence"]} for p in data["producers"]}
    lif, spike_if = producers["lif"], producers["if"]
    trained = data["trained_time_steps"]
    rows = []
    for steps in sorted(set(lif) & set(spike_if)):
        a, b = lif[steps], spike_if[steps]
        label = f"**{steps}** (trained)" if steps == trained else str(steps)
        rows.append([label, f"{a['distance']:.3g}", f"{pct(a['agreement'])}%", f"{pct(a['accuracy_simulated'])}%",
                     f"{b['distance']:.3g}", f"{pct(b['agreement'])}%", f"{pct(b['accuracy_simulated'])}%"])
    equilibrium = {c["accuracy_equilibrium"] for p in producers.values() for c in p.values()}
    rows.append(["a* itself", "", "", span(equilibrium, pct, "%"), "", "", span(equilibrium, pct, "%")])
    samples = {c["samples"] for p in producers.values() for c in p.values()}
    text = caption(f"File: `{ANALYSIS}` ({span(samples, lambda x: f'{x:,.0f}')} test images; accuracies on them).")
    return text + md_table(["T", "LIF: ‖a_T − a*‖/‖a*‖", "same class as a*", "accuracy of a_T",
                            "IF, same weights: ‖a_T − a*‖/‖a*‖", "same class", "accuracy of a_T"], rows)


@table("f400-analysis-backward")
def _():
    data = load(ANALYSIS)
    reference = data["backward_reference"]
    rows = [[method_label(b["solver"]), str(b["n_evals"]), sci(b["rel_residual"]), b["status"], sci(b["grad_error"])]
            for b in data["backward"]]
    text = caption(f"File: `{ANALYSIS}` (its `backward` section; the reference: Broyden to relative residual "
                   f"{sci(reference['rel_residual_max'])}, {reference['n_evals']} VJPs).")
    return text + md_table(["backward solver", "VJPs", "relative residual", "status",
                            "parameter-gradient error"], rows)


# ---------------------------------------------------------------------------------------------
# docs/results.md: backward tolerance, batch norm, backward methods

def backward_tol_table(path: str) -> str:
    data = load(path)
    model = data.get("model", "f400")
    rows = [[f"{tol(t['tol'])}{' (default)' if t['tol'] == 1e-6 else ''}", f"{t['vjps_per_backward']:.1f}",
             sci(t["grad_rel_error"])] for t in data["tols"]]
    line = (f"python bench/bench_backward_tol.py --model {model} --pretrain-steps {data['pretrain_steps']} "
               f"--steps {data['steps_per_round']} --rounds {data['rounds']} --threads {data['threads']}")
    text = caption(f"{machine(data)}. Command: `{line}` → `{path}`.")
    return text + md_table(["b_tol", "VJPs per step", "∇θ relative error"], rows)


@table("backward-tol-f400")
def _():
    return backward_tol_table("bench/results/backward-tol-f400-cpu-2threads.json")


@table("backward-tol-f64c5")
def _():
    return backward_tol_table("bench/results/backward-tol-f64c5-cpu-2threads.json")


BN = "bench/results/bn-backward.json"


@table("bn-backward-gradients")
def _():
    data = load(BN)
    sources = data["sources"]
    names = [t["tensor"] for t in sources[0]["fd"]["tensors"]]
    header = ["tensor"]
    for s in sources:
        short = "initialisation" if s["weights"].startswith("initialisation") else "after training (" + re.sub(
            r".*\((.*)\)", r"\1", s["weights"]) + ")"
        header += [f"{short}: `batch`", f"{short}: `simulated`"]
    rows = []
    for name in names:
        row = [f"`{name}`"]
        for s in sources:
            t = next(t for t in s["fd"]["tensors"] if t["tensor"] == name)
            row += [small(t["rel_error_batch"]), small(t["rel_error_simulated"])]
        rows.append(row)
    cosine = ", ".join(f"{'initialisation' if s['weights'].startswith('initialisation') else 'after training'} "
                       f"{s['training']['cosine_all']:.2f}" for s in sources)
    text = caption(f"{machine(data['header'])}. Command: `{command(data['command'])}` → `{BN}` "
                   "(median relative error of the directional derivative against central finite differences, "
                   f"float64, batch {data['batch']}, {data['directions']} directions per tensor).")
    return text + md_table(header, rows) + (
        f"\nCosine similarity of the two modes' full gradients at the training setting (float32, the LIF "
        f"simulation, batch {data['batch']}): {cosine}.\n")


def run_group(stats_path: str, group: str) -> list[str]:
    """A summary-stats file's run folders, as repository paths (older files hold them relative to bench/)."""
    runs = load(stats_path)["groups"][group]["runs"]
    return [run if run.startswith(("bench/", "docs/")) else f"bench/{run}" for run in runs]


def epoch_vjps(runs: list[str]) -> str:
    """Mean (min–max) of the runs' epoch means of backward VJPs per step."""
    values = [r["backward_evals_mean"] for run in runs for r in metrics(run)
              if r.get("backward_evals_mean") is not None]
    low, high = f"{min(values):.1f}", f"{max(values):.1f}"
    return f"{statistics.fmean(values):.1f}" + ("" if low == high else f" ({low}–{high})")


def paired_cell(paired: dict) -> str:
    final = paired["final"]
    return f"{points(final['mean'])} ± {100 * final['sem']:.2f} (ahead in {final['second_ahead']} of {final['n']})"


BN_STATS = "bench/results/bn-backward/summary-stats.json"


@table("bn-backward-training")
def _():
    stats = load(BN_STATS)
    rows = []
    for group, label in [("batch", "`batch` (the paper's; default)"), ("simulated", "`simulated`")]:
        runs = run_group(BN_STATS, group)
        final = stats["groups"][group]["stats"]["final"]
        per_seed = " / ".join(pct(load(f"{run}/summary.json")["final_test_acc"]) for run in runs)
        paired = stats["paired"].get(f"{group} - batch")
        rows.append([label, f"{pct(final['mean'])} ± {pct(final['std'])}%", per_seed,
                     paired_cell(paired) if paired else "—", epoch_vjps(runs)])
    text = caption(f"Files: `{BN_STATS}`, the runs' `summary.json` and `metrics.jsonl` under "
                   "`bench/results/bn-backward/<mode>-seed<k>/` (paired: the mean difference to `batch` over the same "
                   "seeds in points, ± its standard error).")
    epochs = load(run_group(BN_STATS, "batch")[0] + "/summary.json")["epochs"]
    return text + md_table(["`--bn-backward`", f"test accuracy after {epochs} epochs (mean ± std)", "seeds 0 / 1 / 2",
                            "paired vs `batch`", "backward VJPs per step: mean (range) of the epochs' means"], rows)


METHODS_STATS = "bench/results/backward-methods/summary-stats.json"


def backward_flags(config: dict) -> tuple[str, str]:
    """(description, flags) of a run's backward in today's spelling. Runs made before the rename
    record b_solver 'spiking' with b_options time_steps = b_max_iter: today that is spide with the
    one budget --b_max_iter."""
    solver, options, tolerance = config["b_solver"], dict(config.get("b_options") or {}), config["b_tol"]
    flags = []
    if solver == "spiking":
        solver = "spide"
        options.pop("time_steps", None)
    flags.append(f"--b_solver {solver}")  # explicit: F400's default is no longer Broyden
    if solver == "spide":
        flags.append(f"--b_max_iter {config['b_max_iter']}")
        description = f"SPIDE, {config['b_max_iter']} steps"
    elif solver == "phantom" and options.get("steps") == 0:
        description = "the Jacobian-free gradient (phantom, steps=0)"
    elif solver == "phantom":
        description = f"phantom, steps={options['steps']}"
    else:
        paper = solver == "broyden" and tolerance == 1e-6
        description = f"{solver}, b_tol {tol(tolerance)}" + (" (the paper's)" if paper else "")
        if tolerance != 1e-6:
            flags.append(f"--b_tol {tol(tolerance)}")
    if options:
        flags.append("--b_options " + " ".join(f"{k}={v}" for k, v in options.items()))
    return description, " ".join(flags)


@table("backward-methods-training")
def _():
    stats = load(METHODS_STATS)
    default = "broyden-1e-6"
    rows = []
    for group, values in stats["groups"].items():
        runs = run_group(METHODS_STATS, group)
        description, flags = backward_flags(load(f"{runs[0]}/config.json"))
        final = values["stats"]["final"]
        paired = stats["paired"].get(f"{group} - {default}")
        rows.append([description, f"`{flags}`" if flags else "(none)", f"{pct(final['mean'])} ± {pct(final['std'])}%",
                     paired_cell(paired) if paired else "—", epoch_vjps(runs)])
    epochs = load(run_group(METHODS_STATS, default)[0] + "/summary.json")["epochs"]
    text = caption(f"Files: `{METHODS_STATS}`, the runs' `config.json`, `summary.json` and `metrics.jsonl` under "
                   "`bench/results/backward-methods/<method>-seed<k>/` (paired: the mean difference to Broyden at "
                   "1e-6 over the same seeds in points, ± its standard error).")
    return text + md_table(["backward", "flags", f"test accuracy after {epochs} epochs (mean ± std, n = 3)",
                            "paired vs Broyden 1e-6", "backward VJPs per step: mean (range) of the epochs' means"], rows)


# ---------------------------------------------------------------------------------------------

def render_page(text: str, page: str) -> tuple[str, list[str]]:
    """The page with every table rendered, and the names of the tables that changed."""
    opened = OPEN.findall(text)
    closed = BLOCK.findall(text)
    if len(opened) != len(closed) or text.count("<!-- /render -->") != len(closed):
        raise SystemExit(f"error: {page}: a render marker is not closed by '<!-- /render -->'")
    unknown = [name for name in opened if name not in TABLES]
    if unknown:
        raise SystemExit(f"error: {page}: unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
    changed = []

    def replace(match: re.Match) -> str:
        name = match.group(2)
        body = TABLES[name]()
        if body != match.group(3):
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def markers() -> dict[str, list[str]]:
    """Every page's marker names, in order."""
    return {page: OPEN.findall((ROOT / page).read_text(encoding="utf-8")) for page in PAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its files")
    args = parser.parse_args(argv)
    stale = []
    for page in PAGES:
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        rendered, changed = render_page(text, page)
        stale += [f"{page}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(rendered, encoding="utf-8")
    if args.check and stale:
        print("tables that differ from their committed files (run python scripts/render_docs.py):", file=sys.stderr)
        for entry in stale:
            print(f"  {entry}", file=sys.stderr)
        return 1
    if not args.check:
        print(f"rendered {sum(len(v) for v in markers().values())} tables; rewrote {len(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
