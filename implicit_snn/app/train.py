"""``implicit-snn train``: the run directory locked, the settings resolved and checked (a resumed
run's against its checkpoint), the trainer built, then the training run and its ending."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

import solvers

from .. import bptt, distributed
from ..distributed import Context
from ..files import check_writable
from ..nonfinite import NonFiniteError
from . import tensorboard_log
from .commands import cli_settings
from .config import RunConfig, read_config_file, resolve
from .errors import UsageError, checked_settings, flag_message
from .report import Report
from .run import Interrupted, StopRequest, TrainingRun
from .rundir import RunDir, default_run_name
from .runlock import RunLock

SETTINGS = frozenset(RunConfig.field_names())  # library arguments that name a run setting


def _default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / default_run_name(config.model, config.dataset, config.producer, config.method, config.seed)


def _tensorboard_dir(args: argparse.Namespace, config: RunConfig) -> Optional[Path]:
    """The folder ``--tensorboard`` writes to (``RUN_DIR/tensorboard`` without DIR), or None."""
    return tensorboard_log.log_dir(getattr(args, "tensorboard", None), config.out)


def run_train(args: argparse.Namespace, console: Console) -> int:
    """``implicit-snn train``: lock the run directory, check every setting, then train into it."""
    from .build import resolve_device

    with checked_settings():
        file_values = read_config_file(args.config) if args.config else {}
        cli_values = cli_settings(args)
        config = resolve(file_values, cli_values)
        given = {k for k, v in {**file_values, **cli_values}.items() if v is not None}
        config.out = str(Path(config.out) if config.out else _default_run_dir(config))
        if args.resume and args.overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        board = _tensorboard_dir(args, config)
        if board is not None:
            tensorboard_log.check_available()  # a missing package is one line before anything is made
    run_dir = RunDir(config.out)
    run_dir.check_writable()  # creates nothing: an --out that cannot take a run is refused before the lock
    if board is not None:
        check_writable(board, folder=True)
    # One train per run directory, locked before it is checked, so nothing changes between check and write.
    # Under torchrun rank 0 alone holds it; the process group does not exist yet, so its rank is read here.
    rank = int(os.environ.get("RANK", "0")) if distributed.launched_by_torchrun() else 0
    with (RunLock(run_dir.path) if rank == 0 else contextlib.nullcontext()) as lock:
        if lock is not None and lock.warning:
            console.print(f"warning: {lock.warning}", soft_wrap=True, highlight=False)
        with checked_settings():
            resumed = None  # the checkpoint --resume continues from, loaded once
            if args.resume:
                config, resumed = _resumed_config(run_dir.path, config, given)
            # Under torchrun every process runs this; rank 0 alone prints and writes files.
            context = distributed.init_process_group(resolve_device(config.device))
        # Signals are ours from here: a process still waiting for the others to join must die of
        # torchrun's SIGTERM as usual, and a handler would run only once that wait returns.
        with StopRequest(run_dir, started=False) as stop:
            try:
                code = _train_process(args, config, console if context.is_main else Console(quiet=True), context,
                                      resumed, stop, lock)
            except BaseException:
                distributed.shutdown(context, together=False)
                raise
        distributed.shutdown(context)
    if context.distributed:
        distributed.exit_worker(code)  # after the lock is released: this ends the process at once
    return code


# What --resume lets a continued run change; every other setting is the run's own.
RESUME_MAY_CHANGE = ("epochs", "device", "threads", "data_root", "download", "nonfinite", "max_skipped_steps")


def _resumed_config(run_dir: Path, config: RunConfig, given: set[str]) -> tuple[RunConfig, tuple]:
    """The run's settings, with the given ones that may change on resume, and the checkpoint to
    resume from (``RunDir.load_for_resume``'s path, checkpoint and warnings). The checkpoint's
    settings are the run's: a config.json that disagrees with them is refused, as is a given
    setting that differs from the run's (it would silently not take effect) and ``--epochs``
    below the epochs already trained."""
    run = RunDir(run_dir)
    run.check_resumable()
    saved = _completed_settings(run.read_config())
    fixed = [k for k in RunConfig.field_names() if k not in RESUME_MAY_CHANGE and k != "out"]
    # The checkpoint resume will continue from (the last, else the best): its settings are the run's.
    loaded = run.load_for_resume()
    used, checkpoint, _ = loaded
    trained, done = _completed_settings(checkpoint["config"]), int(checkpoint["epoch"])
    edited = {k: (saved[k], trained[k]) for k in fixed if saved[k] != trained[k]}
    if edited:
        raise UsageError(f"--resume: {run.config_file} disagrees with the run's checkpoint {used} in {edited} "
                         "(config.json, checkpoint); the checkpoint's settings are the run's: restore them in "
                         "config.json, or start afresh with --overwrite")
    saved = {**trained, **{k: saved[k] for k in RESUME_MAY_CHANGE}}
    changed = {k: (saved[k], getattr(config, k)) for k in sorted(given) if k in fixed and saved[k] != getattr(config, k)}
    if changed:
        raise UsageError(f"--resume with settings that differ from the run's: {changed}; "
                         "only --epochs, --device, --threads, --data-root, --nonfinite and --max-skipped-steps "
                         "may change")
    kept = {k: getattr(config, k) for k in RESUME_MAY_CHANGE if k in given}
    if kept.get("epochs", saved["epochs"]) < done:
        raise UsageError(f"--resume --epochs {kept['epochs']}: the run has already trained {done} epochs; "
                         f"give at least {done}")
    return RunConfig(**{**saved, **kept, "out": str(run_dir)}), loaded


def _completed_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Saved settings with those added after the run was made read as their defaults (what the run used)."""
    return {k: v for k, v in {**RunConfig().to_dict(), **values}.items() if k in RunConfig.field_names()}


def _train_process(args: argparse.Namespace, config: RunConfig, console: Console, context: Context,
                   resumed: Optional[tuple] = None, stop: Optional[StopRequest] = None,
                   lock: Optional[RunLock] = None) -> int:
    """Build, train and report one run into ``config.out`` (``lock``: the caller's on it); the exit status."""
    from .build import data_files, make_trainer

    run_dir = RunDir(config.out)
    board = _tensorboard_dir(args, config)
    if not args.resume and not args.overwrite:
        run_dir.check_new_run()
        if board is not None:
            tensorboard_log.check_new(board)
    # Model, data and solvers are built (and every setting checked) before anything is written,
    # so a bad setting leaves no half-made run directory and --overwrite deletes nothing.
    with checked_settings():
        trainer = make_trainer(config, context)
    report = Report(console, enabled=context.is_main)
    processes = f", {context.world_size} processes" if context.distributed else ""
    if config.method == "bptt":
        surrogate = bptt.get_surrogate(config.surrogate, config.surrogate_slope)
        method = f"BPTT, {surrogate.name} surrogate slope {surrogate.slope:g}"
    else:
        method = f"backward {config.b_solver}/{config.b_max_iter}"
    precision = "" if config.sim_precision == "fp32" else f", simulation in {config.sim_precision}"
    report.line(f"training {config.model} on {config.dataset} ({config.producer or 'lif'}, "
                f"T={config.time_steps}{precision}, {method}{processes}) → {run_dir}")
    run = TrainingRun(trainer, run_dir, config.to_dict(), report, tensorboard=board)
    if resumed is not None:  # before anything is written: a checkpoint that cannot be used changes nothing
        with checked_settings():
            run.resume(resumed)
    distributed.barrier(context)  # every process has checked the run directory before rank 0 changes it
    if context.is_main:
        if lock is not None:
            lock.keep_folders()  # from here on the folder is the run's, even if its first write fails
        if not args.resume:
            run_dir.clear()
            if board is not None:
                tensorboard_log.clear(board)  # the curves start afresh with the run
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(config.to_dict())  # exactly the settings: reusable as --config
        run_dir.write_data_files(data_files(trainer.train_data, trainer.test_data))
    distributed.barrier(context)
    try:
        summary = run.fit(stop)
    except Interrupted as stopped:
        report.line(f"interrupted: {stopped}")
        return 130
    except solvers.ConvergenceError as error:
        # Asked for with `throw=True`: a stop, not a bug; the last checkpoint is the last finished epoch's.
        last = (f"the last checkpoint is {run_dir.last_checkpoint} (--resume continues from it)"
                if run_dir.last_checkpoint.exists() else "no epoch finished, so there is no checkpoint")
        raise SystemExit(f"error: a backward solve did not converge and throw=True was set, so training stopped at "
                         f"epoch {trainer.epoch + 1}, batch {trainer.batch + 1}: {error}; {last}") from None
    except NonFiniteError as error:  # the settings or the data, not the code: one line, exit status 1
        kept = (f"{run_dir.last_checkpoint} is still the last good state" if run_dir.last_checkpoint.exists()
                else "no checkpoint was written")
        raise SystemExit(f"error: {flag_message(str(error), SETTINGS)} ({kept})") from None
    report.line(f"final test accuracy {summary['final_test_acc']:.2%}"
                + (f"; checkpoint chosen on validation (epoch {summary['val_chosen_epoch']}): "
                   f"{summary['val_chosen_test_acc']:.2%}" if "val_chosen_epoch" in summary else "")
                + f"; best epoch {summary['best_epoch']}: {summary['best_epoch_test_acc']:.2%}")
    return 0
