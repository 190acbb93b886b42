"""Which backward gives the best gradient for its compute? Backward solvers × budgets on equilibria of real networks.

For each problem (a preset, trained from a CLI checkpoint or at initialisation), one training
step's equilibrium is fixed by ``implicit_snn.analysis.FrozenStep`` (the same capture that
``analyze``'s ``compare_backward`` uses): train mode, a seeded batch, the model's own producer run
once (so every solver sees the same dropout masks, batch statistics and a*), and the adjoint
problem v = J_f(a*)ᵀ v + ∂L/∂a built as ``ImplicitClassifier.equilibrium`` builds it
(``differentiable_args``, ``linearized_map``, ``coupled=network.couples_samples(...)``). The
reference is the parameter gradient of that step with the adjoint solved by GMRES to a relative
residual of 1e-10 in float64 (model, a* and f's arguments converted); its residual is reported
as the solver measured it and as recomputed with autograd VJPs. Every solver then gives the
step's parameter gradient in float32 on the same a*; reported: cosine similarity and relative
error ‖g − g_ref‖/‖g_ref‖ of the full flattened parameter gradient (and of the network's part,
without the read-out, whose gradient no backward changes), the adjoint's error and residual, VJPs
(``n_evals``), the backward's wall time (``autograd.grad`` of the loss: the adjoint solve and the
pass into θ; median over alternating rounds), and its peak memory (CPU: growth of the resident
set over the backward, read from /proc with the peak reset just before it (``clear_refs``),
glibc's mmap threshold fixed so that freed buffers leave the resident set, solver workspaces
cleared; in a pass of its own after the timed rounds; CUDA: ``max_memory_allocated`` growth).

Solvers (each row's ``solver`` is its label, ``b_solver`` the registered name): broyden, anderson,
fixed_point, gmres and torchdeq_broyden with ``max_iter`` = budget and tol 1e-12 (so the budget
limits them); phantom (``steps`` = budget, damping 1.0 and 0.5); the Jacobian-free gradient
(phantom, steps=0); spide (SPIDE, ``max_iter`` = T swept; one round and three); Broyden at the training defaults (30
steps, tol 1e-6 and 1e-3). Each problem runs in a process of its own.
Writes ``<out>/solvers-real-<tag>.{json,md,png}``.

Reproduce the committed results (after the two trainings below, 1 thread):

    implicit-snn train --model f400 --epochs 1 --threads 1 --out bench/results/solver-checkpoints/f400-1epoch
    implicit-snn train --model f64c5 --dataset fashion-mnist --time-steps 10 --epochs 1 --threads 1 \\
        --out bench/results/solver-checkpoints/f64c5-t10-1epoch
    python bench/bench_solvers.py --models f400 f64c5:init f64c5 alexnet_f \\
        --checkpoint f400=bench/results/solver-checkpoints/f400-1epoch \\
        --checkpoint f64c5=bench/results/solver-checkpoints/f64c5-t10-1epoch \\
        --batch 128 f64c5=32 alexnet_f=16 --repeats 3 f400=5 alexnet_f=1 \\
        --budgets-for alexnet_f=1,2,3,5,8,12,20,30 --spide-steps-for alexnet_f=10,50,250 --tag cpu

The run took 17 minutes on one thread of an idle AMD EPYC. ``--render JSON`` rewrites the .md and .png from
a json without measuring anything (reports written before the renames, whose rows name the label
``method`` and the solver ``spiking``, are read in today's names). A smoke test:
``python bench/bench_solvers.py --models f400:init --batch 16 --budgets 1 5 --spide-steps 10
--repeats 1 --tag smoke --out /tmp/bench-solvers``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

DEFAULT_BUDGETS = [1, 2, 3, 5, 8, 12, 20, 30, 45, 60]
DEFAULT_SPIDE_STEPS = [10, 25, 50, 100, 250, 500]
DEFAULT_BATCH = {"f400": 128, "f64c5": 32, "alexnet_f": 16}
SWEPT_SOLVERS = ["broyden", "anderson", "fixed_point", "gmres", "torchdeq_broyden"]
TINY_TOL = 1e-12  # never met in float32: the budget is what stops a swept solver
REFERENCE = dict(solver="gmres", tol=1e-10, max_iter=600, restart=60)
THRESHOLDS = (0.999, 0.99999)


# -- the command line ------------------------------------------------------------------------

def _per_model(values: list[str], flag: str, parse, default) -> tuple[Any, dict[str, Any]]:
    """``[V] [MODEL=V ...]`` → (the value for every model, {model: value})."""
    common, special = default, {}
    for text in values:
        key, sep, value = text.partition("=")
        try:
            if sep:
                special[key] = parse(value)
            else:
                common = parse(text)
        except ValueError:
            raise SystemExit(f"error: {flag}: cannot read {text!r}") from None
    return common, special


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v]
    if not values or any(v < 0 for v in values):
        raise ValueError(text)
    return values


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--models", nargs="+", default=["f400", "f64c5", "alexnet_f"], metavar="MODEL[:init]",
        help="presets; MODEL uses --checkpoint MODEL=PATH when given (else its initialisation), MODEL:init always "
             "its initialisation (default: f400 f64c5 alexnet_f)")
    add("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
        help="a checkpoint file or CLI run directory for MODEL (repeatable)")
    add("--batch", nargs="+", default=[], metavar="N|MODEL=N",
        help=f"batch size, for all models or per model (default {DEFAULT_BATCH}, else 32)")
    add("--budgets", nargs="+", type=int, default=DEFAULT_BUDGETS, metavar="K",
        help=f"max_iter of the swept solvers and steps of phantom (default {' '.join(map(str, DEFAULT_BUDGETS))})")
    add("--budgets-for", action="append", default=[], metavar="MODEL=K,K,...", help="budgets for one model")
    add("--spide-steps", nargs="+", type=int, default=DEFAULT_SPIDE_STEPS, metavar="T",
        help=f"SPIDE's T_back, its max_iter (default {' '.join(map(str, DEFAULT_SPIDE_STEPS))})")
    add("--spide-steps-for", action="append", default=[], metavar="MODEL=T,T,...", help="T_back for one model")
    add("--repeats", nargs="+", default=[], metavar="N|MODEL=N",
        help="timed rounds (alternating over the solvers), for all models or per model (default 3)")
    add("--threads", type=int, default=1, help="torch threads (default 1)")
    add("--device", choices=["cpu", "cuda"], default="cpu")
    add("--seed", type=int, default=0, help="seed of the batch and of the dropout masks (default 0)")
    add("--data-root", default=None, help="folder with the Fashion-MNIST files (default: the library's search)")
    add("--tag", default=None, help="result files: solvers-real-<tag> (default: the device)")
    add("--out", default=str(BENCH / "results"), help="folder of the result files (default bench/results)")
    add("--render", default=None, metavar="JSON",
        help="only rewrite the .md and .png (and the json's summary) from an earlier run's json")
    add("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.render:
        return args
    import models
    for entry in args.models:
        name = entry.removesuffix(":init")
        if name not in models.available_models():
            parser.error(f"--models: unknown preset {name!r}; available: {' '.join(models.available_models())}")
    args.checkpoints = {}
    for text in args.checkpoint:
        name, sep, path = text.partition("=")
        if not sep or not path:
            parser.error(f"--checkpoint: {text!r} is not MODEL=PATH")
        args.checkpoints[name] = path
    args.batch_all, args.batch_for = _per_model(args.batch, "--batch", int, None)
    args.repeats_all, args.repeats_for = _per_model(args.repeats, "--repeats", int, 3)
    _, args.budgets_map = _per_model(args.budgets_for, "--budgets-for", _int_list, None)
    _, args.spide_map = _per_model(args.spide_steps_for, "--spide-steps-for", _int_list, None)
    if args.threads < 1 or any(b < 1 for b in args.budgets) or any(t < 1 for t in args.spide_steps):
        parser.error("--threads, --budgets and --spide-steps must be >= 1")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    return args


def problem_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One worker's settings per entry of --models."""
    specs = []
    for entry in args.models:
        name, init = entry.removesuffix(":init"), entry.endswith(":init")
        checkpoint = None if init else args.checkpoints.get(name)
        source = "init" if checkpoint is None else Path(checkpoint).name
        batch = args.batch_for.get(name, args.batch_all or DEFAULT_BATCH.get(name, 32))
        specs.append(dict(
            label=f"{name} ({'at initialisation' if checkpoint is None else 'trained: ' + source})",
            key=f"{name}-{source}", model=name, checkpoint=checkpoint, batch=batch, seed=args.seed,
            budgets=args.budgets_map.get(name, args.budgets), spide_steps=args.spide_map.get(name, args.spide_steps),
            repeats=args.repeats_for.get(name, args.repeats_all), threads=args.threads, device=args.device,
            data_root=args.data_root))
    return specs


