"""Gradient truth: the implicit gradient of loss(model(x)) against central finite differences.

Every other gradient test compares two of the library's own derivative paths (the explicit
transposed Jacobian against autograd, the implicit solve against a dense solve of the same
Jacobian); a wrong derivative in the construction of f itself (the normalised feedback weight,
batch norm, dropout, σ's slope, the reused input op) would pass them all. Here the reference is
the loss itself, evaluated through the public model API at perturbed parameters:

    (L(θ + εd) − L(θ − εd)) / 2ε   against   ⟨∇L(θ), d⟩ from ``loss.backward()``,

for one random direction d through every parameter tensor at once and one per tensor (so each
tensor, the input layer, the feedback's α and the classifier head included, is tested on its
own). The forward is the ``analytic`` producer (f's fixed point by Broyden to ~1e-15): a spiking
simulation is piecewise constant in θ and has no useful finite differences.

Why the comparison is exact up to ~1e-9 (float64, ε = 1e-6):

* σ = clamp(x/Vth, 0, 1) makes f piecewise affine. Each case re-draws its input until every
  pre-activation of every layer at the equilibrium is at least ``MARGIN`` from the kinks 0 and
  Vth (in units of Vth), and every evaluation asserts that the active pattern at θ ± εd is the
  one at θ: no finite difference crosses a kink, so L is smooth along the segment.
* Truncation error is O(ε²) (≈1e-12); rounding is ≈|L|·1e-16/ε ≈ 1e-10 absolute; the forward
  solve reaches ~1e-15 and the backward solve 1e-12 relative. Measured: |fd − ide| ≤ 1e-9, mostly
  ≈1e-10 (the rounding term). Hence |fd − ide| ≤ 1e-6·|ide| + 2e-9,
  while the derivative bugs this file was mutation-tested against move it by 1e-3 to 1.
* Dropout masks are drawn from the global generator in ``map_inputs``; every evaluation reseeds
  it, and the masks of every evaluation are asserted identical to those of the gradient pass.
* In training, one power-iteration step runs per forward: the vectors are converged first (so σ
  is stationary in them) and every buffer is restored before each evaluation. α starts inside
  its clip (0.8 < c = 1), except in the test of the clip itself.
* Batch norm: every γ, β, running mean and variance is randomised (their defaults 1, 0, 0, 1
  would hide a dropped factor). In eval mode all layers use running statistics. In training the
  input layer normalises with the batch statistics of F¹x̄ (in the solve and, with their
  gradient, in f's differentiable evaluation). For layers 2..N the analytic producer solves f with
  running statistics (as the spiking producers simulate); f's differentiable evaluation uses the
  same with ``bn_backward="simulated"``, but batch statistics with the default ``"batch"``: another
  function, whose implicit gradient is not that of the computed loss. Multi-layer training cases
  with ``"batch"`` therefore use ``BatchStatisticsProducer``, which solves the fixed point of f
  exactly as it is differentiated (``differentiable_args``; a coupled problem).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, reject, settings, strategies as st

import models
import solvers
from implicit_snn._ops import apply_op
from implicit_snn.layers import SynapticLayer
from implicit_snn.neurons import rate_and_slope, rate_function
from implicit_snn.producers import Producer, get_producer
from implicit_snn.producers._base import Equilibrium
from implicit_snn.spectral import SpectralNorm
from tests.helpers import default_dtype

EPS = 1e-6  # central-difference step
RTOL, ATOL = 1e-6, 2e-9  # |fd − ide| ≤ RTOL·|ide| + ATOL (see the module docstring)
MARGIN = 1e-4  # distance of every pre-activation (over Vth) from σ's kinks 0 and 1 (ε·d moves them ≲ 1e-5)
FORWARD = dict(f_solver="broyden", f_tol=1e-15, f_max_iter=200)
B_TOL, B_MAX_ITER = 1e-12, 400
SEED = 1234  # the dropout masks' seed, the same in every evaluation
BATCH = 4
#: Approximate by design (spike-based or truncated-Jacobian backward solvers): no tight tolerance.
APPROXIMATE = ("phantom", "spide")
TIGHT_SOLVERS = [name for name in solvers.available_solvers() if not any(a in name for a in APPROXIMATE)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every tensor here is tiny: a second thread only adds synchronisation (50x slower on a loaded
    2-core machine, measured). Not set back: raising the thread count again within a process made
    MKL's LU factorisation fail in later dense-oracle tests ("DLASWP"), as the CLI tests' --threads 1
    already showed, so the rest of the session stays at one thread."""
    torch.set_num_threads(1)
    yield


