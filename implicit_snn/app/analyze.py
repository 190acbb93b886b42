"""``implicit-snn analyze``: what a trained checkpoint does, section by section, as tables, a JSON
report and figures.

Sections (``--sections``, all by default): ``convergence`` (the simulation's rates against the
equilibrium over T), ``backward`` (every backward solver on one training step), ``activity``
(per-layer firing, silent and saturated neurons) and ``energy`` (synaptic operations and an
energy estimate per layer, for inference and for a training step). The feedback norm is always
reported. ``convergence``, ``activity`` and ``energy`` run for each ``--producer`` on the same
weights (IF beside LIF, supplement Figure 2). The report goes to ``analysis.json`` in the run
directory (or ``--out``/``--json``), its figures beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..data import dataset_info
from ..files import atomic_write_text, check_writable
from .commands import backward_table, checkpoint_config, cli_settings, draw_figures, load_checkpoint, load_data
from .config import RunConfig
from .errors import UsageError, checked_settings

SECTIONS = ("convergence", "backward", "activity", "energy")
REPORT_NAME = "analysis.json"


def default_analysis_solvers() -> list[str]:
    """The backward solvers ``analyze`` compares by default: all registered ones but the dense
    ``exact`` (D evaluations per solve), torchdeq's only where torchdeq is installed."""
    import importlib.util

    import solvers

    has_torchdeq = importlib.util.find_spec("torchdeq") is not None
    return [n for n in solvers.available_solvers() if n != "exact" and (has_torchdeq or not n.startswith("torchdeq"))]


def report_path(args: argparse.Namespace) -> Path:
    """Where the JSON report goes: ``--json``, else ``analysis.json`` in ``--out``, else beside the checkpoint
    (in the run directory)."""
    if args.json and args.out:
        raise UsageError("give --json FILE or --out DIR, not both (--out writes DIR/analysis.json)")
    if args.json:
        return Path(args.json)
    if args.out:
        return Path(args.out) / REPORT_NAME
    where = Path(args.checkpoint)
    return (where if where.is_dir() else where.parent) / REPORT_NAME


def run_analyze(args: argparse.Namespace, console: Console) -> int:
    """``implicit-snn analyze``: the chosen sections on a checkpoint; the JSON report and its figures."""
    with checked_settings():
        setup = _setup(args)
    report = _measure(args, console, *setup)
    out = setup[-1]
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out}")
    write_figures(console, report, out, args)
    return 0


def write_figures(console: Console, report: dict[str, Any], json_path: Path, args: argparse.Namespace) -> None:
    """The report's figures beside its JSON (``<stem>-<figure>.<format>``), unless ``--no-plots``;
    without matplotlib, say how to get them."""
    if args.no_plots:
        return
    from .figures import write_report_figures

    draw_figures(console, lambda: write_report_figures(report, json_path.with_suffix(""), fmt=args.format))


def _setup(args: argparse.Namespace):
    """The checkpoint, its settings, the producers, the device, the data and the model, checked before any measuring."""
    from .build import model_from_config, resolve_device

    sections = tuple(args.sections)
    out = report_path(args)
    check_writable(out)  # before the measurements, not after them
    path, ckpt = load_checkpoint(args.checkpoint)
    settings = cli_settings(args)
    settings.pop("b_solver")  # here a list of solvers to compare, not the model's backward
    for name in ("f_solver", "f_max_iter", "f_tol"):
        settings.pop(name)  # here the settings of the a* solve, not of a producer
    names = settings.pop("producer") or [ckpt["config"].get("producer") or "lif"]
    _check_producers(names, leak=settings["leak"] is not None)
    # The settings are checked for a producer that takes them all; each producer then takes its own.
    first = "lif" if settings["leak"] is not None else names[0]
    # analyze studies IDE's equilibrium and backward solvers on the trained weights, whichever
    # method trained them, so the model is built for IDE.
    config = dataclasses.replace(checkpoint_config(ckpt, {**settings, "producer": first}), method="ide")
    data_config = config
    if dataset_info(config.dataset).input_kind == "spikes":
        # Spike datasets are binned into frames: bin into the longest T analysed (the producers
        # still run at the checkpoint's T, and read the first T frames).
        longest = max([*args.time_steps, config.time_steps or 1])
        data_config = RunConfig(**{**config.to_dict(), "time_steps": longest})
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = load_data(data_config, args.split)
    model = model_from_config(config, data.info.num_classes, data.info.in_shape)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    return path, ckpt, config, names, sections, device, data, model, out


def _check_producers(names: list[str], *, leak: bool) -> None:
    """Spiking producers only, each once; ``--leak`` only with LIF among them."""
    if "analytic" in names:
        raise UsageError("analyze compares the spiking simulation with its equilibrium; the analytic producer has "
                         "no simulation (pass --producer if, lif or both)")
    if len(set(names)) != len(names):
        raise UsageError(f"--producer lists a producer twice: {' '.join(names)}")
    if leak and "lif" not in names:
        raise UsageError(f"`leak` does not apply to the {' or '.join(names)} producer, only to lif")