# -- the solvers -----------------------------------------------------------------------------

def solver_configs(budgets: list[int], spide_steps: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every (solver, budget) to run, and notes on what could not run; ``solver`` labels a row,
    ``b_solver`` is the registered solver it runs with ``b_options``."""
    notes, configs = [], []
    swept = list(SWEPT_SOLVERS)
    if importlib.util.find_spec("torchdeq") is None:
        swept.remove("torchdeq_broyden")
        notes.append("torchdeq is not installed: no torchdeq_broyden rows")

    def add(label: str, b_solver: str, budget: int, max_iter: int, tol: float, **b_options: Any) -> None:
        configs.append(dict(solver=label, b_solver=b_solver, budget=budget, max_iter=max_iter, tol=tol,
                            b_options=b_options))

    for name in swept:
        for budget in budgets:
            add(name, name, budget, budget, TINY_TOL)
    for damping in (1.0, 0.5):
        for budget in budgets:
            add(f"phantom λ={damping:g}", "phantom", budget, budget, TINY_TOL, steps=budget, damping=damping)
    add("jacobian-free", "phantom", 0, 1, TINY_TOL, steps=0)  # the Jacobian-free gradient (phantom, steps=0)
    for steps in spide_steps:
        add("spide", "spide", steps, steps, TINY_TOL)
        add("spide, 3 rounds", "spide", steps, steps, TINY_TOL, rounds=3)
    for tol in (1e-6, 1e-3):
        add(f"broyden tol {tol:g}", "broyden", 30, 30, tol)
    return configs, notes


# -- the problem (in a worker) ---------------------------------------------------------------

def _load_batch(spec: dict[str, Any]):
    """The model (float32, train mode), a seeded batch (x, y) and facts about where they came from."""
    import torch

    import models
    from implicit_snn.data import BatchLoader, load_dataset

    facts: dict[str, Any] = {}
    if spec["checkpoint"] is not None:
        from implicit_snn.app.commands import checkpoint_config, load_checkpoint
        from implicit_snn.app.build import load_split, model_from_config
        from implicit_snn.app.rundir import RunDir
        from implicit_snn.data import dataset_info

        path, ckpt = load_checkpoint(spec["checkpoint"])
        config = checkpoint_config(ckpt, {"data_root": spec["data_root"]})
        info = dataset_info(config.dataset)
        model = model_from_config(config, info.num_classes, info.in_shape)
        model.load_state_dict(ckpt["model"])
        data = load_split(config, "train")
        run_dir = RunDir(path.parent)
        summary = run_dir.read_summary() if run_dir.summary_file.exists() else {}
        facts["checkpoint_config"] = run_dir.read_config() if run_dir.config_file.exists() else None
        facts.update(checkpoint=str(path), dataset=config.dataset, trained_epochs=ckpt.get("epoch"),
                     trained_time_steps=config.time_steps, trained_test_acc=summary.get("final_test_acc"))
    else:
        model = models.build_model(spec["model"])
        in_shape = tuple(models.get_preset(spec["model"]).in_shape)
        if in_shape == (1, 28, 28):
            data = load_dataset("fashion-mnist", "train", root=spec["data_root"])
            facts["dataset"] = "fashion-mnist"
        else:  # CIFAR is not available offline: the generated dataset in the preset's input shape
            data = load_dataset("synthetic", "train", shape=in_shape)
            facts["dataset"] = f"synthetic {'x'.join(map(str, in_shape))} (class prototypes + noise, zero mean, unit variance)"
    loader = BatchLoader(data, spec["batch"], shuffle=True, generator=torch.Generator().manual_seed(spec["seed"]))
    x, y = next(iter(loader))
    return model, x, y, facts


def build_problem(spec: dict[str, Any]):
    """One training step frozen at its equilibrium (``analysis.FrozenStep``: train mode, seeded
    masks), and facts about where the model and the batch came from."""
    import torch

    from implicit_snn.analysis import FrozenStep

    model, x, y, facts = _load_batch(spec)
    device = torch.device(spec["device"])
    model.to(device)
    step = FrozenStep.capture(model, x.to(device), y.to(device), spec["seed"])
    net, stats = model.network, step.stats
    facts.update(producer=repr(model.producer), batch=int(x.shape[0]), input_shape=list(x.shape[1:]),
                 state_shape=list(step.a_star.shape[1:]), coupled=step.coupled, parameters=model.num_parameters(),
                 firing_rate=float(stats.get("firing_rate", float("nan"))),
                 bn_backward=getattr(net, "bn_backward", None))
    return step, facts


class MemoryProbe:
    """Peak memory growth of a region: CUDA's allocator peak, or the CPU process's resident set (VmHWM
    after resetting it through /proc/self/clear_refs, minus VmRSS before)."""

    def __init__(self, device: str):
        self.device = device
        self.before = 0.0
        if device == "cpu":
            # Freed buffers of 64 KiB and more go back to the system at once, so that one solver's
            # leftovers neither hide the next one's allocations nor count as its own.
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD (also disables glibc's dynamic threshold)
            libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
            libc.malloc_trim(0)
            self.libc = libc

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {field}")

    def start(self) -> None:
        import torch

        import solvers._workspace as workspace
        workspace.clear()
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
        else:
            self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.before = self._status_kib("VmRSS") / 1024

    @contextlib.contextmanager
    def region(self):
        """Measure the peak growth of the block's memory into ``self.peak``."""
        self.start()
        yield
        self.peak = self.stop()

    def stop(self) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self.before
        return self._status_kib("VmHWM") / 1024 - self.before


def _compare(grad, reference, network_size: int) -> dict[str, float]:
    """Cosine and relative error of the full gradient and of its network part (the first ``network_size`` entries)."""
    out = {}
    for key, g, r in (("", grad, reference), ("net_", grad[:network_size], reference[:network_size])):
        g, r = g.double(), r.double()
        out[key + "cosine"] = float(g @ r / (g.norm() * r.norm()).clamp_min(1e-300))
        out[key + "rel_error"] = float((g - r).norm() / r.norm().clamp_min(1e-300))
    return out


def _adjoint_residual(problem, v) -> float:
    """Worst per-sample relative residual of v = J_fᵀ v + ∂L/∂a, recomputed with autograd VJPs."""
    import torch
    import torch.nn.functional as F

    model, net = problem.model, problem.model.network
    model.load_state_dict(problem.state)
    f_args = net.differentiable_args(*problem.f_args)
    a = problem.a_star.clone().requires_grad_()
    (u,) = torch.autograd.grad(F.cross_entropy(model.classifier(a.flatten(1)), problem.y), a)
    z = problem.a_star.clone().requires_grad_()
    (jtv,) = torch.autograd.grad(net.fixed_point_map(z, *f_args), z, v)
    image = (jtv + u).flatten(1)
    model.load_state_dict(problem.state)
    return float(((image - v.flatten(1)).norm(dim=1) / image.norm(dim=1)).max())


def _loadavg() -> Optional[float]:
    """The machine's 1-minute load average (a shared machine shows here), or None."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Everything for one problem: reference, the timed rounds, then the memory pass."""
    import torch

    from implicit_snn import ImplicitAdjoint

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    started = time.perf_counter()
    load_start = _loadavg()
    problem, facts = build_problem(spec)
    configs, notes = solver_configs(spec["budgets"], spec["spide_steps"])
    classifier_size = sum(p.numel() for p in problem.model.classifier.parameters() if p.requires_grad)

    # The reference: float64, GMRES to 1e-10.
    ref_problem = problem.in_float64()
    ref_adjoint = ImplicitAdjoint(REFERENCE["solver"], b_max_iter=REFERENCE["max_iter"], b_tol=REFERENCE["tol"],
                                  b_options={"restart": REFERENCE["restart"]})
    ref_grad, ref_ms, ref_result = ref_problem.gradient(ref_adjoint)
    ref_v = ref_result.z.detach()
    reference = {**REFERENCE, "dtype": "float64", **ref_result.summary(), "ms": ref_ms,
                 "recomputed_rel_residual_max": _adjoint_residual(ref_problem, ref_v),
                 "grad_norm": float(ref_grad.norm())}
    network_size = ref_grad.numel() - classifier_size
    # The parameters are ordered network first, read-out last (the classifier is registered after the network).
    names = [n for n, p in problem.model.named_parameters() if p.requires_grad]
    assert names[-1].startswith("classifier"), names
    ref_v32 = ref_v.float()
    del ref_problem, ref_adjoint
    gc.collect()

    def adjoint_for(config):
        return ImplicitAdjoint(config["b_solver"], b_max_iter=config["max_iter"], b_tol=config["tol"],
                               b_options=config["b_options"])

    # Warm-up, untimed: the model's code paths and the cheapest solves.
    for config in configs[:2]:
        problem.gradient(adjoint_for(config))

    rows = [dict(config, ms_rounds=[]) for config in configs]
    for round_index in range(spec["repeats"]):
        for row in rows:
            grad, ms, result = problem.gradient(adjoint_for(row))
            row["ms_rounds"].append(ms)
            if round_index == 0:
                summary = result.summary()
                v = result.z.detach().float()
                row.update(
                    _compare(grad, ref_grad, network_size), n_evals=int(summary["n_evals"]),
                    n_steps=int(summary["n_steps"]), status=str(summary["status"]),
                    rel_residual_max=float(summary["rel_residual_max"]),
                    converged_fraction=float(summary["converged_fraction"]),
                    adjoint_rel_error=float((v - ref_v32).norm() / ref_v32.norm()),
                    stopped_early=int(summary["n_steps"]) < row["max_iter"],
                )
    for row in rows:
        row["ms"] = statistics.median(row["ms_rounds"])

    probe = MemoryProbe(device)
    for row in rows:
        problem.gradient(adjoint_for(row), around=probe.region)
        row["peak_mib"] = probe.peak
    facts["loadavg_1min"] = {"start": load_start, "end": _loadavg()}  # this worker itself adds about 1
    return dict(spec=spec, facts=facts, reference=reference, notes=notes, rows=rows,
                classifier_parameters=classifier_size, network_parameters=network_size,
                worker_seconds=time.perf_counter() - started)


# -- the report ------------------------------------------------------------------------------

def _revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError) as error:
        return {"commit": None, "error": str(error)}