@dataclasses.dataclass(frozen=True)
class Case:
    spec: str
    in_shape: tuple[int, ...]
    training: bool
    dropout: float = 0.0
    operator_norm: bool = False
    batch_norm: bool = True
    vth: float = 2.0
    spikes: bool = False  # spike-train input [B, T, *in] (the analytic producer averages it)
    bn_backward: str = "batch"  # FeedbackSNN.bn_backward: f's statistics for layers 2..N in training
    seed: int = 0


CASES = {
    "linear-eval": Case("6 (F6)", (1, 3, 3), training=False),
    "linear-train-dropout": Case("6 (F6)", (1, 3, 3), training=True, dropout=0.3),
    "linear-2-eval": Case("5-4 (F5)", (1, 3, 3), training=False, seed=1),
    "linear-2-train-dropout": Case("5-4 (F5)", (1, 3, 3), training=True, dropout=0.3),
    "linear-2-train-no-bn": Case("5-4 (F5)", (7,), training=True, dropout=0.2, batch_norm=False),
    "linear-3-train-dropout": Case("5-4-4 (F5)", (6,), training=True, dropout=0.2),
    "linear-3-eval-vth1": Case("5-4-4 (F5)", (6,), training=False, vth=1.0, seed=1),
    "linear-2-eval-spike-train": Case("5-4 (F5)", (1, 3, 3), training=False, spikes=True),
    "linear-3-train-dropout-simulated-bn": Case("5-4-4 (F5)", (6,), training=True, dropout=0.2,
                                                bn_backward="simulated", seed=1),
    "conv-eval": Case("3C3 (F3C3)", (1, 5, 5), training=False),
    "conv-train-dropout-operator-norm": Case("3C3 (F3C3)", (1, 5, 5), training=True, dropout=0.2, operator_norm=True),
    "conv-transposed-eval-operator-norm": Case("3C3-4C3s (F3C3u)", (1, 6, 6), training=False, operator_norm=True,
                                               seed=6),
    "conv-transposed-train-dropout": Case("3C3-4C3s (F3C3u)", (1, 6, 6), training=True, dropout=0.2),
    "conv-transposed-train-dropout-simulated-bn": Case("3C3-4C3s (F3C3u)", (1, 6, 6), training=True, dropout=0.2,
                                                       bn_backward="simulated", seed=2),
    "conv-3-train-operator-norm": Case("2C3-3C3s-2C3 (F2C3u)", (1, 6, 6), training=True, dropout=0.1, seed=2,
                                       operator_norm=True),
}


# -- the producers -------------------------------------------------------------------------------
class BatchStatisticsProducer(Producer):
    """f's fixed point with f's arguments as ``differentiable_args`` makes them (batch statistics in
    every layer in training): the equilibrium of the very map the implicit gradient differentiates."""

    def __call__(self, network, x):
        with torch.no_grad():
            if network.is_spike_train(x):
                x = x.mean(dim=1)
            f_args = network.map_inputs(x)
            args = network.differentiable_args(*f_args)
            couples = getattr(network, "couples_samples", None)
            coupling = {"coupled": True} if couples is not None and couples(*args) else {}
            result = solvers.get_solver("broyden")(
                lambda a: network.fixed_point_map(a, *args), network.initial_state(x),
                max_iter=FORWARD["f_max_iter"], tol=FORWARD["f_tol"], **coupling)
        return Equilibrium(a=result.z, f_args=f_args, extras={"solved_args": args, "solver_result": result})


