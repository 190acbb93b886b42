"""``implicit-snn export`` (a checkpoint as a NIR graph) and ``eval`` of a NIR graph."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..files import atomic_write_text, check_writable
from .config import RunConfig
from .errors import UsageError, checked_settings

#: The precisions a command runs in by name (export, eval of a NIR graph, demo).
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def is_nir_file(where: str) -> bool:
    """Whether ``where`` names a NIR file (by its .nir suffix, or an HDF5 signature in a file)."""
    path = Path(where)
    if path.suffix == ".nir":
        return True
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _nir():
    try:
        from .. import nir as interchange

        interchange.require_nir()
    except ModuleNotFoundError as missing:
        raise UsageError(str(missing)) from None
    return interchange


def run_export(args: argparse.Namespace, console: Console) -> int:
    """``implicit-snn export RUN_DIR|CHECKPOINT --out FILE.nir [--mode portable --lossy]``."""
    from .build import model_from_config, producer_settings
    from .commands import load_checkpoint

    interchange = _nir()
    with checked_settings():
        check_writable(args.out)
        path, ckpt = load_checkpoint(args.checkpoint)
        config = RunConfig(**ckpt["config"])
        if config.producer == "analytic":
            raise UsageError(f"{path} was trained with the analytic producer, which has no spiking equivalent to "
                             "export; NIR graphs hold spiking networks (if, lif)")
        from ..data import dataset_info

        info = dataset_info(config.dataset)
        model = model_from_config(config, info.num_classes, info.in_shape)
        model.load_state_dict(ckpt["model"])
        model.set_producer(config.producer or "lif", producer_settings(config))
        model.to(DTYPES[args.dtype]).eval()
        try:
            graph = interchange.to_nir(model, mode=args.mode, lossy=args.lossy)
        except interchange.NIRExportError as error:
            raise UsageError(str(error)) from None
        interchange.write(graph, args.out)
    meta = graph.metadata
    console.print(f"wrote {args.out}: {path} as a NIR graph ({args.mode}, {len(graph.nodes)} nodes, "
                  f"{len(graph.edges)} edges, T={meta['time_steps']}, leak {meta['leak']:g}, dt {meta['dt']:g}, "
                  f"{args.dtype})")
    if args.mode == "portable":
        console.print("portable mode: neurons reset to zero instead of by subtraction; the graph is not the trained "
                      "network (see docs/nir.md for the measured loss)")
    return 0


def run_eval_nir(args: argparse.Namespace, console: Console) -> int:
    """``implicit-snn eval MODEL.nir --dataset NAME``: the graph replayed on a split, its accuracy."""
    from .build import load_split
    from ..training import evaluate

    from .commands import cli_settings

    interchange = _nir()
    with checked_settings():
        ignored = sorted(k for k, v in cli_settings(args).items()
                         if v is not None and k not in ("dataset", "data_root", "verify_data", "time_steps", "batch_size"))
        if ignored:
            raise UsageError(f"not used for a NIR graph, which fixes its network and neurons: "
                             f"{', '.join('--' + k.replace('_', '-') for k in ignored)}; a graph takes --dataset, "
                             "--data-root, --time-steps, --split, --batch-size, --dtype and --json")
        if args.dataset is None:
            raise UsageError("eval of a NIR graph needs --dataset (a graph does not say what it was trained on)")
        if args.json:
            check_writable(args.json)
        times = args.time_steps or [None]
        if len(times) > 1:
            raise UsageError("eval of a NIR graph runs at one T (--time-steps T)")
        try:
            model = interchange.from_nir(args.checkpoint, time_steps=times[0], dtype=DTYPES[args.dtype])
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error)) from None
        config = RunConfig(dataset=args.dataset, data_root=args.data_root, time_steps=model.time_steps,
                           verify_data=True if args.verify_data is None else args.verify_data)
        data = load_split(config, args.split)
        if data is None:
            raise UsageError("a NIR graph has no validation split; use --split test or train")
        if tuple(data.info.in_shape) != tuple(model.in_shape):
            raise UsageError(f"the graph takes inputs of shape {model.in_shape}, {args.dataset} has "
                             f"{tuple(data.info.in_shape)}")
    result = evaluate(_Cast(model, DTYPES[args.dtype]), data, batch_size=args.batch_size, device=torch.device("cpu"))
    console.print(f"{args.checkpoint} (NIR, T={model.time_steps}, {args.dtype}) on {args.dataset} {args.split} "
                  f"({len(data)} samples)")
    table = Table()
    for column in ("T", "accuracy", "loss"):
        table.add_column(column, justify="right")
    table.add_row(str(model.time_steps), f"{result['acc']:.2%}", f"{result['loss']:.4f}")
    console.print(table)
    if args.json:
        report: dict[str, Any] = {"kind": "eval", "checkpoint": str(args.checkpoint), "format": "nir",
                                  "dataset": args.dataset, "split": args.split, "samples": len(data),
                                  "dtype": args.dtype, "results": [{"time_steps": model.time_steps, **result}]}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


class _Cast(torch.nn.Module):
    """The replay, fed inputs in its dtype (datasets hold float32)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype))
