"""The training step of IDE against BPTT: forward, backward, optimiser and peak memory, per preset and T, in one run.

For every preset and T, an SGD step (lr 0.05, momentum 0.9, weight decay 5e-4; one fixed random
batch of the preset's input shape; train mode) is timed split into forward (model and loss),
backward (loss.backward()) and optimiser (zero_grad + step), for IDE with each backward
solver:tolerance asked for and for BPTT (surrogate gradient, sigmoid slope 4). Each
configuration runs in its own worker process, started once; the parent asks the workers in
turn for a round of steps, round after round, so that every configuration sees the same machine
conditions, and each round repeats the same steps from the same weights. Reported: the median of
per-round medians, VJPs per backward (IDE), peak memory (CUDA: max_memory_allocated; CPU: the
growth of the worker's peak resident set), and two arithmetic floors measured in the same rounds
(IDE): the forward against its linear/conv ops alone, and one VJP of the fixed-point map against
the bare transposed ops. ``--baseline REV`` adds IDE workers running revision REV's library
(from a temporary git worktree) for the speed-up of the current code over it. Writes
bench/results/step-<device>[-<tag>].{json,md,png}.

    python bench/bench_step.py [--models f400 f64c5] [--time-steps 5 10 30 100] [--methods ide bptt]
                               [--solvers broyden:1e-6 broyden:1e-3] [--rounds 5] [--steps 10] [--threads 1]
    python bench/bench_step.py --baseline e6cbb96 --methods ide          # current IDE against an old revision
    python bench/bench_step.py --device cuda --models alexnet_f cifarnet_f f400 --time-steps 5 30 100 --all-t
    python bench/bench_step.py --quick --out /tmp/bench-step             # a smoke test (f400, T=5, 1 round of 2 steps)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPT = Path(__file__).resolve()
CPU_CONV_MAX_T = 30

QUICK = dict(models=["f400"], time_steps=[5], rounds=1, steps=2, warmup=1, batch_size=32, floor_repeats=2)
FULL = dict(models=["f400", "f64c5"], time_steps=[5, 10, 30, 100], rounds=5, steps=10, warmup=3, batch_size=128,
            floor_repeats=5)


# -- the command line ------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--models", nargs="+", default=None, metavar="PRESET",
        help="presets from models.available_models() (default: f400 f64c5; --quick: f400)")
    add("--time-steps", nargs="+", type=int, default=None, metavar="T",
        help=f"simulation lengths T (default: 5 10 30 100; --quick: 5); conv presets are limited to "
             f"T <= {CPU_CONV_MAX_T} on CPU unless --all-t")
    add("--all-t", action="store_true", help=f"run conv presets at every T on CPU too, not only T <= {CPU_CONV_MAX_T}")
    add("--methods", nargs="+", choices=["ide", "bptt"], default=["ide", "bptt"],
        help="training methods: ide (implicit differentiation), bptt (backprop through time, sigmoid surrogate "
             "gradient, slope 4) (default: both)")
    add("--solvers", nargs="+", default=["broyden:1e-6", "broyden:1e-3"], metavar="NAME:TOL[:K=V,...]",
        help="IDE backward solvers and relative tolerances (max 30 iterations), e.g. anderson:1e-6 or "
             "anderson:1e-6:memory=10 (default: broyden:1e-6 broyden:1e-3)")
    add("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
        help="the simulation's precision (sim_precision) per configuration: IDE's products in bf16, BPTT's time "
             "loop under bf16 autocast (default fp32)")
    add("--tf32", action="store_true",
        help="CUDA only: float32 matrix products and convolutions in TF32 in every worker (without it, in float32)")
    add("--batch-size", type=int, default=None, help="batch size (default 128; --quick: 32)")
    add("--rounds", type=int, default=None, help="alternating rounds; the result is the median of round medians "
                                                 "(default 5; --quick: 1)")
    add("--steps", type=int, default=None, help="timed steps per round per configuration (default 10; --quick: 2)")
    add("--warmup", type=int, default=None, help="untimed steps per configuration before the rounds (default 3; --quick: 1)")
    add("--floor-repeats", type=int, default=None,
        help="repeats of each arithmetic-floor measurement per round, median taken (default 5; --quick: 2)")
    add("--threads", type=int, default=1, help="torch.set_num_threads in every worker (default 1)")
    add("--device", choices=["cpu", "cuda"], default="cpu", help="where the workers run (default cpu)")
    add("--baseline", default=None, metavar="REV",
        help="also run IDE on git revision REV's library (a temporary worktree), labelled IDE@<short hash>, for the speed-up "
             "of the current code over it")
    add("--peer", action="store_true",
        help="include external SNN libraries' F400 (bench/peers.py's *_f400 functions, BPTT), where available")
    add("--timeout", type=float, default=1800.0, help="seconds to wait for any one reply of a worker before killing it "
                                                       "(default 1800)")
    add("--out", default=str(BENCH / "results"), help="folder of the result files (default bench/results)")
    add("--tag", default=None, help="suffix of the result files' stem: step-<device>-<tag> (--quick: quick)")
    add("--quick", action="store_true", help="tiny settings for a smoke test (f400, T=5, 1 round of 2 steps, batch 32)")
    add("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tag is None and args.quick:
        args.tag = "quick"
    for key in ("batch_size", "rounds", "steps", "floor_repeats", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or any(t < 1 for t in args.time_steps):
        parser.error("--warmup must be >= 0 and every T >= 1")
    import models
    unknown = [m for m in args.models if m not in models.available_models()]
    if unknown:
        parser.error(f"unknown presets {unknown}; available: {' '.join(models.available_models())}")
    try:
        args.solver_specs = [parse_solver(text) for text in args.solvers]
    except ValueError as error:
        parser.error(str(error))
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
    elif args.tf32:
        parser.error("--tf32 applies to --device cuda only (a CPU has no TF32)")
    return args


def parse_solver(text: str) -> dict[str, Any]:
    """``name:tol[:key=value,...]`` → {"name", "tol", "options", "label"}."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"--solvers: {text!r} is not NAME:TOL or NAME:TOL:KEY=VALUE,...")
    try:
        tol = float(parts[1])
    except ValueError:
        raise ValueError(f"--solvers: the tolerance in {text!r} is not a number") from None
    if not 0 < tol < 1:
        raise ValueError(f"--solvers: the tolerance in {text!r} must lie in (0, 1)")
    options: dict[str, Any] = {}
    for item in parts[2].split(",") if len(parts) == 3 else []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--solvers: option {item!r} in {text!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return {"name": parts[0], "tol": tol, "options": options, "label": text}


# -- the configurations ----------------------------------------------------------------------

def ide_label(solver_label: str, precision: str) -> str:
    """IDE's row label: its solver, and the simulation's precision where not fp32."""
    return f"IDE {solver_label}" + ("" if precision == "fp32" else f" {precision}")


def preset_facts(name: str) -> dict[str, Any]:
    """Input shape, leak of the preset's own producer, and whether it is a conv net."""
    import models
    from implicit_snn.data import dataset_info
    preset = models.get_preset(name)
    return {"input_shape": list(preset.in_shape), "leak": preset.leak, "conv": "C" in preset.spec.split("(")[0],
            "spike_input": dataset_info(preset.dataset).input_kind == "spikes"}


def find_peers() -> list[str]:
    """Names of bench/peers.py's ``*_f400`` builders, or [] with a printed note."""
    if not (BENCH / "peers.py").exists():
        print("note: --peer: bench/peers.py does not exist (yet); no peer configurations")
        return []
    try:
        import peers
    except Exception as error:
        print(f"note: --peer: bench/peers.py cannot be imported ({type(error).__name__}: {error}); no peers")
        return []
    names = sorted(n for n in dir(peers) if n.endswith("_f400") and not n.startswith("_") and callable(getattr(peers, n)))
    if not names:
        print("note: --peer: bench/peers.py has no *_f400 function; no peers")
    return names


def make_configs(args: argparse.Namespace, baseline: Optional[dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """Every (preset, T, method) to run, in the order of the tables."""
    from _step_report import bptt_label

    common = dict(batch_size=args.batch_size, device=args.device, threads=args.threads, floor_repeats=args.floor_repeats,
                  tf32=args.tf32)
    configs = []
    default_solver = parse_solver("broyden:1e-6")
    for name in args.models:
        facts = preset_facts(name)
        for steps in args.time_steps:
            if facts["conv"] and args.device == "cpu" and steps > CPU_CONV_MAX_T and not args.all_t:
                print(f"note: {name} T={steps} skipped on CPU (conv presets run T <= {CPU_CONV_MAX_T} unless --all-t)")
                continue
            base = dict(common, model=name, T=steps, leak=facts["leak"], input_shape=facts["input_shape"],
                        spike_input=facts["spike_input"])

            def add(kind: str, method: str, label: str, solver: dict[str, Any], floor: bool, precision: str = "fp32",
                    **extra: Any) -> None:
                configs.append(dict(base, kind=kind, method=method, label=label, solver=solver["name"],
                                    tol=solver["tol"], solver_options=solver["options"], solver_label=solver["label"],
                                    floor=floor, precision=precision, **extra))

            for precision in args.precisions:
                if "ide" in args.methods:
                    for solver in args.solver_specs:
                        add("ide", "ide", ide_label(solver["label"], precision), solver, True, precision)
                if "bptt" in args.methods:
                    add("bptt", "bptt", bptt_label(precision), default_solver, False, precision)
            if baseline is not None:
                for precision in args.precisions:
                    for solver in args.solver_specs:
                        add("baseline", "ide", ide_label(solver["label"], precision).replace(
                            "IDE", f"IDE@{baseline['short']}", 1), solver, True, precision, revision=baseline["short"])
            if name == "f400":
                for peer in peers:
                    add("peer", "peer", f"peer {peer.removesuffix('_f400')}", default_solver, False, peer=peer)
    return configs


# -- git -----------------------------------------------------------------------------------------

def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def revision_info() -> dict[str, Any]:
    try:
        return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError) as error:
        return {"commit": None, "error": str(error)}


@contextlib.contextmanager
def baseline_worktree(rev: str):
    """A detached git worktree of ``rev`` in a temporary folder, removed on exit (error or not)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = _git("rev-parse", "--short", commit)
    holder = Path(tempfile.mkdtemp(prefix="bench-step-baseline-"))
    tree = holder / "tree"
    try:
        _git("worktree", "add", "--detach", str(tree), commit)
        print(f"baseline: {rev} = {short}, worktree {tree}")
        yield {"rev": rev, "commit": commit, "short": short, "path": tree}
    finally:
        if tree.exists():
            try:
                _git("worktree", "remove", "--force", str(tree))
            except subprocess.CalledProcessError as error:
                print(f"warning: git worktree remove {tree} failed: {error.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(holder, ignore_errors=True)


# -- the workers ---------------------------------------------------------------------------------

class WorkerError(Exception):
    """A worker failed: an error reply, no reply in time, or the process died."""


class Unavailable(Exception):
    """The worker's library cannot build the configuration (e.g. no BPTT yet)."""


class WorkerProcess:
    """``bench_step.py --worker`` for one configuration, spoken to in JSON lines."""

    def __init__(self, config: dict[str, Any], index: int, log_dir: Path, timeout: float):
        self.config, self.timeout = config, timeout
        self.log_path = log_dir / f"worker-{index}.log"
        self.log = open(self.log_path, "w", encoding="utf-8")
        env = dict(os.environ)
        tree = Path(config["tree"]) if config.get("tree") else ROOT
        env["PYTHONPATH"] = str(tree) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--worker"], cwd=tree, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _stderr_tail(self, lines: int = 15) -> str:
        self.log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise WorkerError(f"the worker is gone (exit code {self.proc.poll()}): {self._stderr_tail()}") from None

    def receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            # Short waits: a signal (SIGTERM, Ctrl-C) handled by another thread does not wake a long one.
            try:
                line = self.lines.get(timeout=0.2)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.close()
                    raise WorkerError(f"no reply within {self.timeout:g} s; the worker was killed") from None
        if line is None:
            code = self.proc.wait()
            raise WorkerError(f"the worker died (exit code {code}{', killed: out of memory?' if code < 0 else ''}): "
                              f"{self._stderr_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            if "unavailable" in reply:
                raise Unavailable(reply["unavailable"])
            raise WorkerError(reply.get("error", "unknown error") + "\n" + reply.get("traceback", ""))
        return reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.receive()

    def begin_close(self) -> None:
        """Ask the worker to exit and close its input (it also exits at end of input)."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError, ValueError):
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.close()

    def close(self, grace: float = 10.0) -> None:
        """Ask the worker to exit; after ``grace`` seconds terminate it, five seconds later kill it."""
        self.begin_close()
        for stop, wait in ((None, grace), (self.proc.terminate, 5.0), (self.proc.kill, None)):
            if stop is not None:
                stop()
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()


class Pool:
    """All the workers, each with its result record; closes every one on exit."""

    def __init__(self, configs: list[dict[str, Any]], timeout: float):
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-step-logs-"))
        self.entries = [{"config": c, "status": "starting", "rounds": []} for c in configs]
        self.workers: dict[int, WorkerProcess] = {}
        try:
            for index, config in enumerate(configs):
                self.workers[index] = WorkerProcess(config, index, self.log_dir, timeout)
        except BaseException:
            self.abort()
            shutil.rmtree(self.log_dir, ignore_errors=True)
            raise

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        # All asked at once; after an error or a signal, no waiting for a round to finish.
        if kind is not None:
            self.abort()
        for worker in self.workers.values():
            worker.begin_close()
        for index in list(self.workers):
            self._drop(index)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def abort(self) -> None:
        """Stop every worker now, without waiting for a round to finish."""
        for worker in self.workers.values():
            worker.begin_close()
        for index in list(self.workers):
            self._drop(index, grace=0.0)

    def _drop(self, index: int, grace: float = 10.0) -> None:
        worker = self.workers.pop(index, None)
        if worker is not None:
            worker.close(grace)

    def alive(self) -> list[int]:
        return sorted(self.workers)

    def call(self, index: int, message: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The worker's reply, or None after recording its failure and closing it."""
        entry, label = self.entries[index], describe(self.entries[index]["config"])
        try:
            return self.workers[index].request(message)
        except Unavailable as note:
            entry.update(status="skipped", error=str(note))
            print(f"note: {label} skipped: {note}")
        except WorkerError as error:
            entry.update(status="error", error=str(error).strip())
            print(f"error: {label} failed at {message['cmd']}: {str(error).strip().splitlines()[0]}")
        self._drop(index)
        return None

    def start(self, configs: list[dict[str, Any]]) -> None:
        """Send every worker its configuration, then collect the replies (the builds overlap)."""
        sent = []
        for index in self.alive():
            try:
                self.workers[index].send({"cmd": "init", "config": configs[index]})
                sent.append(index)
            except WorkerError as error:
                self.entries[index].update(status="error", error=str(error))
                self._drop(index)
        for index in sent:
            try:
                reply = self.workers[index].receive()
            except (WorkerError, Unavailable) as error:
                kind = "skipped" if isinstance(error, Unavailable) else "error"
                self.entries[index].update(status=kind, error=str(error).strip())
                print(f"{'note' if kind == 'skipped' else 'error'}: {describe(configs[index])} {kind}: "
                      f"{str(error).strip().splitlines()[0]}")
                self._drop(index)
                continue
            self.entries[index].update(status="ok", info=reply["info"])
            check_modules(self.entries[index], configs[index])
            if self.entries[index]["status"] != "ok":
                self._drop(index)


def check_modules(entry: dict[str, Any], config: dict[str, Any]) -> None:
    """A baseline worker must have imported the old revision's packages, the others the current ones."""
    tree = Path(config.get("tree") or ROOT).resolve()
    wrong = {name: path for name, path in entry["info"]["modules"].items()
             if path and not Path(path).resolve().is_relative_to(tree)}
    if wrong:
        entry.update(status="error", error=f"the worker imported {wrong}, not the packages under {tree}")
        print(f"error: {describe(config)}: {entry['error']}")


def describe(config: dict[str, Any]) -> str:
    return f"{config['model']} T={config['T']} {config['label']}"


def run_rounds(pool: Pool, args: argparse.Namespace) -> None:
    """Warm-up, then the rounds: each alive worker in turn, the order rotated by one every round."""
    for index in pool.alive():
        pool.call(index, {"cmd": "warmup", "steps": args.warmup})
    for round_index in range(args.rounds):
        order = pool.alive()
        shift = round_index % max(len(order), 1)
        for index in order[shift:] + order[:shift]:
            started = time.perf_counter()
            reply = pool.call(index, {"cmd": "round", "steps": args.steps})
            if reply is None:
                continue
            pool.entries[index]["rounds"].append(reply)
            print(f"round {round_index + 1}/{args.rounds} {describe(pool.entries[index]['config'])}: "
                  f"{progress(reply)} ({time.perf_counter() - started:.1f} s)", flush=True)


def progress(reply: dict[str, Any]) -> str:
    from _step_report import median_of
    steps = reply["steps"]
    text = " ".join(f"{key[:-3]} {median_of(steps, key):.1f}" for key in ("step_ms", "forward_ms", "backward_ms", "optimiser_ms"))
    if steps and "vjps" in steps[0]:
        text += f", {sum(s['vjps'] for s in steps) / len(steps):.1f} VJPs"
    return text + f", mem +{reply['memory']['growth_mib']:.0f} MiB"


# -- main -----------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        import _step_worker
        _step_worker.serve()
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on SIGTERM too

    import torch

    import _step_report
    from common import run_header, write_results

    torch.set_num_threads(args.threads)  # the header's device name states the workers' thread count

    command = shlex.join(["python", *sys.argv])
    interrupted: Optional[BaseException] = None
    peers = find_peers() if args.peer else []
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(baseline_worktree(args.baseline)) if args.baseline else None
        configs = make_configs(args, baseline, peers)
        if baseline is not None:
            for config in configs:
                if config["kind"] == "baseline":
                    config["tree"] = str(baseline["path"])
        if not configs:
            sys.exit("nothing to run")
        print(f"{len(configs)} configurations, {args.rounds} rounds of {args.steps} steps, {args.threads} thread(s), "
              f"{args.device}", flush=True)
        pool = stack.enter_context(Pool(configs, args.timeout))
        try:
            pool.start(configs)
            run_rounds(pool, args)
        except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, SIGTERM (e.g. `timeout`): keep what is done
            interrupted = stop
            print(f"interrupted ({type(stop).__name__}): writing the results so far", file=sys.stderr)
            pool.abort()
        entries = pool.entries
    revisions = {"current": revision_info()}
    if baseline is not None:
        revisions["baseline"] = {"rev": baseline["rev"], "commit": baseline["commit"], "short": baseline["short"]}
    settings = {key: getattr(args, key) for key in ("models", "time_steps", "methods", "solvers", "batch_size", "rounds",
                                                    "steps", "warmup", "floor_repeats", "threads", "all_t", "baseline",
                                                    "peer")}
    header = {**run_header(args.device), "threads": args.threads}
    if interrupted is not None:
        header["interrupted"] = "SIGTERM" if isinstance(interrupted, SystemExit) else "Ctrl-C"
    report = _step_report.build_report(entries, header=header, command=command, settings=settings, revisions=revisions)
    stem = f"step-{args.device}" + (f"-{args.tag}" if args.tag else "")
    write_results(args.out, stem, report, _step_report.markdown(report))
    _step_report.plot(report, Path(args.out) / f"{stem}.png")
    if interrupted is not None:
        raise interrupted


if __name__ == "__main__":
    main()
