"""The commands that read a checkpoint: ``eval`` (accuracy, at one or several T), and what it
shares with ``analyze`` (``implicit_snn.app.analyze``): loading a checkpoint and its settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

from ..data import dataset_info
from ..files import atomic_write_text, check_writable
from .config import RunConfig, check_producer_settings
from .errors import UsageError, checked_settings
from .rundir import RunDir, load_checkpoint as read_checkpoint

# Settings a checkpoint command may override; the rest describe the trained model and stay.
_OVERRIDABLE = ("producer", "leak", "sim_precision", "f_solver", "f_max_iter", "f_tol", "f_stop_mode", "f_options",
                "b_solver", "b_max_iter", "b_tol", "b_stop_mode", "b_options", "data_root", "download", "verify_data",
                "device", "threads")


def cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given on the command line (None where a flag was not given)."""
    values = {name: getattr(args, name, None) for name in RunConfig.field_names()}
    for name in ("b_options", "f_options"):  # KEY=VALUE pairs, as a dict
        options = getattr(args, name, None)
        values[name] = dict(options) if options else None
    return values


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_checkpoint(where: str, warn: Callable[[str], None] = _warn) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or a run directory's best checkpoint (else its last, and the last too where
    the best cannot be used: ``warn`` is told why), loaded on the CPU."""
    if Path(where).is_dir():
        run = RunDir(where)
        path, checkpoint, warnings = run.load_for_eval()
        for message in warnings:
            warn(message)
        check_run_model(run, path, checkpoint)
    else:
        path, checkpoint = Path(where), read_checkpoint(where)
    check_finite(path, checkpoint)
    return path, checkpoint


# The settings that say which model a checkpoint holds and how it was trained to run; a run's
# config.json and its checkpoints agree on them (only RESUME_MAY_CHANGE's may differ).
MODEL_SETTINGS = ("model", "dataset", "producer", "time_steps", "leak", "vth", "method", "surrogate",
                  "surrogate_slope", "operator_norm", "bn_momentum", "bn_backward", "alpha_init", "dropout")


def check_run_model(run: RunDir, path: Path, checkpoint: dict[str, Any]) -> None:
    """Refuse (``UsageError``) a run folder whose checkpoint ``path`` holds another model than its
    config.json describes (a checkpoint copied in from another run), as ``train --resume`` does;
    a folder without config.json has nothing to compare."""
    if not run.config_file.exists():
        return
    defaults = RunConfig().to_dict()  # settings added after a run was made read as their defaults
    saved, trained = {**defaults, **run.read_config()}, {**defaults, **checkpoint.get("config", {})}
    differ = {k: (saved[k], trained[k]) for k in MODEL_SETTINGS if saved[k] != trained[k]}
    if differ:
        raise UsageError(f"{run.config_file} disagrees with the run's checkpoint {path} in {differ} (config.json, "
                         "checkpoint): the checkpoint holds another model; give the checkpoint file itself to "
                         "evaluate it as what it is, or put the run's own checkpoint back")


def check_finite(path: Path, checkpoint: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model holds a NaN or inf: its accuracy would mean nothing."""
    for name, tensor in checkpoint.get("model", {}).items():
        bad = int((~torch.isfinite(tensor)).sum()) if torch.is_tensor(tensor) and tensor.is_floating_point() else 0
        if bad:
            raise UsageError(f"{path}: the model's {name} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                             f"(NaN or inf) of {tensor.numel()}; use a checkpoint from before it (training stops "
                             "at a non-finite number and keeps the last good checkpoint)")


def checkpoint_config(ckpt: dict[str, Any], settings: dict[str, Any]) -> RunConfig:
    """The checkpoint's run settings with the overridable ones replaced where given."""
    overrides = {k: v for k, v in settings.items() if v is not None and k in _OVERRIDABLE}
    config = RunConfig(**{**ckpt["config"], **overrides})
    check_producer_settings(config.producer, set(overrides))
    return config


def load_data(config: RunConfig, split: str):
    from .build import load_split

    data = load_split(config, split)
    if data is None:
        raise UsageError("this run has no validation split (val_size 0)")
    return data


def run_eval(args: argparse.Namespace, console: Console) -> int:
    """``implicit-snn eval``: a checkpoint on a split, at one or several T, as a table (and JSON)."""
    from .build import model_from_config, producer_settings, resolve_device
    from ..training import evaluate

    with checked_settings():
        path, ckpt, base, sweep = _eval_settings(args)
    if base.threads:
        torch.set_num_threads(base.threads)
    device = resolve_device(base.device)
    model = None
    rows: list[dict[str, Any]] = []
    for time_steps in sweep:
        with checked_settings():
            config = RunConfig(**{**base.to_dict(), "time_steps": time_steps})
            # Spike datasets are binned into T frames, so each T needs its own data; images load once.
            if model is None or dataset_info(config.dataset).input_kind == "spikes":
                data = load_data(config, args.split)
            if model is None:
                model = model_from_config(config, data.info.num_classes, data.info.in_shape)
                model.load_state_dict(ckpt["model"])
                model.to(device)
            model.set_producer(config.producer or "lif", producer_settings(config))
        rows.append({"time_steps": time_steps, **evaluate(model, data, batch_size=args.batch_size, device=device)})
    _print_eval(args, console, path, ckpt, base, data, rows)
    return 0


def _eval_settings(args: argparse.Namespace) -> tuple[Path, dict[str, Any], RunConfig, list]:
    """The checkpoint, its settings with the command line's overrides, and the T values to evaluate."""
    if args.json:
        check_writable(args.json)  # before the evaluation, not after it
    path, ckpt = load_checkpoint(args.checkpoint)
    settings = cli_settings(args)
    sweep = settings.pop("time_steps") or [ckpt["config"].get("time_steps")]
    base = checkpoint_config(ckpt, settings)
    if base.producer == "analytic" and base.method == "bptt":
        # Evaluation has no gradient, so the training method plays no part: a BPTT-trained model
        # is evaluated at the analytic equilibrium like any other.
        base = dataclasses.replace(base, method="ide")
    if base.producer == "analytic" and args.time_steps:
        raise UsageError("`time_steps` does not apply to the analytic producer (it has no simulation to run for T steps)")
    if base.producer == "analytic":
        sweep = [None]
    return path, ckpt, base, sweep


def _print_eval(args, console, path, ckpt, base, data, rows) -> None:
    trained = ckpt["config"].get("method", "ide")
    producer = base.producer or "lif"  # unset in the runs of spec-string models: the library's default
    console.print(f"{path} on {base.dataset} {args.split} ({len(data)} samples), producer {producer}"
                  + (", trained by BPTT" if trained == "bptt" else ""))
    table = Table()
    for column in ("T", "accuracy", "loss", "firing rate", "forward solver"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        rate, statuses = row.get("firing_rate"), row.get("forward_status")
        table.add_row("—" if row["time_steps"] is None else str(row["time_steps"]), f"{row['acc']:.2%}",
                      f"{row['loss']:.4f}", "—" if rate is None else f"{rate:.4f}",
                      "—" if statuses is None else ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    console.print(table)
    if args.json:
        report = {"kind": "eval", "checkpoint": str(path), "dataset": base.dataset, "split": args.split,
                  "samples": len(data), "producer": producer, "leak": base.leak if producer == "lif" else None,
                  "trained_method": trained, "results": rows}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        if len(rows) > 1 and not args.no_plots:
            from .figures import plot_time_steps

            # Accuracy and firing rate against T beside the report: the paper's Table 2 as a figure.
            out = Path(args.json).with_suffix("." + args.format)
            draw_figures(console, lambda: [plot_time_steps([report], out)])


def draw_figures(console: Console, draw: Callable[[], list[Path]]) -> None:
    """Run ``draw`` and name the files it wrote; without matplotlib say so, since the JSON report
    beside them is complete anyway."""
    try:
        paths = draw()
    except ModuleNotFoundError as missing:
        if "matplotlib" not in str(missing):  # a missing module of ours is a bug, not an option
            raise
        console.print(f"no figures drawn ({missing}); the JSON report is complete")
        return
    for path in paths:
        console.print(f"wrote {path}")


def backward_table(title: str, rows, error_label: str, time_label: str) -> Table:
    """A table of ``BackwardOutcome`` rows (``demo`` and ``analyze``)."""
    table = Table(title=title)
    table.add_column("solver", no_wrap=True)
    for column in ("VJPs", "rel. res.", "conv.", "status", error_label, time_label):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    for row in rows:
        table.add_row(row.solver, str(row.n_evals), f"{row.rel_residual:.2e}", f"{row.converged:.0%}", row.status,
                      f"{row.grad_error:.2e}", f"{row.milliseconds:.1f}")
    return table
