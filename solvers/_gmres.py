"""Restarted GMRES for affine fixed-point problems z = A z + c, one Krylov space per sample."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from . import _workspace
from ._checks import check_int
from ._driver import FixedPointSolver, IterState
from ._maps import BatchedMap

#: A new Arnoldi direction, or a rotated least-squares column, no longer than this many units
#: of its product's rounding counts as zero: the Krylov space is invariant (breakdown), or
#: I − A is singular on it. The product A v of a unit vector, taken as in ``_arnoldi_step``,
#: is rounded by about eps·(1 + ‖A v‖), times a small factor for the map's own sums.
ROUNDING_UNITS = 16


@dataclasses.dataclass
class GMRESState(IterState):
    origin: torch.Tensor  # [B, D] x0, the iterate the current cycle started from
    origin_image: torch.Tensor  # [B, D] g(x0), measured (a copy: the map may reuse its output)
    scale: torch.Tensor  # [B, 1] s, products are taken at x0 + s·v
    basis: torch.Tensor  # [m + 1, B, D] orthonormal Arnoldi vectors vⱼ (zero after a breakdown)
    products: torch.Tensor  # [m, B, D] A vⱼ
    point: torch.Tensor  # [B, D] where the next product is evaluated
    rotations: torch.Tensor  # [B, m + 1, m + 1] Q, the Givens rotations so far, as one matrix
    triangle: torch.Tensor  # [B, m, m] R = Q H̄, upper triangular
    rhs: torch.Tensor  # [B, m + 1] Q β e₁, with the entries of singular columns zeroed
    columns: int  # Arnoldi vectors of this cycle made so far
    cycle: int  # columns per cycle, min(restart, D)
    memory: torch.Tensor  # [2m + 3, B, D], the storage of basis, products, point, origin_image
    identity: torch.Tensor  # [m + 1, m + 1], to reset Q at a restart


@dataclasses.dataclass(frozen=True)
class GMRES(FixedPointSolver):
    """Restarted GMRES on (I − A) z = c for an affine map g(z) = A z + c, per sample, matrix-free.

    Each step is one evaluation of g: the product A vⱼ of one Arnoldi vector, orthogonalised
    (classical Gram–Schmidt, twice) against the sample's own basis, and a Givens update of the
    least-squares problem min ‖β e₁ − H̄ y‖. The iterate z = x0 + V y and its image
    g(z) = g(x0) + Σ yⱼ A vⱼ are formed from the stored products without another evaluation:
    **g is assumed affine** (the adjoint system of the backward is). For a map declared affine
    (``AffineMap``, as the backward declares its adjoint map) the reported residuals are those
    at the returned z up to rounding at the scale of ‖z‖, ‖x0‖ and their images (a measurement
    is rounded at the scale of ‖z‖ and ‖g(z)‖). For any other map the driver measures g at the
    returned z (one more evaluation) and reports that residual; a sample the extrapolation
    called converged that the measurement does not is reported as ``NOT_AFFINE``. It is not a
    solver for nonlinear maps, and the analytic producer's forward refuses it.

    Given an ``AffineMap`` (as the backward gives its adjoint system), A v is its linear part,
    applied directly. Given only g, A v is taken as (g(x0 + s v) − g(x0)) / s with ‖v‖ = 1 and
    s = ‖x0‖ + ‖g(x0)‖, so that the difference of images is never dwarfed by the images
    themselves (a small step would cancel catastrophically). After ``restart``
    vectors (at most D, the size of a sample, where the space is necessarily invariant) one
    step evaluates g at the current iterate, a real measurement that starts the next cycle
    from the true residual, so the extrapolation's rounding does not accumulate over cycles:
    a cycle costs ``min(restart, D) + 1`` evaluations. A sample whose Krylov space becomes
    invariant (happy breakdown: its residual is then ~0) or whose least-squares column is
    singular stops moving until the next restart; the other samples are unaffected.

    Args:
        restart: Krylov dimension m before a restart (memory use is about 2·B·D·m numbers).
    """

    NAME: ClassVar[str] = "gmres"
    SOLVES_NONLINEAR: ClassVar[bool] = False
    EXTRAPOLATES_IMAGE: ClassVar[bool] = True

    restart: int = 30

    def __post_init__(self) -> None:
        check_int("gmres", "restart", self.restart, minimum=1)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> GMRESState:
        batch, dim = z0.shape
        cycle = min(self.restart, dim)
        memory = _workspace.take(z0, 2 * cycle + 3, batch, dim)
        triangle = z0.new_zeros(batch, cycle, cycle)  # below the diagonal is never written
        identity = torch.eye(cycle + 1, dtype=z0.dtype, device=z0.device)
        state = GMRESState(
            z=z0, gz=gz0, fz=gz0 - z0, origin=z0, origin_image=memory[2 * cycle + 2],
            scale=z0.new_empty(batch, 1), basis=memory[:cycle + 1], products=memory[cycle + 1:2 * cycle + 1],
            point=memory[2 * cycle + 1], rotations=z0.new_empty(batch, cycle + 1, cycle + 1),
            triangle=triangle, rhs=z0.new_empty(batch, cycle + 1),
            columns=0, cycle=cycle, memory=memory, identity=identity,
        )
        _begin_cycle(state)
        return state

    def finish(self, state: GMRESState) -> None:  # type: ignore[override]
        """Hand the memory back for the next solve of this size."""
        _workspace.give_back(state.memory)

    def step(self, g: BatchedMap, state: GMRESState) -> GMRESState:  # type: ignore[override]
        if state.columns == state.cycle:
            # Restart: measure g at the iterate instead of trusting its extrapolated image.
            state.gz = g(state.z)
            state.fz = state.gz - state.z
            _begin_cycle(state)
            return state
        return _arnoldi_step(g, state)


def _begin_cycle(state: GMRESState) -> None:
    """Start a Krylov space at the state's iterate, from its residual ``fz``."""
    z, gz, fz = state.z, state.gz, state.fz
    state.origin = z
    state.origin_image.copy_(gz)
    beta = torch.linalg.vector_norm(fz, dim=1)
    scale = torch.linalg.vector_norm(z, dim=1) + torch.linalg.vector_norm(gz, dim=1)
    state.scale[:, 0] = torch.where(scale > 0, scale, 1.0)
    # A zero residual is solved already: a zero basis vector keeps its sample where it is.
    torch.mul(fz, torch.where(beta > 0, beta.reciprocal(), 0.0)[:, None], out=state.basis[0])
    state.rotations.copy_(state.identity)
    state.rhs.zero_()
    state.rhs[:, 0] = beta
    state.columns = 0


