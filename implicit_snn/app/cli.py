"""The ``implicit-snn`` command line: train, eval, list models/solvers, run the solver demo."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table

import models
import solvers

from .. import bptt, producers
from ..classifier import ImplicitClassifier
from ..data import available_datasets
from ..files import WriteError
from ..network import BN_BACKWARDS
from ..spectral import SpectralNorm
from ..nonfinite import NONFINITE
from . import figures, interchange, plotting
from ._allocator import retain_freed_memory
from ..analysis import SPIDE_STEPS, OperationEnergy
from ..precision import PRECISIONS
from .analyze import REPORT_NAME, SECTIONS, run_analyze
from .commands import backward_table, run_eval
from .config import ALLOWED, NONNEG_INT, NONNEG_NUMBER, POS_INT, POS_NUMBER
from .errors import UsageError, UsageExit, checked_settings, flag_message
from .rundir import RunDir
from .train import SETTINGS, run_train


def _typed(kind: type, allowed: tuple[Callable[[Any], bool], str]) -> Callable[[str], Any]:
    """An argparse type: parse ``kind``, then check it; either failure names what is allowed."""
    ok, words = allowed

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text!r}")
        return value

    return parse


def _setting(name: str, kind: type = float) -> Callable[[str], Any]:
    """The argparse type of the run setting ``name``: the range the config file is held to too."""
    return _typed(kind, ALLOWED[name])


_positive_int = _typed(int, POS_INT)
_positive_float = _typed(float, POS_NUMBER)
_nonnegative_float = _typed(float, NONNEG_NUMBER)


# Shell-style spellings of a bool; Python's True/False are read by literal_eval.
_BOOLS = {"true": True, "yes": True, "false": False, "no": False}


def _option(text: str) -> tuple[str, Any]:
    """A ``KEY=VALUE`` solver option: VALUE as a Python literal (``5``, ``0.5``, ``True``), a bool
    for true/false/yes/no in any case, else the text itself."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = (part.strip() for part in text.split("=", 1))
    if value.lower() in _BOOLS:
        return key, _BOOLS[value.lower()]
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add ``--name`` with its other spelling (underscores and dashes) as an alias."""
    spellings = [f"--{name}"]
    other = name.replace("_", "-") if "_" in name else name.replace("-", "_")
    if other != name:
        spellings.append(f"--{other}")
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


def _add_figure_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=plotting.FORMATS, default="png", help="figure format (default png)")
    parser.add_argument("--no-plots", "--no_plots", dest="no_plots", action="store_true",
                        help="write the JSON report only (figures need matplotlib: pip install 'implicit-snn[plot]')")


def _add_model_flags(parser: argparse.ArgumentParser, *, for_eval: bool = False) -> None:
    names = solvers.available_solvers()
    _flag(parser, "producer", choices=producers.available_producers(), help="equilibrium producer")
    if for_eval:
        _flag(parser, "time_steps", type=_setting("time_steps", int), nargs="+", metavar="T",
              help="simulation steps T; several values evaluate the checkpoint at each (the paper's Table 2)")
    else:
        _flag(parser, "time_steps", type=_setting("time_steps", int), help="simulation steps T")
    _flag(parser, "sim_precision", choices=PRECISIONS,
          help="the spiking simulation's synaptic products: fp32 (default), bf16 (potentials and rates stay "
               "fp32; IDE's backward is fp32 either way; BPTT runs under bf16 autocast), or auto (bf16 where the "
               "device multiplies it natively: CUDA, or a CPU with AVX512-BF16 or AMX)")
    _flag(parser, "leak", type=_setting("leak"), help="LIF leak λ")
    _flag(parser, "f_solver", choices=solvers.nonlinear_solvers(),
          help="forward solver of the analytic producer (solvers for nonlinear maps only)")
    _flag(parser, "f_max_iter", type=_setting("f_max_iter", int))
    _flag(parser, "f_tol", type=_setting("f_tol"))
    _flag(parser, "f_stop_mode", choices=["rel", "abs"])
    _flag(parser, "f_options", type=_option, nargs="+", action="extend", metavar="KEY=VALUE",
          help="forward solver options, e.g. memory=10 (one or more; repeatable)")
    _flag(parser, "b_solver", choices=names,
          help=f"backward (adjoint) solver (default: the preset's: {_preset_backwards()}; --b_solver broyden is the "
               "paper's backward; see docs/results.md)")
    _flag(parser, "b_max_iter", type=_setting("b_max_iter", int), help="the backward solver's step cap (>= 1)")
    _flag(parser, "b_tol", type=_setting("b_tol"),
          help="adjoint tolerance of a solving backward (default 1e-6; a fixed-budget one, phantom or spide, runs its "
               "budget whatever the tolerance and reports the residual it reached)")
    _flag(parser, "b_stop_mode", choices=["rel", "abs"])
    _flag(parser, "b_options", type=_option, nargs="+", action="extend", metavar="KEY=VALUE",
          help="backward solver options, e.g. memory=10, or steps=0 with --b_solver phantom for the Jacobian-free "
               "gradient (one or more; repeatable)")
    _flag(parser, "data_root", help="folder with the dataset's files")
    _flag(parser, "download", action="store_const", const=True,
          help="download a missing dataset into --data-root where the network allows (torchvision's sources)")
    parser.add_argument("--no-verify-data", dest="verify_data", action="store_const", const=False,
                        help="load files that are not the published ones (a variant of your own in the same format)")
    _flag(parser, "device", help="cpu, cuda or auto")
    _flag(parser, "threads", type=_setting("threads", int), help="CPU threads for torch")
    if not for_eval:
        _flag(parser, "method", choices=ImplicitClassifier.METHODS,
              help="ide (implicit differentiation, default) or bptt (backpropagation through time of the simulation)")
        _flag(parser, "surrogate", choices=bptt.available_surrogates(),
              help="bptt's surrogate spike derivative (default sigmoid)")
        _flag(parser, "surrogate-slope", type=_setting("surrogate_slope"),
              help="the surrogate's slope (default: sigmoid 4; rectangular 1, its peak height, width 1/slope)")
        _flag(parser, "vth", type=_setting("vth"), help="firing threshold (2.0 in the paper)")
        _flag(parser, "dropout", type=_setting("dropout"))
        _flag(parser, "operator_norm", action="store_const", const=True,
              help="constrain the conv feedback's true operator norm")
        _flag(parser, "bn_momentum", type=_setting("bn_momentum"),
              help="batch norm's running-statistics rate (0.1; the reference code's double update is 0.19)")
        _flag(parser, "bn_backward", choices=BN_BACKWARDS,
              help="in training, what the differentiated f normalises layers 2..N with: their batch statistics "
                   "(batch, the paper's, default) or the running statistics the simulation used (simulated: the "
                   "gradient of the computed loss)")
        _flag(parser, "alpha_init", choices=SpectralNorm.ALPHA_INITS,
              help="spectral-norm scale α starts at min(‖W‖, 1) (bound, default) or at ‖W‖ as the reference (norm)")


def _preset_backwards() -> str:
    """The presets' backward solvers where they differ from the library's (Broyden), for the help."""
    named = [f"{name}: {p.b_solver}" + "".join(f" {k}={v}" for k, v in p.b_options.items())
             for name, p in models.PRESETS.items() if p.b_solver is not None]
    return "; ".join(named + ["otherwise broyden"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``implicit-snn``; solver and producer choices come from the registries."""
    parser = argparse.ArgumentParser(
        prog="implicit-snn",
        description="Feedback spiking networks trained by implicit differentiation on the equilibrium state.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of usage errors too (other errors always show theirs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (default: F400 on Fashion-MNIST with the paper's settings)")
    _flag(train, "model", help=f"a preset ({', '.join(models.available_models())}) or a spec like '400 (F400)'")
    _flag(train, "dataset", choices=available_datasets())
    _add_model_flags(train)
    _flag(train, "epochs", type=_setting("epochs", int))
    _flag(train, "batch_size", type=_setting("batch_size", int))
    _flag(train, "test_batch_size", type=_setting("test_batch_size", int))
    _flag(train, "lr", type=_setting("lr"))
    _flag(train, "momentum", type=_setting("momentum"))
    _flag(train, "weight_decay", type=_setting("weight_decay"))
    _flag(train, "milestones", type=_typed(int, NONNEG_INT), nargs="*", help="epochs (0-based) where lr is multiplied by gamma")
    _flag(train, "gamma", type=_setting("gamma"))
    _flag(train, "warmup_iters", type=_setting("warmup_iters", int))
    _flag(train, "nonfinite", choices=NONFINITE,
          help="at a NaN or inf in the loss, a gradient or a parameter: stop the run (default; the last checkpoint "
               "stays the last good one) or skip the step")
    _flag(train, "max_skipped_steps", type=_setting("max_skipped_steps", int),
          help="with --nonfinite skip, more skipped steps than this in one epoch stop the run (default 10)")
    _flag(train, "val_size", type=_setting("val_size", int),
          help="validation samples carved from the training set (default 5000, or a tenth of a smaller one; 0: none)")
    _flag(train, "seed", type=_setting("seed", int))
    _flag(train, "out", help="run directory (default runs/MODEL-DATASET-PRODUCER-seedN)")
    train.add_argument("--config", help="settings file (TOML, YAML or JSON); flags override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="start afresh in an existing run directory")
    train.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="DIR",
                       help="write every epoch's metrics as TensorBoard scalars to DIR (default RUN_DIR/tensorboard; "
                            "needs pip install 'implicit-snn[tensorboard]'); give it again with --resume")

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint (optionally with another producer, T or solver) "
                                           "or a NIR graph")
    evaluate.add_argument("checkpoint", help="a checkpoint file, a run directory (uses its best, else last), or a "
                                             "NIR graph (.nir: replayed for its T steps; needs --dataset)")
    _flag(evaluate, "dataset", choices=available_datasets(), help="the data to evaluate a NIR graph on")
    evaluate.add_argument("--dtype", choices=sorted(interchange.DTYPES), default="float32",
                          help="NIR graphs: the precision of the replay (default float32)")
    evaluate.add_argument("--split", choices=["test", "val", "train"], default="test")
    evaluate.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_positive_int, default=200)
    evaluate.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON (with several T, "
                          "the accuracy and firing rate against T as a figure beside it)")
    _add_figure_flags(evaluate)
    _add_model_flags(evaluate, for_eval=True)

    analyze = sub.add_parser("analyze", help="what a trained model does: the simulation's distance to the "
                             "equilibrium over T, every backward solver on one training step, per-layer activity, "
                             "synaptic operations and energy; a JSON report and figures")
    analyze.add_argument("checkpoint", help="a checkpoint file or a run directory (uses its best, else last)")
    analyze.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                         help=f"what to measure (default all: {' '.join(SECTIONS)}); the feedback norm always")
    analyze.add_argument("--split", choices=["test", "val", "train"], default="test")
    analyze.add_argument("--samples", type=_positive_int, default=1000, help="samples measured (default 1000)")
    analyze.add_argument("--batch-size", "--batch_size", dest="batch_size", type=_positive_int, default=200)
    _flag(analyze, "producer", choices=["if", "lif"], nargs="+", metavar="NAME",
          help="neuron models to simulate on the same weights, e.g. 'lif if' (default: the checkpoint's)")
    _flag(analyze, "time_steps", type=_setting("time_steps", int), nargs="+", metavar="T", default=[1, 2, 5, 10, 30, 100],
          help="convergence: simulation lengths compared with the equilibrium (default 1 2 5 10 30 100); activity "
               "and energy run at the checkpoint's T")
    _flag(analyze, "leak", type=_setting("leak"), help="LIF leak λ")
    names = solvers.available_solvers()
    _flag(analyze, "f_solver", choices=solvers.nonlinear_solvers(),
          help="solver for the equilibrium a* of f (default broyden; solvers for nonlinear maps only)")
    _flag(analyze, "f_max_iter", type=_setting("f_max_iter", int), help="its step cap (default 100)")
    _flag(analyze, "f_tol", type=_setting("f_tol"), help="its relative tolerance (default 1e-6)")
    _flag(analyze, "b_solver", nargs="+", choices=names, metavar="NAME",
          help="backward solvers to compare and to cost a training step with (default: all but exact; torchdeq's "
               "where installed)")
    _flag(analyze, "b_max_iter", type=_setting("b_max_iter", int))
    _flag(analyze, "b_tol", type=_setting("b_tol"))
    analyze.add_argument("--spide-steps", "--spide_steps", dest="spide_steps", type=_positive_int,
                         default=SPIDE_STEPS, metavar="T",
                         help=f"the spike-based backward's T when compared (default {SPIDE_STEPS}, SPIDE's CIFAR "
                              "budget; its error falls like 1/T, so the other solvers' step cap is far too short for it)")
    analyze.add_argument("--repeats", type=_positive_int, default=3, help="timed backward steps per solver (median)")
    analyze.add_argument("--energy-per-sop", "--energy_per_sop", dest="energy_per_sop", type=_nonnegative_float,
                         default=OperationEnergy.per_sop_pj, metavar="PJ",
                         help="assumed energy of one spike-triggered accumulate (default 0.9 pJ, 45 nm)")
    analyze.add_argument("--energy-per-mac", "--energy_per_mac", dest="energy_per_mac", type=_nonnegative_float,
                         default=OperationEnergy.per_mac_pj, metavar="PJ",
                         help="assumed energy of one multiply-accumulate (default 4.6 pJ, 45 nm)")
    _flag(analyze, "data_root", help="folder with the dataset's files")
    analyze.add_argument("--no-verify-data", dest="verify_data", action="store_const", const=False,
                         help="load files that are not the published ones")
    _flag(analyze, "device", help="cpu, cuda or auto")
    _flag(analyze, "threads", type=_setting("threads", int), help="CPU threads for torch")
    analyze.add_argument("--out", metavar="DIR",
                         help=f"folder for {REPORT_NAME} and its figures (default: the run directory, or the "
                              "checkpoint's folder)")
    analyze.add_argument("--json", metavar="FILE", help="the JSON report's path instead (figures beside it)")
    _add_figure_flags(analyze)

    plot = sub.add_parser("plot", help="one figure: per-epoch curves of runs, or the JSON reports of analyze/eval "
                                       "(convergence to the equilibrium, accuracy against T, activity, energy; "
                                       "needs matplotlib)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_REPORT",
                      help=f"run directories (their {RunDir.METRICS}), or JSON reports of analyze --json / eval --json")
    plot.add_argument("--out", required=True, help="figure file: .png, .pdf or .svg")
    plot.add_argument("--figure", choices=list(figures.FIGURES),
                      help="what to draw (default: curves for run directories, convergence for analysis reports, "
                           "time-steps for eval reports; activity and energy draw one analysis report)")
    # No argparse default: a --metrics given with JSON reports is refused, not silently ignored.
    plot.add_argument("--metrics", nargs="+", choices=list(plotting.METRICS), metavar="NAME",
                      help=f"curves only: one panel each (default {' '.join(plotting.DEFAULT_METRICS)}; "
                           f"from: {', '.join(plotting.METRICS)})")
    plot.add_argument("--labels", nargs="+", metavar="LABEL",
                      help="legend entries, one per run or report (default: folder names; a report's neuron model)")
    plot.add_argument("--title")

    export = sub.add_parser("export", help="write a trained network as a NIR graph (docs/nir.md)")
    export.add_argument("checkpoint", help="a checkpoint file or a run directory (uses its best, else last)")
    export.add_argument("--out", required=True, help="the NIR file to write, e.g. model.nir")
    export.add_argument("--mode", choices=["exact", "portable"], default="exact",
                        help="exact (reset by subtraction as a Scale edge; default) or portable (NIR LIF/IF nodes, "
                             "which reset to zero: lossy, needs --lossy)")
    export.add_argument("--lossy", action="store_true", help="accept the portable mode's lossy conversion")
    export.add_argument("--dtype", choices=sorted(interchange.DTYPES), default="float32",
                        help="the precision of the graph's arrays (default float32)")

    sub.add_parser("solvers", help="list fixed-point solvers and equilibrium producers")
    sub.add_parser("models", help="list model presets with neuron and parameter counts")

    demo = sub.add_parser("demo", help="compare backward solvers on a contractive implicit layer")
    names = solvers.available_solvers()
    _flag(demo, "b_solver", nargs="+", choices=names, default=[n for n in names if n != "exact"], metavar="NAME",
          help=f"backward solvers to compare (from: {', '.join(names)})")
    _flag(demo, "b_max_iter", type=_positive_int, default=30)
    _flag(demo, "b_tol", type=_positive_float, default=1e-6)
    demo.add_argument("--dim", type=_positive_int, default=400, help="equilibrium units (default 400, as F400)")
    _flag(demo, "batch_size", type=_positive_int, default=128)
    demo.add_argument("--norm", type=_positive_float, default=0.9, help="spectral norm of the feedback (< 1)")
    demo.add_argument("--dtype", choices=sorted(interchange.DTYPES), default="float32")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    for command in (parser, *sub.choices.values()):
        command.allow_abbrev = False  # a flag is its full name: a prefix of one (say an old, shorter name) is refused
    return parser