class Recording(Producer):
    """Another producer, keeping its latest equilibrium (for the kink margins and the masks)."""

    def __init__(self, inner: Producer):
        self.inner = inner
        self.last: Optional[Equilibrium] = None

    def __call__(self, network, x):
        self.last = self.inner(network, x)
        return self.last


def needs_batch_statistics_producer(case: Case) -> bool:
    """Training with batch norm in layers 2..N and ``bn_backward="batch"``: f's differentiable
    evaluation normalises them with batch statistics, the analytic producer with running ones."""
    multi_layer = case.spec.split("(")[0].count("-") > 0
    return case.training and case.batch_norm and multi_layer and case.bn_backward == "batch"


# -- building ------------------------------------------------------------------------------------
def randomise_(model, *, alpha: float, seed: int) -> None:
    """Batch-norm affine parameters and running statistics, biases, α away from their defaults;
    the power iteration converged (σ then is stationary in its vectors: in training each forward
    advances them from the perturbed weight)."""
    gen = torch.Generator().manual_seed(seed + 100)

    def uniform_(t, low, high):
        t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low)

    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, SynapticLayer):
                continue
            if layer.op.bias is not None:
                uniform_(layer.op.bias, -0.2, 0.2)
            if layer.bn is not None:
                uniform_(layer.bn.weight, 0.6, 1.5)
                uniform_(layer.bn.bias, -0.2, 0.2)
                uniform_(layer.bn.running_mean, -0.2, 0.2)
                uniform_(layer.bn.running_var, 0.5, 2.0)
        spectral: SpectralNorm = model.network.feedback.spectral
        converge_power_iteration_(spectral, model.network.feedback.op)
        spectral.alpha.fill_(alpha)


def converge_power_iteration_(spectral: SpectralNorm, op) -> None:
    """Set the power-iteration vectors to the top singular pair of the (matrix or operator) norm's
    matrix, by a dense SVD, and check that a power step leaves them there."""
    weight = op.weight.detach()
    if spectral.operator_norm and not isinstance(op, torch.nn.Linear):
        n = spectral.v.numel()
        basis = torch.eye(n, dtype=weight.dtype).reshape(n, *spectral.v.shape[1:])
        matrix = apply_op(op, basis, weight, bias=False).reshape(n, -1).T
    else:
        matrix = weight.reshape(weight.shape[0], -1)
    _, singular, vh = torch.linalg.svd(matrix)
    assert float(singular[0] - singular[1]) > 1e-2 * float(singular[0]), "top singular values too close"
    u = matrix @ vh[0]
    spectral.v.copy_(vh[0].view_as(spectral.v))
    spectral.u.copy_((u / u.norm()).view_as(spectral.u))
    before = spectral.u.clone(), spectral.v.clone()
    spectral.effective_weight(op, update=True)  # one power step, as a training forward takes
    assert all(float((a - b).abs().max()) < 1e-12 for a, b in zip(before, (spectral.u, spectral.v)))


def build(case: Case, *, b_solver: str = "broyden", vjp: str = "auto", alpha: float = 0.8):
    with default_dtype(torch.float64):
        torch.manual_seed(case.seed)
        model = models.from_spec(
            case.spec, case.in_shape, 3, dropout=case.dropout, batch_norm=case.batch_norm, vth=case.vth,
            operator_norm=case.operator_norm, bn_backward=case.bn_backward, producer="analytic",
            producer_options=FORWARD, b_solver=b_solver, b_tol=B_TOL, b_max_iter=B_MAX_ITER,
            b_options=dict(vjp=vjp))
    model.train(case.training)
    randomise_(model, alpha=alpha, seed=case.seed)
    inner = BatchStatisticsProducer() if needs_batch_statistics_producer(case) else model.producer
    model.set_producer(Recording(inner))
    return model


