"""The worker of bench_step.py: one configuration (model, T, method) in its own process.

The parent starts ``bench_step.py --worker`` once per configuration and talks JSON lines with it:
each request on stdin gets one reply on stdout (anything the library prints goes to stderr).

    {"cmd": "init", "config": {...}}  -> {"ok": true, "info": {...}}   build the model and the batch
    {"cmd": "warmup", "steps": n}     -> {"ok": true}                  n untimed steps
    {"cmd": "round", "steps": n}      -> {"ok": true, "steps": [...], "memory": {...}, "floor": {...}}
    {"cmd": "exit"}                   -> the process ends (so does end of input)

A failure is ``{"ok": false, "error": ..., "traceback": ...}``; a configuration the installed
library cannot build is ``{"ok": false, "unavailable": ...}``. Every warm-up and round starts
from the same weights, a fresh optimiser and ``torch.manual_seed(0)``, so every round does the
same work (the same dropout masks, the same solver iterations) and rounds differ only in the
machine's conditions.

This module must run against old revisions of the package too (``--baseline``): it uses only
the standard library, torch, and API that has existed from the start (``models.build_model``
with ``producer_options``/``b_tol``/``b_max_iter``/``b_options`` and the backward solver, named
``b_solver`` since the renames and ``backward`` before them,
``FeedbackSNN``'s layers and ``fixed_point_map``, ``SynapticLayer.linear``). It does not import
bench/common.py, which needs newer library modules.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import resource
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

SGD = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
BPTT = dict(method="bptt", surrogate="sigmoid", surrogate_slope=4.0)


class Unavailable(Exception):
    """The installed library cannot build this configuration (e.g. no BPTT yet)."""


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mib() -> float:
    """The process's peak resident set so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _module_files() -> dict[str, str]:
    """Where the packages this worker benchmarks were imported from (a baseline must use its own)."""
    return {name: getattr(sys.modules.get(name), "__file__", None) or "" for name in ("implicit_snn", "solvers", "models")}


# -- building -------------------------------------------------------------------------------

def configured_model(config: dict[str, Any]) -> torch.nn.Module:
    """The configuration's model, seeded with ``torch.manual_seed(0)``."""
    import models

    torch.manual_seed(0)
    producer_options = dict(time_steps=config["T"], leak=config["leak"])
    if config.get("precision", "fp32") != "fp32":  # only where asked: an older revision has no such option
        producer_options["sim_precision"] = config["precision"]
    method = config["method"]
    if method == "bptt":
        try:
            return models.build_model(config["model"], producer_options=producer_options, **BPTT)
        except TypeError as error:
            if "method" in str(error):
                raise Unavailable(f"models.build_model has no BPTT yet ({error})") from error
            raise
    import implicit_snn

    # A baseline revision may predate the rename of the solver argument: pass it by the name it takes.
    takes = inspect.signature(implicit_snn.ImplicitClassifier.__init__).parameters
    solver = {("b_solver" if "b_solver" in takes else "backward"): config["solver"]}
    model = models.build_model(config["model"], producer_options=producer_options, **solver,
                               b_tol=config["tol"], b_max_iter=30, b_options=dict(config["solver_options"]))
    if method == "peer":
        try:
            import peers  # bench/peers.py: external SNN libraries' versions of the presets
        except ImportError as error:
            raise Unavailable(f"bench/peers.py cannot be imported ({error})") from error
        builder = getattr(peers, config["peer"])
        wanted = dict(time_steps=config["T"], leak=config["leak"], slope=BPTT["surrogate_slope"])
        accepted = inspect.signature(builder).parameters
        try:
            return builder(model, **{k: v for k, v in wanted.items() if k in accepted})
        except ImportError as error:
            raise Unavailable(f"{config['peer']}: its library is not installed ({error})") from error
    return model