def _described(title: str, lines: dict[str, str]) -> Table:
    """A table of registered names and their one-line descriptions."""
    table = Table(title=title)
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name, line in lines.items():
        table.add_row(name, line)
    return table


def _list_solvers(console: Console) -> None:
    console.print(_described("fixed-point solvers (forward of `analytic`, and the backward)", solvers.describe_solvers()))
    console.print(_described("equilibrium producers", producers.describe_producers()))


def _list_models(console: Console) -> None:
    from .build import count_model

    table = Table(title="model presets (10 classes)")
    for column in ("name", "network", "default data", "neurons", "+ inputs", "parameters"):
        table.add_column(column, no_wrap=column != "network")
    for name, preset in models.PRESETS.items():
        neurons, inputs, params = count_model(name)
        table.add_row(name, preset.spec, preset.dataset, f"{neurons:,}",
                      f"{neurons + inputs:,}", f"{params:,}")
    console.print(table)
    others = {name: line for name, line in models.describe_models().items() if name not in models.PRESETS}
    if others:
        console.print(_described("other registered models", others))


def _demo(args: argparse.Namespace, console: Console) -> int:
    from .build import resolve_device
    from .demo import compare_backward_solvers

    if args.norm >= 1:
        raise UsageError(f"--norm must be below 1 for a contraction, got {args.norm}")
    device = resolve_device(args.device)
    console.print(
        f"implicit layer f(a, x) = tanh(W a + U x + b), D={args.dim}, batch {args.batch_size}, ‖W‖₂={args.norm}, "
        f"{args.dtype} on {device}; backward: at most {args.b_max_iter} steps to relative residual {args.b_tol:g}; "
        "dW error against the exact solver's gradient (a dense LU solve of each sample's adjoint)"
    )
    rows = compare_backward_solvers(
        args.b_solver, dim=args.dim, batch=args.batch_size, norm=args.norm, b_max_iter=args.b_max_iter,
        b_tol=args.b_tol, dtype=interchange.DTYPES[args.dtype], device=str(device), seed=args.seed,
    )
    console.print(backward_table("backward solvers", rows, "dW error", "ms"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``implicit-snn`` console script."""
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # steps reuse their memory instead of page-faulting it in again
    # Piped output gets a fixed, wide layout instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        return _run_command(args, console)
    except (UsageError, WriteError) as error:  # WriteError: a full disk, say, named by the file
        if args.debug:
            raise
        message = f"error: {flag_message(str(error), SETTINGS)}"
        print(message, file=sys.stderr)
        raise UsageExit(message) from None


def _run_command(args: argparse.Namespace, console: Console) -> int:
    if args.command == "train":
        return run_train(args, console)
    if args.command == "eval":
        if interchange.is_nir_file(args.checkpoint):
            return interchange.run_eval_nir(args, console)
        if args.dataset is not None or args.dtype != "float32":
            raise UsageError("--dataset and --dtype apply to NIR graphs; a checkpoint is evaluated on its own dataset")
        return run_eval(args, console)
    if args.command == "export":
        return interchange.run_export(args, console)
    if args.command == "analyze":
        return run_analyze(args, console)
    if args.command == "plot":
        with checked_settings():
            path = figures.plot_files(args.runs, args.out, figure=args.figure, metrics=args.metrics, labels=args.labels,
                                      title=args.title)
        console.print(f"wrote {path}")
    elif args.command == "solvers":
        _list_solvers(console)
    elif args.command == "models":
        _list_models(console)
    elif args.command == "demo":
        return _demo(args, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
