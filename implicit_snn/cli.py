"""The ``implicit-snn`` command line: list solvers, producers and models; run the solver demo."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from rich.console import Console
from rich.table import Table

import models
import solvers

from . import producers
from .demo import compare_backward_solvers

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available; use --device cpu")
    return name


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``implicit-snn``; solver choices come from the registry at run time."""
    parser = argparse.ArgumentParser(
        prog="implicit-snn",
        description="Feedback spiking networks trained by implicit differentiation on the equilibrium state.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("solvers", help="list fixed-point solvers and equilibrium producers")
    sub.add_parser("models", help="list model presets")

    demo = sub.add_parser(
        "demo", help="compare backward solvers on a contractive implicit network against the dense gradient")
    names = solvers.available_solvers()
    demo.add_argument("--b_solver", "--b-solver", nargs="+", choices=names, default=[n for n in names if n != "exact"],
                      metavar="NAME", help=f"backward solvers to compare (from: {', '.join(names)})")
    demo.add_argument("--b_max_iter", "--b-max-iter", type=_positive_int, default=30)
    demo.add_argument("--b_tol", "--b-tol", type=_positive_float, default=1e-6)
    demo.add_argument("--dim", type=_positive_int, default=400, help="equilibrium units (default 400, as F400)")
    demo.add_argument("--batch-size", type=_positive_int, default=128)
    demo.add_argument("--norm", type=_positive_float, default=0.9, help="spectral norm of the feedback (< 1)")
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    demo.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _list_solvers(console: Console) -> None:
    table = Table(title="fixed-point solvers (forward of `analytic`, and the backward)")
    table.add_column("name")
    table.add_column("description")
    for name, line in solvers.describe_solvers().items():
        table.add_row(name, line)
    console.print(table)
    table = Table(title="equilibrium producers")
    table.add_column("name")
    table.add_column("description")
    for name, line in producers.describe_producers().items():
        table.add_row(name, line)
    console.print(table)


def _list_models(console: Console) -> None:
    names = models.available_models()
    if not names:
        console.print("no model presets are registered yet")
    for name in names:
        console.print(name)


def _demo(args: argparse.Namespace, console: Console) -> int:
    if args.norm >= 1:
        raise SystemExit(f"error: --norm must be below 1 for a contraction, got {args.norm}")
    device = _resolve_device(args.device)
    console.print(
        f"implicit network f(a, x) = tanh(W a + U x + b), D={args.dim}, batch {args.batch_size}, "
        f"‖W‖₂={args.norm}, {args.dtype} on {device}; backward: at most {args.b_max_iter} steps to "
        f"relative residual {args.b_tol:g}; gradient error against the dense implicit-function-theorem gradient"
    )
    rows = compare_backward_solvers(
        args.b_solver, dim=args.dim, batch=args.batch_size, norm=args.norm, max_iter=args.b_max_iter,
        tol=args.b_tol, dtype=DTYPES[args.dtype], device=device, seed=args.seed,
    )
    table = Table(title="backward solvers")
    table.add_column("solver", no_wrap=True)
    for column in ("VJPs", "rel. res.", "conv.", "status", "dW error", "ms"):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    for row in rows:
        table.add_row(row.solver, str(row.n_evals), f"{row.rel_residual:.2e}", f"{row.converged:.0%}",
                      row.status, f"{row.grad_error:.2e}", f"{row.milliseconds:.1f}")
    console.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``implicit-snn`` console script."""
    args = build_parser().parse_args(argv)
    # Piped output gets a fixed, wide layout instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.command == "solvers":
        _list_solvers(console)
    elif args.command == "models":
        _list_models(console)
    elif args.command == "demo":
        return _demo(args, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