def readable_rows(problem: dict[str, Any]) -> dict[str, Any]:
    """``problem`` with its rows in today's keys: a report written before the renames labels a row
    ``method`` (now ``solver``) and names its registered solver ``solver`` (now ``b_solver``, with
    ``spiking`` now ``spide``); rows in today's keys are kept as they are."""
    rows = []
    for row in problem["rows"]:
        if "method" in row:
            row = dict(row)
            row["b_solver"] = row["solver"]
            row["solver"] = row.pop("method")
            row["b_options"] = row.pop("options", {})
        rows.append({**row, **{key: "spide" for key in ("solver", "b_solver") if row.get(key) == "spiking"}})
    return {**problem, "rows": rows}


def summary_rows(problem: dict[str, Any]) -> list[dict[str, Any]]:
    """Per solver: the fewest VJPs and milliseconds reaching each cosine threshold, for the full gradient
    (``"0.999"``, ...) and for its network part (``"net 0.999"``, ...)."""
    out = []
    labels = list(dict.fromkeys(row["solver"] for row in problem["rows"]))
    for label in labels:
        rows = [r for r in problem["rows"] if r["solver"] == label]
        entry = {"solver": label, "largest_budget": max(r["budget"] for r in rows)}
        for prefix in ("", "net "):
            for threshold in THRESHOLDS:
                hits = [r for r in rows if r[prefix.replace(" ", "_") + "cosine"] >= threshold]
                entry[f"{prefix}{threshold}"] = (
                    None if not hits else {"vjps": min(r["n_evals"] for r in hits), "ms": min(r["ms"] for r in hits),
                                           "budget": min(hits, key=lambda r: r["n_evals"])["budget"]})
        out.append(entry)
    return out