def _producer_config(config: RunConfig, name: str) -> dict[str, Any]:
    from .build import producer_settings

    return producer_settings(dataclasses.replace(config, producer=name))


def _batches(args: argparse.Namespace, data, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Exactly ``--samples`` test samples (or the whole split if smaller), in order, in batches."""
    from ..data import BatchLoader

    loader = BatchLoader(data, args.batch_size, shuffle=False, generator=torch.Generator())
    batches, taken = [], 0
    for x, y in loader:
        keep = min(len(y), args.samples - taken)
        batches.append((x[:keep].to(device), y[:keep].to(device)))
        taken += keep
        if taken >= args.samples:
            break
    return batches


def _measure(args, console, path, ckpt, config, names, sections, device, data, model, out) -> dict[str, Any]:
    from ..analysis import (
        OperationEnergy, compare_backward, energy_report, equilibrium_gap, feedback_norm, layer_activity, spike_census,
    )

    batches = _batches(args, data, device)
    with checked_settings():
        costs = OperationEnergy(args.energy_per_sop, args.energy_per_mac)
    norm = feedback_norm(model)
    console.print(f"{path}: {config.model} on {config.dataset} {args.split} ({sum(len(y) for _, y in batches)} "
                  f"samples), trained at T={ckpt['config'].get('time_steps')}, device {device}")
    _print_feedback(console, norm)
    report: dict[str, Any] = {
        "kind": "analysis", "checkpoint": str(path), "model": config.model, "dataset": config.dataset,
        "split": args.split, "device": str(device), "trained_time_steps": ckpt["config"].get("time_steps"),
        "sections": list(sections), "feedback": norm, "producers": [],
    }
    x, y = batches[0]
    step_batch = min(config.batch_size, len(y))
    if step_batch < 2 and {"backward", "energy"} & set(sections):
        # Batch norm's batch statistics (training mode) need two samples or more.
        raise UsageError(f"the backward and energy sections run a training step, which needs at least 2 samples; "
                         f"the {args.split} split gives {step_batch} (use --samples >= 2 or another --split)")
    solver_names = args.b_solver or default_analysis_solvers()
    for name in names:
        model.set_producer(name, _producer_config(config, name))
        producer = model.producer
        entry: dict[str, Any] = {"producer": name, "leak": getattr(producer, "leak", None) if name != "if" else None,
                                 "time_steps": producer.time_steps}
        label = name.upper() + ("" if entry["leak"] is None else f" (λ={entry['leak']:g})")
        if "convergence" in sections:
            gaps = equilibrium_gap(model, batches, args.time_steps, f_solver=args.f_solver or "broyden",
                                   f_max_iter=args.f_max_iter or 100, f_tol=args.f_tol or 1e-6)
            entry["convergence"] = [dataclasses.asdict(g) for g in gaps]
            _print_convergence(console, label, gaps)
        if "activity" in sections or "energy" in sections:
            census = spike_census(model, batches)
            if "activity" in sections:
                activity = layer_activity(census)
                entry["activity"] = {"samples": census.samples, "time_steps": census.time_steps,
                                     "layers": [row.to_dict() for row in activity]}
                _print_activity(console, label, census, activity)
            if "energy" in sections:
                energy = energy_report(model, census, costs)
                entry["energy"] = energy.to_dict()
                entry["energy"]["training_step"] = _training_steps(model, config, x[:step_batch], y[:step_batch],
                                                                   solver_names, costs, args.spide_steps)
                _print_energy(console, label, entry["energy"])
        report["producers"].append(entry)
    if "backward" in sections:
        model.set_producer(names[0], _producer_config(config, names[0]))
        outcomes, reference = compare_backward(
            model, x[:step_batch], y[:step_batch], solver_names, b_max_iter=config.b_max_iter, b_tol=config.b_tol,
            spide_steps=args.spide_steps, seed=config.seed, repeats=args.repeats)
        ref = reference.summary()
        spide = f", spide {args.spide_steps}" if "spide" in solver_names else ""
        title = (f"backward solvers on one training step ({names[0]}, batch {step_batch}, at most {config.b_max_iter} "
                 f"steps{spide} to rel. {config.b_tol:g}); gradient error against broyden to rel. residual "
                 f"{ref['rel_residual_max']:.1e}")
        console.print(backward_table(title, outcomes, "∇θ error", f"backward ms (median of {args.repeats})"))
        report["backward"] = [dataclasses.asdict(o) for o in outcomes]
        report["backward_reference"] = ref
    return report


def _training_steps(model, config: RunConfig, x, y, solver_names, costs, spide_steps: int) -> list[dict[str, Any]]:
    """One training step's operations with the checkpoint's backward and each compared solver."""
    from ..analysis import backward_budget, training_step_cost

    adjoint = model.adjoint
    rows = []
    try:
        for name in dict.fromkeys([config.b_solver, *solver_names]):
            if name == config.b_solver:
                model.adjoint = adjoint
            else:
                model.set_backward(name, b_max_iter=backward_budget(name, config.b_max_iter, spide_steps),
                                   b_tol=config.b_tol)
            rows.append(training_step_cost(model, x, y, costs=costs, seed=config.seed).to_dict())
    finally:
        model.adjoint = adjoint
    return rows


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    return table


def _print_feedback(console: Console, norm: dict[str, Any]) -> None:
    condition = ("< 1: Theorem 2's convergence condition holds" if norm["norm_over_vth"] < 1
                 else "≥ 1: the convergence condition does not hold; the equilibrium may not be unique")
    scale = "" if norm["alpha_clipped"] is None else f", α = {norm['alpha_clipped']:.4f} (clip {norm['bound']:g})"
    console.print(f"feedback: ‖W‖₂ = {norm['operator_norm']:.4f}, ‖W‖₂/Vth = {norm['norm_over_vth']:.4f} "
                  f"({condition}){scale}")


def _print_convergence(console: Console, label: str, gaps) -> None:
    table = _table(f"{label}: simulated rates a_T against the equilibrium a* of f ({gaps[0].samples} samples, eval mode)",
                   ["T", "firing rate", "‖f(a_T)−a_T‖/‖a_T‖", "‖a_T−a*‖/‖a*‖", "same class", "acc. a_T", "acc. a*",
                    "a* converged"])
    for g in gaps:
        table.add_row(str(g.time_steps), f"{g.firing_rate:.4f}", f"{g.fixed_point_residual:.4f}", f"{g.distance:.4f}",
                      f"{g.agreement:.2%}", f"{g.accuracy_simulated:.2%}", f"{g.accuracy_equilibrium:.2%}",
                      f"{g.solve_converged:.0%}")
    console.print(table)


def _print_activity(console: Console, label: str, census, activity) -> None:
    table = _table(f"{label}: activity per layer at T={census.time_steps} ({census.samples} samples; rate = spikes/T)",
                   ["layer", "neurons", "firing rate", "silent", "saturated", "never fire", "always saturated",
                    "spikes/sample"])
    for row in activity:
        table.add_row(f"{row.layer} {tuple(row.shape)}", f"{row.neurons:,}", f"{row.firing_rate:.4f}",
                      f"{row.silent:.1%}", f"{row.saturated:.1%}", f"{row.never_firing:.1%}",
                      f"{row.always_saturated:.1%}", f"{row.spikes_per_sample:,.1f}")
    console.print(table)


def _print_energy(console: Console, label: str, energy: dict[str, Any]) -> None:
    sop, mac = energy["energy_per_sop_pj"], energy["energy_per_mac_pj"]
    table = _table(f"{label}: operations and energy per sample at T={energy['time_steps']} (assumed {sop:g} pJ per "
                   f"SOP, {mac:g} pJ per MAC)", ["synapses", "kind", "spikes in", "SOPs", "MACs", "energy nJ",
                                                 "non-spiking MACs", "non-spiking nJ"])
    for row in [*energy["layers"], {"name": "total", "kind": "", "spikes_per_sample": None, **energy["total"]}]:
        spikes = row.get("spikes_per_sample")
        table.add_row(row["name"], row["kind"], "—" if spikes is None else f"{spikes:,.1f}",
                      f"{row['sops_per_sample']:,.0f}", f"{row['macs_per_sample']:,.0f}",
                      f"{row['energy_pj'] / 1e3:,.2f}", f"{row['ann_macs_per_sample']:,.0f}",
                      f"{row['ann_energy_pj'] / 1e3:,.2f}")
    console.print(table)
    total = energy["total"]
    console.print(f"the non-spiking network needs {total['ann_over_snn']:.2f}× the spiking network's energy "
                  f"(an equilibrium ANN pays {total['ann_macs_per_iteration']:,.0f} MACs more per iteration)")
    steps = _table("one training step per sample (forward simulation + backward)",
                   ["solver", "VJPs", "fwd SOPs", "fwd MACs", "bwd MACs", "bwd spikes", "bwd SOPs", "nJ"])
    for row in energy["training_step"]:
        back = row["backward"]
        steps.add_row(row["solver"], str(back["vjps"]), f"{row['forward']['sops']:,.0f}",
                      f"{row['forward']['macs']:,.0f}",
                      f"{back.get('event_driven_macs', back['macs']):,.0f}",
                      "—" if "spikes" not in back else f"{back['spikes']:,.1f}",
                      "—" if "sops" not in back else f"{back['sops']:,.0f}", f"{row['energy_pj'] / 1e3:,.1f}")
    console.print(steps)