def make_batch(config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random batch of the preset's input shape: Gaussian images, or binary spike
    frames ``[B, T, *in]`` (10% density) for spike-input presets; random labels."""
    gen = torch.Generator().manual_seed(1)
    batch, shape = config["batch_size"], tuple(config["input_shape"])
    if config["spike_input"]:
        x = (torch.rand((batch, config["T"], *shape), generator=gen) < 0.1).float()
    else:
        x = torch.randn((batch, *shape), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return x.to(config["device"]), y.to(config["device"])


# -- the arithmetic floor -----------------------------------------------------------------

def _median_ms(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _binary(shape: tuple[int, ...], like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) < 0.2).to(like)


def ops_only(network: Any, x: torch.Tensor, steps: int, spike_input: bool) -> Callable[[], None]:
    """The forward's linear/conv ops alone, on tensors of the right shapes, no neuron updates:
    the input op on x̄ once (a pass needs it for the batch statistics, and f's graph reuses its
    value), T more times for spike frames; the simulation's feedback T−1 times and each forward
    layer T times, without grad; and the one differentiable evaluation of f's feedback and
    forward layers once, with grad."""
    gen = torch.Generator().manual_seed(2)
    batch = x.shape[0]
    prepare = (lambda t: t.flatten(1)) if network.flatten_input else (lambda t: t)
    shapes = [(batch, *s) for s in network.layer_shapes]
    activity = [_binary(s, x, gen) for s in shapes]
    with torch.no_grad():
        feedback_weight = network.feedback.effective_weight(update=False).detach().clone()
        x_bar = prepare(x.mean(1) if spike_input else x)
        frames = [prepare(x[:, t]) for t in range(steps)] if spike_input else []
    rates_last = torch.rand(shapes[-1], generator=gen).to(x)
    rates = [torch.rand(s, generator=gen).to(x) for s in shapes[:-1]]

    def run() -> None:
        with torch.no_grad():
            for frame in [x_bar, *frames]:
                network.input_layer.linear(frame)
            for _ in range(steps - 1):
                network.feedback.linear(activity[-1], feedback_weight)
            for _ in range(steps):
                for layer, spikes in zip(network.forward_layers, activity):
                    layer.linear(spikes)
        with torch.enable_grad():
            network.feedback.linear(rates_last, network.feedback.op.weight)
            for layer, r in zip(network.forward_layers, rates):
                layer.linear(r)

    return run


def transposed_op(op: torch.nn.Module, weight: torch.Tensor, v: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The bare transpose of ``op`` (weight ``weight``) applied to ``v``: its input's shape ``in_shape``."""
    if isinstance(op, torch.nn.Linear):
        return v @ weight
    if isinstance(op, torch.nn.ConvTranspose2d):
        return F.conv2d(v, weight, None, op.stride, op.padding, op.dilation, op.groups)
    return torch.nn.grad.conv2d_input(in_shape, weight, v, op.stride, op.padding, op.dilation, op.groups)


def bare_transposed(network: Any, like: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One VJP's bare arithmetic: the forward layers' transposed ops from layer N down to 2,
    then the feedback's transposed op (layer 1 → layer N)."""
    gen = torch.Generator().manual_seed(3)
    batch = like.shape[0]
    shapes = [(batch, *s) for s in network.layer_shapes]
    with torch.no_grad():
        feedback_weight = network.feedback.effective_weight(update=False).detach().clone()
    v_last = torch.randn(shapes[-1], generator=gen).to(like)
    layers = list(network.forward_layers)

    def run() -> torch.Tensor:
        with torch.no_grad():
            v = v_last
            for index in range(len(layers) - 1, -1, -1):
                v = transposed_op(layers[index].op, layers[index].op.weight, v, shapes[index])
            out = transposed_op(network.feedback.op, feedback_weight, v, shapes[-1])
        if tuple(out.shape) != shapes[-1]:
            raise RuntimeError(f"the feedback's transposed op gives {tuple(out.shape)}, not {shapes[-1]}")
        return out

    return run


def floor(model: Any, x: torch.Tensor, config: dict[str, Any]) -> dict[str, Any]:
    """ops_ms, vjp_ms (autograd, and jt_ms for an explicit operator) and bare_transposed_ms."""
    device, repeats, network = config["device"], config["floor_repeats"], model.network
    result: dict[str, Any] = {}
    result["ops_ms"] = _median_ms(ops_only(network, x, config["T"], config["spike_input"]), device, repeats)
    result["bare_transposed_ms"] = _median_ms(bare_transposed(network, x), device, repeats)
    eq = model.producer(network, x)
    f_args = eq.f_args
    if hasattr(network, "differentiable_args"):
        f_args = network.differentiable_args(*f_args)
    z = eq.a.detach().clone().requires_grad_()
    with torch.enable_grad():
        fz = network.fixed_point_map(z, *f_args)
    v = torch.randn(fz.shape, generator=torch.Generator().manual_seed(4)).to(fz)
    result["vjp_ms"] = _median_ms(lambda: torch.autograd.grad(fz, z, v, retain_graph=True), device, repeats)
    if hasattr(network, "linearized_map"):
        try:
            with torch.enable_grad():
                _, jt = network.linearized_map(z, *f_args)
            result["jt_ms"] = _median_ms(lambda: jt(v), device, repeats)
            (reference,) = torch.autograd.grad(fz, z, v, retain_graph=True)
            result["jt_rel_diff"] = float((jt(v) - reference).norm() / reference.norm().clamp_min(1e-30))
        except Exception as error:  # an operator under construction must not sink the rest
            result["jt_error"] = f"{type(error).__name__}: {error}"
    return result


# -- the worker ------------------------------------------------------------------------------

class Worker:
    """One configuration: its model, the batch, the initial weights, and the memory baseline."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.device = config["device"]
        torch.set_num_threads(config["threads"])
        if self.device == "cuda":  # float32 products exactly in float32, unless TF32 is asked for
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(config.get("tf32"))
        self.model = configured_model(config).to(self.device).train()
        self.x, self.y = make_batch(config)
        self.state = copy.deepcopy(self.model.state_dict())
        self.memory_before: Optional[float] = None
        self.cuda_reset = False
        self.last_loss = float("nan")

    def info(self) -> dict[str, Any]:
        model = self.model
        return {"modules": _module_files(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "producer": repr(getattr(model, "producer", None)), "pid": os.getpid()}

    def _start(self) -> torch.optim.Optimizer:
        """The same weights, a fresh optimiser and seed: every round repeats the same steps."""
        self.model.load_state_dict(self.state)
        torch.manual_seed(0)
        return torch.optim.SGD(self.model.parameters(), **SGD)

    def _mark_memory(self) -> None:
        if self.memory_before is None:  # just before the very first step (warm-up included)
            _sync(self.device)
            self.memory_before = (torch.cuda.memory_allocated() / 2**20 if self.device == "cuda" else _rss_mib())

    def _step(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """One timed SGD step split into forward (model and loss), backward and optimiser (zero_grad + step)."""
        device, model = self.device, self.model
        _sync(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(self.x), self.y)
        _sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        _sync(device)
        t3 = time.perf_counter()
        optimizer.step()
        _sync(device)
        t4 = time.perf_counter()
        self.last_loss = float(loss.detach())
        step = {"step_ms": 1e3 * (t4 - t0), "forward_ms": 1e3 * (t1 - t0), "backward_ms": 1e3 * (t3 - t2),
                "optimiser_ms": 1e3 * ((t2 - t1) + (t4 - t3))}
        if self.config["method"] == "ide":
            result = getattr(model, "last_backward", None)
            if result is not None:
                converged = getattr(result, "converged", None)
                step["vjps"] = int(result.n_evals)
                if isinstance(converged, torch.Tensor):
                    step["converged"] = float(converged.float().mean())
        return step

    def warmup(self, steps: int) -> dict[str, Any]:
        optimizer = self._start()
        self._mark_memory()
        for _ in range(steps):
            self._step(optimizer)
        return {}

    def round(self, steps: int) -> dict[str, Any]:
        optimizer = self._start()
        self._mark_memory()
        if self.device == "cuda" and not self.cuda_reset:  # the peak over the timed steps
            torch.cuda.reset_peak_memory_stats()
            self.cuda_reset = True
        records = [self._step(optimizer) for _ in range(steps)]
        reply: dict[str, Any] = {"steps": records, "loss": self.last_loss, "memory": self.memory()}
        if self.config["floor"]:
            try:
                reply["floor"] = floor(self.model, self.x, self.config)
            except Exception as error:
                reply["floor"] = {"error": f"{type(error).__name__}: {error}"}
        if self.device == "cuda":
            torch.cuda.empty_cache()  # the other configurations' processes share the GPU
        return reply

    def memory(self) -> dict[str, Any]:
        """The peak after the timed steps so far, and its growth over the level before the first step.

        CPU: the process's peak resident set (ru_maxrss). CUDA: torch.cuda.max_memory_allocated
        since the first timed step, against memory_allocated before the first step.
        """
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            return {"kind": "cuda max_memory_allocated", "before_mib": self.memory_before, "peak_mib": peak,
                    "growth_mib": peak - self.memory_before, "reserved_peak_mib": torch.cuda.max_memory_reserved() / 2**20}
        peak = _rss_mib()
        return {"kind": "cpu ru_maxrss", "before_mib": self.memory_before, "peak_mib": peak,
                "growth_mib": peak - self.memory_before}


def _failure(error: BaseException) -> dict[str, Any]:
    if isinstance(error, Unavailable):
        return {"ok": False, "unavailable": str(error)}
    return {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}


def _die_with_parent() -> None:
    """Linux: be killed when the parent dies, even mid-round (no orphans)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _retain_freed_memory() -> None:
    """The allocator setting the CLI uses (implicit_snn/app/_allocator.py of THIS tree, loaded by path
    so that baseline workers get it too): every configuration runs under the same malloc."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "implicit_snn" / "app" / "_allocator.py"
    spec = importlib.util.spec_from_file_location("_bench_allocator", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.retain_freed_memory()


def serve() -> None:
    """Answer the parent's requests until "exit" or end of input."""
    parent = os.getppid()
    _die_with_parent()
    _retain_freed_memory()
    if os.getppid() != parent:  # the parent died before the signal was armed
        return
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    worker: Optional[Worker] = None
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        command = request.get("cmd")
        if command == "exit":
            break
        try:
            if command == "init":
                worker = Worker(request["config"])
                reply = {"ok": True, "info": worker.info()}
            elif worker is None:
                raise RuntimeError(f"{command!r} before init")
            elif command == "warmup":
                reply = {"ok": True, **worker.warmup(int(request["steps"]))}
            elif command == "round":
                reply = {"ok": True, **worker.round(int(request["steps"]))}
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as error:  # out of memory included: the parent records it and carries on
            reply = _failure(error)
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