def _not_reached(entry: dict[str, Any]) -> str:
    label = entry["solver"]
    if label.startswith("spide"):
        return f"not reached within T={entry['largest_budget']}"
    if label == "jacobian-free" or label.startswith("broyden tol"):
        return "not reached"
    return f"not reached within {entry['largest_budget']}"


def _cell(hit: Optional[dict[str, Any]], entry: dict[str, Any]) -> str:
    return _not_reached(entry) if hit is None else f"{hit['vjps']} / {hit['ms']:.0f}"


def summary_table(problems: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """The summary as markdown rows: VJPs / ms to each threshold (``prefix`` "net " for the network part)."""
    heads = " | ".join(f"cos ≥ {t}: VJPs / ms" for t in THRESHOLDS)
    lines = [f"| model | solver | {heads} |", "|---|---|" + "---|" * len(THRESHOLDS)]
    for problem in problems:
        for entry in summary_rows(problem):
            cells = " | ".join(_cell(entry[f"{prefix}{t}"], entry) for t in THRESHOLDS)
            lines.append(f"| {problem['spec']['label']} | {entry['solver']} | {cells} |")
    return lines


def _load_text(load: Optional[dict[str, Any]]) -> str:
    if not load or load.get("start") is None:
        return "unknown"
    return f"{load['start']:.2f} at the start, {load['end']:.2f} at the end"


def to_markdown(report: dict[str, Any]) -> str:
    ref = REFERENCE
    lines = [
        f"# Backward solvers on real equilibria ({report['device_name']}, torch {report['torch']}, {report['date']})", "",
        f"Revision {report['revision'].get('commit')}{' (with uncommitted changes)' if report['revision'].get('dirty') else ''}. "
        f"Command: `{report['command']}`", "",
        "One training step per problem: train mode, one seeded batch, the model's producer run once; every solver "
        "differentiates the same a* (same dropout masks and weights) in float32, exactly as `ImplicitClassifier` "
        f"does (explicit transposed-Jacobian operator, `coupled` from `couples_samples`). Reference: the same step "
        f"with the adjoint solved by {ref['solver']} (restart {ref['restart']}) to relative residual {ref['tol']:g} in "
        "float64. 1 − cos, rel. err: one minus the cosine similarity and ‖g − g_ref‖/‖g_ref‖ of the full flattened parameter gradient; "
        "net rel. err: the same without the read-out layer (whose gradient no backward changes); adj. err: "
        "‖v − v_ref‖/‖v_ref‖ of the adjoint. budget: `max_iter` (swept solvers, tol 1e-12 so that the budget "
        "stops them), phantom's `steps`, spide's T (its `max_iter`). VJPs: the solve's `n_evals` (each solver also "
        "evaluates once at its start or end: phantom k steps = k + 1, spide T = T + 1, the Jacobian-free gradient "
        "(phantom, steps=0) = 1 "
        "that only measures its residual). ms: `autograd.grad` of the loss (adjoint solve and the pass into θ), "
        "median of alternating rounds. MiB: growth of the resident set over that backward, "
        "in a separate pass (see the script's docstring). early: the solver stopped before its budget.", "",
        "## Summary: cheapest budget reaching a cosine similarity", "",
        "VJPs and ms (of the backward) are minima over the budgets that reach the threshold (a solver need not "
        "improve monotonically). Full parameter gradient:", "",
        *summary_table(report["problems"]), "",
        "The network's part of the gradient only (without the read-out layer, whose gradient is the same for "
        "every backward and dominates the full gradient where the read-out is large, as in F64C5):", "",
        *summary_table(report["problems"], "net "), "",
        f"![gradient error against VJPs and milliseconds]({report['stem']}.png)", "",
    ]
    for problem in report["problems"]:
        facts, refr, spec = problem["facts"], problem["reference"], problem["spec"]
        lines += [
            f"## {spec['label']}", "",
            f"Producer {facts['producer']}; {facts.get('dataset')} batch {facts['batch']} of "
            f"{'x'.join(map(str, facts['input_shape']))}; state {'x'.join(map(str, facts['state_shape']))}; "
            f"{facts['parameters']:,} parameters ({problem['classifier_parameters']:,} in the read-out); "
            f"coupled: {facts['coupled']}; firing rate {facts.get('firing_rate') or float('nan'):.3f}"
            + (f"; checkpoint {facts['checkpoint']} ({facts.get('trained_epochs')} epoch(s) at T={facts.get('trained_time_steps')}, "
               f"test accuracy {facts.get('trained_test_acc')})" if facts.get("checkpoint") else "") + ". "
            f"Reference: {refr['n_evals']} VJPs, status {refr['status'] or 'SUCCESS'}, worst relative residual "
            f"{refr['rel_residual_max']:.1e} as measured by GMRES, {refr['recomputed_rel_residual_max']:.1e} recomputed "
            f"with autograd VJPs. Timed rounds: {spec['repeats']}; 1-minute load average "
            f"{_load_text(facts.get('loadavg_1min'))} (this run adds about 1 on its own).", "",
            "| solver | budget | VJPs | status | ms | MiB | adj. residual | adj. err | 1 − cos | rel. err | net rel. err |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in problem["rows"]:
            status = (r["status"] or "SUCCESS") + (" (early)" if r["stopped_early"] and r["b_solver"] != "phantom" else "")
            lines.append(f"| {r['solver']} | {r['budget']} | {r['n_evals']} | {status} | {r['ms']:.1f} | "
                         f"{r['peak_mib']:.1f} | {r['rel_residual_max']:.1e} | {r['adjoint_rel_error']:.1e} | "
                         f"{1 - r['cosine']:.1e} | {r['rel_error']:.1e} | {r['net_rel_error']:.1e} |")
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Per problem: relative gradient error against VJPs and against ms, one line per solver; atomic."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    problems = report["problems"]
    fig, axes = plt.subplots(len(problems), 2, figsize=(15, 4.2 * len(problems)), squeeze=False)
    for row_axes, problem in zip(axes, problems):
        labels = list(dict.fromkeys(r["solver"] for r in problem["rows"]))
        for ax, key, unit in ((row_axes[0], "n_evals", "VJPs (evaluations of Jᵀv)"),
                              (row_axes[1], "ms", "backward wall time (ms)")):
            for index, label in enumerate(labels):
                rows = sorted((r for r in problem["rows"] if r["solver"] == label), key=lambda r: r["budget"])
                xs = [r[key] for r in rows]
                ys = [max(r["rel_error"], 1e-12) for r in rows]
                single = len(rows) == 1
                ax.plot(xs, ys, marker="*" if single else "o", markersize=11 if single else 3.5,
                        linestyle="none" if single else ("--" if label.startswith("phantom") else "-"),
                        label=label, color=f"C{index}" if index < 10 else "black")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(unit)
            ax.set_ylabel("relative error of ∇θ, ‖g − g_ref‖ / ‖g_ref‖")
            ax.set_title(f"{problem['spec']['label']}: gradient error against {'VJPs' if key == 'n_evals' else 'time'}",
                         fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        row_axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(f"Backward solvers on real equilibria, float32 against a float64 GMRES reference "
                 f"({report['device_name']})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (4.2 * len(problems))))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what a result file should have
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def main() -> None:
    args = parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        result = run_worker(spec)
        Path(spec["result_path"]).write_text(json.dumps(result) + "\n")
        return
    sys.path.insert(0, str(BENCH))
    import torch
    from common import run_header, write_results

    if args.render:
        path = Path(args.render)
        report = json.loads(path.read_text())
        report["problems"] = [readable_rows(p) for p in report["problems"]]
        report["summary"] = {p["spec"]["key"]: summary_rows(p) for p in report["problems"]}
        write_plot(report, path.parent / f"{report['stem']}.png")
        write_results(path.parent, report["stem"], report, to_markdown(report))
        return

    torch.set_num_threads(args.threads)
    tag = args.tag or args.device
    stem = f"solvers-real-{tag}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-solvers-") as tmp:
        for index, spec in enumerate(problem_specs(args)):
            spec["result_path"] = str(Path(tmp) / f"result-{index}.json")
            spec_path = Path(tmp) / f"spec-{index}.json"
            spec_path.write_text(json.dumps(spec))
            print(f"[{time.strftime('%H:%M:%S')}] {spec['label']}: batch {spec['batch']}, budgets {spec['budgets']}, "
                  f"spide T {spec['spide_steps']}, {spec['repeats']} timed round(s)", flush=True)
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                  cwd=ROOT, env=env)
            if done.returncode != 0:
                notes.append(f"{spec['label']}: the worker failed (exit code {done.returncode}); no rows")
                continue
            result = json.loads(Path(spec["result_path"]).read_text())
            print(f"[{time.strftime('%H:%M:%S')}]   done in {result['worker_seconds']:.0f} s", flush=True)
            notes += [f"{spec['label']}: {n}" for n in result["notes"]]
            problems.append(result)
    for problem in problems:
        for row in problem["rows"]:
            if row["b_solver"] not in ("phantom", "spide") and row["stopped_early"]:
                notes.append(f"{problem['spec']['label']}: {row['solver']} at budget {row['budget']} stopped after "
                             f"{row['n_steps']} steps ({row['status'] or 'SUCCESS'})")
        if problem["reference"]["rel_residual_max"] > REFERENCE["tol"]:
            notes.append(f"{problem['spec']['label']}: the reference did not reach {REFERENCE['tol']:g} "
                         f"(worst relative residual {problem['reference']['rel_residual_max']:.1e})")
    report = {
        **run_header(args.device), "threads": args.threads, "revision": _revision(), "stem": stem,
        "command": "python bench/bench_solvers.py " + " ".join(sys.argv[1:]),
        "reference": REFERENCE, "thresholds": list(THRESHOLDS), "tiny_tol": TINY_TOL,
        "problems": problems, "summary": {p["spec"]["key"]: summary_rows(p) for p in problems}, "notes": notes,
    }
    if problems:
        write_plot(report, out / f"{stem}.png")
    write_results(out, stem, report, to_markdown(report))


if __name__ == "__main__":
    main()