def _project_out(w: torch.Tensor, basis_t: torch.Tensor, basis_dots: torch.Tensor) -> torch.Tensor:
    """Subtract from ``w`` [B, D] (in place) its components along ``basis_t`` [B, k, D] (rows
    orthonormal), given as ``basis_dots`` [B, D, k]; return the coefficients [B, k]."""
    coefficients = torch.bmm(w[:, None], basis_dots)  # [B, 1, k]
    w[:, None].baddbmm_(coefficients, basis_t, alpha=-1)
    return coefficients[:, 0]


def _arnoldi_step(g: BatchedMap, state: GMRESState) -> GMRESState:
    """Add the next Arnoldi vector (one evaluation of g) and re-solve the least-squares problem."""
    j = state.columns
    k = j + 1
    v = state.basis[j]
    if g.has_linear:
        av = state.products[j]
        av.copy_(g.linear(v))
    else:  # only g is known: A v by a difference of images taken far apart (see the class docstring)
        torch.addcmul(state.origin, state.scale, v, out=state.point)
        av = torch.sub(g(state.point), state.origin_image, out=state.products[j]).div_(state.scale)
    floor = torch.linalg.vector_norm(av, dim=1).add_(1.0).mul_(ROUNDING_UNITS * torch.finfo(av.dtype).eps)

    w = torch.sub(v, av, out=state.basis[k])  # (I − A) v, orthogonalised in place below
    basis_t, basis_dots = state.basis[:k].transpose(0, 1), state.basis[:k].permute(1, 2, 0)
    # Twice is enough: one classical Gram–Schmidt pass loses orthogonality in proportion to the
    # conditioning, a second restores it to rounding (Giraud et al. 2005), in 4 batched products.
    h = _project_out(w, basis_t, basis_dots)
    h += _project_out(w, basis_t, basis_dots)
    h_next = torch.linalg.vector_norm(w, dim=1)
    # A new direction at rounding level means the space is invariant: its basis vector becomes
    # zero, so that the sample's later columns are zero too (singular, below) and it stays
    # exactly where it is until the restart, instead of following normalised rounding noise.
    # NaN compares False: a NaN sample stays NaN and is reported.
    breakdown = h_next <= floor
    w.mul_(torch.where(breakdown, 0.0, h_next.reciprocal())[:, None])

    # The new column of H̄, rotated by the earlier rotations, then by its own.
    column = torch.cat([h, h_next[:, None]], dim=1)  # [B, k + 1]
    rotated = torch.bmm(state.rotations[:, :k + 1, :k + 1], column[:, :, None])[:, :, 0]
    diagonal = rotated[:, j]
    radius = torch.hypot(diagonal, h_next)
    # A column at rounding level is singular for I − A (e.g. g(z) = z + c): its coefficient is
    # set to zero, not to a huge quotient of rounding errors.
    singular = radius <= floor
    cos = torch.where(singular, 1.0, diagonal / radius)
    sin = torch.where(singular, 0.0, h_next / radius)
    state.triangle[:, :j, j] = rotated[:, :j]
    state.triangle[:, j, j] = torch.where(singular, 1.0, radius)
    givens = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)
    state.rotations[:, j:k + 1, :k + 1] = torch.bmm(givens, state.rotations[:, j:k + 1, :k + 1])
    gamma = state.rhs[:, j].clone()
    state.rhs[:, k] = -sin * gamma
    state.rhs[:, j] = torch.where(singular, 0.0, cos * gamma)
    state.columns = k

    y = torch.linalg.solve_triangular(state.triangle[:, :k, :k], state.rhs[:, :k, None], upper=True)
    y_t = y.transpose(1, 2)  # [B, 1, k]
    z = torch.baddbmm(state.origin[:, None], y_t, basis_t)[:, 0]
    # By linearity: g(x0 + V y) = g(x0) + Σ yⱼ A vⱼ (exact for affine g, up to rounding).
    gz = torch.baddbmm(state.origin_image[:, None], y_t, state.products[:k].transpose(0, 1))[:, 0]
    state.z, state.gz, state.fz = z, gz, gz - z
    return state