def draw_input(case: Case, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * case.seed + attempt)
    if case.spikes:
        x = (torch.rand((BATCH, 8, *case.in_shape), generator=gen, dtype=torch.float64) < 0.4).double() * 3.0
    else:
        x = torch.randn((BATCH, *case.in_shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (BATCH,), generator=gen)
    return x, y


# -- what one evaluation saw ---------------------------------------------------------------------
def buffers(model) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def restore_(model, snapshot: dict[str, torch.Tensor]) -> None:
    """Buffers back to ``snapshot``; only those that moved (an unchanged buffer may be saved for a
    backward, which an in-place copy would invalidate)."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if not torch.equal(b, snapshot[name]):
                b.copy_(snapshot[name])


def currents_over_vth(network, a, x_bar, state) -> list[torch.Tensor]:
    """Every layer's current over Vth when f is evaluated at ``a``, by the network's public hooks."""
    with torch.no_grad():
        current = network.input_drive(x_bar, state) + network.feedback_current(a, state)
        out = [current / network.vth]
        for index in range(len(network.forward_layers)):
            out.append(network.forward_current(index, out[-1].clamp(0.0, 1.0), state) / network.vth)
    return out


def scaled_currents(model) -> list[torch.Tensor]:
    """``currents_over_vth`` at the latest equilibrium, in the state the producer solved f with,
    checking on the way that it is f's fixed point."""
    eq = model.producer.last
    out = currents_over_vth(model.network, eq.a, *eq.extras.get("solved_args", eq.f_args))
    assert float((out[-1].clamp(0.0, 1.0) - eq.a).abs().max()) < 1e-12, "the producer's a is not f's fixed point"
    return out


def active_pattern(scaled: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per unit: −1 below σ's kink at 0, 0 exactly on it, 1 in the linear range, 2 saturated."""
    return [torch.sign(s).to(torch.int8) + (s >= 1).to(torch.int8) for s in scaled]


def kink_margin(scaled: list[torch.Tensor]) -> float:
    """The least distance of a pre-activation from 0 or 1, over units whose current is not exactly 0.

    An exact 0 is a unit whose inputs are all exactly zero: dropped out, or (through a local
    kernel) fed by rates saturated at 0 only. Perturbing the parameters leaves it exactly 0 (the
    active pattern at θ ± εd, which tells an exact 0 from a sign, checks it); perturbing ``a``
    itself would move it, so gradcheck uses interior rates instead of a*.
    """
    distances = [torch.minimum(s.abs(), (s - 1).abs())[s != 0] for s in scaled]
    return min(float(d.min()) for d in distances if d.numel())


def linear_units(scaled: list[torch.Tensor]) -> list[int]:
    """Per layer, units in σ's linear range (where gradients flow)."""
    return [int(((s > 0) & (s < 1)).sum()) for s in scaled]


def masks(model) -> list[Optional[torch.Tensor]]:
    state = model.producer.last.f_args[-1]
    return [state.input_mask, *state.forward_masks, state.feedback_mask]


def same_masks(first, second) -> bool:
    return all((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
               for a, b in zip(first, second))


def loss_value(model, x, y, snapshot) -> float:
    """L(θ) through the public API: ``model(x)`` without grad, from the same buffers and masks' seed."""
    restore_(model, snapshot)
    torch.manual_seed(SEED)
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def implicit_gradients(model, x, y, snapshot) -> list[torch.Tensor]:
    """∇L(θ) from ``loss.backward()`` (the producer, then the implicit adjoint), every parameter."""
    restore_(model, snapshot)
    torch.manual_seed(SEED)
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    result = model.last_backward
    assert result is not None and result.success, result
    assert float(result.rel_residual.max()) <= B_TOL
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# -- the finite-difference reference -------------------------------------------------------------
@dataclasses.dataclass
class Reference:
    x: torch.Tensor
    y: torch.Tensor
    snapshot: dict[str, torch.Tensor]
    names: list[str]
    params: list[torch.Tensor]
    directions: list[tuple[str, list[torch.Tensor]]]
    fd: list[float]
    masks: list[Optional[torch.Tensor]]
    pattern: list[torch.Tensor]


def directions_for(named: list[tuple[str, torch.Tensor]], seed: int) -> list[tuple[str, list[torch.Tensor]]]:
    """One random direction through every tensor, then one per tensor."""
    gen = torch.Generator().manual_seed(seed)
    out = [("all", [torch.randn(p.shape, generator=gen, dtype=p.dtype) for _, p in named])]
    for index, (name, _) in enumerate(named):
        out.append((name, [torch.randn(p.shape, generator=gen, dtype=p.dtype) if j == index else torch.zeros_like(p)
                           for j, (_, p) in enumerate(named)]))
    return out


class KinkCrossed(AssertionError):
    """A finite difference whose two evaluations lie on different sides of one of σ's kinks: no
    derivative to compare with (an error for the fixed cases, a rejected example for drawn ones)."""


def central_difference(model, x, y, snapshot, direction, pattern, mask_ref, eps=EPS) -> float:
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]  # restored exactly: (p + εd) − εd need not be p
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, b, d in zip(params, base, direction):
                p.copy_(b + sign * eps * d)
        try:
            values.append(loss_value(model, x, y, snapshot))
            assert same_masks(masks(model), mask_ref), "dropout masks differ between evaluations"
            if pattern is not None:
                now = active_pattern(scaled_currents(model))
                if not all(torch.equal(a, b) for a, b in zip(now, pattern)):
                    raise KinkCrossed("a finite difference crossed a kink")
        finally:
            with torch.no_grad():
                for p, b in zip(params, base):
                    p.copy_(b)
    return (values[0] - values[1]) / (2 * eps)


def structurally_zero(model) -> set[str]:
    """Parameters with zero gradient by construction: op biases followed by batch norm with batch
    statistics (the batch mean removes them): the input layer's in training, layers 2..N's too
    with ``bn_backward="batch"``."""
    if not model.training:
        return set()
    net = model.network
    layers = [("network.input_layer", net.input_layer)]
    if net.bn_backward == "batch":
        layers += [(f"network.forward_layers.{i}", layer) for i, layer in enumerate(net.forward_layers)]
    return {f"{name}.op.bias" for name, layer in layers if layer.bn is not None and layer.op.bias is not None}


def input_clear_of_kinks(case, model, snapshot):
    """An input (re-drawn up to 30 times) whose pre-activations all lie at least MARGIN from σ's
    kinks, its labels, and those scaled currents."""
    for attempt in range(30):
        x, y = draw_input(case, attempt)
        loss_value(model, x, y, snapshot)
        scaled = scaled_currents(model)
        if kink_margin(scaled) >= MARGIN:
            return x, y, scaled
    raise AssertionError(f"no input clear of the kinks for {case}")


@functools.lru_cache(maxsize=None)
def reference(case_name: str) -> Reference:
    """The case's input (re-drawn until clear of kinks) and the finite differences of its loss."""
    case = CASES[case_name]
    model = build(case)
    snapshot = buffers(model)
    x, y, scaled = input_clear_of_kinks(case, model, snapshot)
    pattern, mask_ref = active_pattern(scaled), masks(model)
    assert min(linear_units(scaled)) >= 2, "a layer with (almost) no unit in σ's linear range: choose another seed"
    named = list(model.named_parameters())
    directions = directions_for(named, seed=7)
    fd = [central_difference(model, x, y, snapshot, d, pattern, mask_ref) for _, d in directions]
    restore_(model, snapshot)
    # Every tensor must matter, or its check is vacuous; a bias before batch norm with batch
    # statistics is the one exception (the batch mean removes it: its gradient is 0 exactly).
    for (name, _), value in zip(directions, fd):
        if not (name in structurally_zero(model) or abs(value) >= 1e-4):
            raise AssertionError(f"{case_name}: {name} hardly changes the loss ({value:.1e}): choose another seed")
    return Reference(x, y, snapshot, [n for n, _ in named], [p.detach().clone() for _, p in named], directions, fd,
                     mask_ref, pattern)


def assert_matches_reference(case_name: str, *, b_solver: str = "broyden", vjp: str = "auto") -> None:
    ref = reference(case_name)
    model = build(CASES[case_name], b_solver=b_solver, vjp=vjp)
    named = list(model.named_parameters())
    assert [n for n, _ in named] == ref.names
    assert all(torch.equal(p, q) for (_, p), q in zip(named, ref.params)), "the build is not deterministic"
    grads = implicit_gradients(model, ref.x, ref.y, ref.snapshot)
    assert same_masks(masks(model), ref.masks), "the gradient pass drew other dropout masks"
    failures = []
    for (name, direction), fd in zip(ref.directions, ref.fd):
        ide = sum(float((g * d).sum()) for g, d in zip(grads, direction))
        if abs(fd - ide) > RTOL * abs(ide) + ATOL:
            failures.append(f"{name}: finite difference {fd:+.12e}, implicit {ide:+.12e}")
    assert not failures, "\n".join(failures)
    total = ref.fd[0]
    assert abs(total) > 1e-3, "the all-parameter direction is trivial"


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("vjp", ["auto", "autograd"])
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_implicit_gradient_equals_central_differences_of_the_loss(case_name, vjp):
    assert_matches_reference(case_name, vjp=vjp)


@pytest.mark.parametrize("b_solver", TIGHT_SOLVERS)
@pytest.mark.parametrize("case_name", ["linear-2-train-dropout", "conv-transposed-eval-operator-norm"])
def test_every_tight_backward_solver_gives_the_true_gradient(case_name, b_solver):
    assert_matches_reference(case_name, b_solver=b_solver)


def test_the_analytic_producer_is_used_where_it_solves_the_differentiated_map():
    """Single-layer training (input batch norm with batch statistics of F¹x̄ in both the solve and
    the differentiable evaluation) and eval mode use the library's own analytic producer."""
    for name, case in CASES.items():
        model = build(case)
        expected = BatchStatisticsProducer if needs_batch_statistics_producer(case) else type(get_producer("analytic"))
        assert isinstance(model.producer.inner, expected), name


def test_alpha_at_its_clip_gets_half_the_one_sided_derivative():
    """α = c: the min/max clip passes half the gradient (``SpectralNorm``), which is the central
    difference across that kink: L is flat above c and has slope s below, (0 + s)/2."""
    case = CASES["linear-eval"]
    model = build(case, alpha=1.0)
    x, y = reference("linear-eval").x, reference("linear-eval").y
    snapshot = buffers(model)
    alpha = model.network.feedback.spectral.alpha
    assert float(alpha.detach()) == model.network.feedback.spectral.bound
    grads = implicit_gradients(model, x, y, snapshot)
    (ide,) = [g for (name, _), g in zip(model.named_parameters(), grads) if name.endswith("spectral.alpha")]
    base = loss_value(model, x, y, snapshot)
    values = {}
    for sign in (1.0, -1.0):
        with torch.no_grad():
            alpha.add_(sign * EPS)
        values[sign] = loss_value(model, x, y, snapshot)
        with torch.no_grad():
            alpha.fill_(1.0)
    assert values[1.0] == base  # clipped: flat above the bound
    left = (base - values[-1.0]) / EPS
    assert abs(left) > 1e-3
    # A one-sided difference: error O(ε·L''), not O(ε²) (measured 5e-8 relative at ε = 1e-6).
    assert abs(float(ide) - left / 2) <= 1e-5 * abs(left)


@given(seed=st.integers(0, 10_000), layers=st.integers(1, 3), vth=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
       dropout=st.sampled_from([0.0, 0.3]), training=st.booleans(), bn_backward=st.sampled_from(["batch", "simulated"]))
@settings(max_examples=8)
def test_random_fully_connected_networks_have_true_gradients(seed, layers, vth, dropout, training, bn_backward):
    widths = [5, 4, 3][:layers]
    spec = "-".join(map(str, widths)) + f" (F{widths[0]})"
    case = Case(spec, (6,), training=training, dropout=dropout, vth=vth, bn_backward=bn_backward, seed=seed)
    model = build(case)
    snapshot = buffers(model)
    x, y, scaled = input_clear_of_kinks(case, model, snapshot)
    pattern, mask_ref = active_pattern(scaled), masks(model)
    (name, direction), = directions_for(list(model.named_parameters()), seed=seed)[:1]
    try:
        fd = central_difference(model, x, y, snapshot, direction, pattern, mask_ref)
    except KinkCrossed:
        reject()  # the drawn network and direction have no derivative to check here
    for vjp in ("auto", "autograd"):
        model.adjoint.vjp = vjp
        grads = implicit_gradients(model, x, y, snapshot)
        ide = sum(float((g * d).sum()) for g, d in zip(grads, direction))
        assert abs(fd - ide) <= RTOL * abs(ide) + ATOL, (vjp, fd, ide)


# -- gradcheck on f itself -----------------------------------------------------------------------
class _MapOfParameters(torch.nn.Module):
    """f(a) with the feedback weight rebuilt from the (substituted) parameters on every call, and
    the input op recomputed (not reused): what ``torch.func.functional_call`` can perturb."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, a, x_bar, state):
        x_bar, state = self.network.differentiable_args(x_bar, state)
        state = dataclasses.replace(state, input_linear=None)
        return self.network.fixed_point_map(a, x_bar, state)


GRADCHECK_CASES = ["linear-train-dropout", "linear-2-eval", "linear-3-train-dropout", "conv-eval",
                   "conv-train-dropout-operator-norm", "conv-transposed-train-dropout",
                   "conv-transposed-eval-operator-norm", "conv-transposed-train-dropout-simulated-bn"]


@pytest.mark.parametrize("case_name", GRADCHECK_CASES)
def test_gradcheck_of_the_fixed_point_map_in_a_and_every_parameter(case_name):
    ref = reference(case_name)
    model = build(CASES[case_name])
    loss_value(model, ref.x, ref.y, ref.snapshot)  # the pass's state: masks, input statistics
    x_bar, state = model.producer.last.f_args
    net = model.network
    wrapper = _MapOfParameters(net)
    names = [name for name, _ in wrapper.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in wrapper.named_parameters()]
    # Interior rates (a* has exact zeros, which can put a unit exactly on σ's kink), re-drawn
    # until every pre-activation is clear of the kinks by far more than gradcheck's steps move it.
    gen = torch.Generator().manual_seed(5)
    for _ in range(30):
        a = torch.rand(model.producer.last.a.shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05
        restore_(model, ref.snapshot)
        scaled = currents_over_vth(net, a, *net.differentiable_args(x_bar, state))
        if kink_margin(scaled) >= 1e-4 and min(linear_units(scaled)) >= 2:
            break
    else:
        raise AssertionError("no interior rates clear of the kinks")
    a.requires_grad_()

    def f(a, *ps):
        # f's evaluation in training moves the running statistics (bn_backward="simulated" then
        # normalises with them): fresh copies, as earlier graphs saved the old tensors.
        with torch.no_grad():
            for name, b in list(model.named_buffers()):
                if not torch.equal(b, ref.snapshot[name]):
                    owner, _, leaf = name.rpartition(".")
                    setattr(model.get_submodule(owner), leaf, ref.snapshot[name].clone())
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (a, x_bar, state))

    assert torch.autograd.gradcheck(f, (a, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_rate_function_gradient_is_clamp_s_at_and_between_the_bounds():
    """σ's backward is clamp's (zero at exactly 0 and Vth: open bounds) divided by Vth, on both
    the autograd path and the slope handed to the explicit Jacobian."""
    vth = 2.0
    current = torch.tensor([-1.0, 0.0, 0.3, 1.0, 1.9, 2.0, 2.5], dtype=torch.float64, requires_grad=True)
    reference_current = current.detach().clone().requires_grad_()
    torch.clamp(reference_current / vth, 0.0, 1.0).sum().backward()
    rate_function(current, vth).sum().backward()
    torch.testing.assert_close(current.grad, reference_current.grad, rtol=0, atol=0)
    rates, slope = rate_and_slope(current, torch.tensor(vth, dtype=torch.float64))
    torch.testing.assert_close(slope, reference_current.grad, rtol=0, atol=0)
    torch.testing.assert_close(rates, torch.clamp(current.detach() / vth, 0.0, 1.0), rtol=0, atol=0)
    inside = torch.tensor([0.1, 0.7, 1.3, 1.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: rate_function(c, vth), (inside,), eps=1e-6, atol=1e-10)
