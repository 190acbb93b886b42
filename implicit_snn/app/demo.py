"""A small contractive implicit network and a backward-solver comparison on it (``implicit-snn demo``).

f(a, x) = tanh(W a + U x + b) with ‖W‖₂ fixed, hence ‖J_f‖ ≤ ‖W‖₂; the tests build their dense
implicit-function-theorem oracle on the same network (tests/helpers.py).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

import solvers

from .._adjoint import implicit_grad
from ..analysis import BackwardOutcome
from ..producers import get_producer


def matrices_with_norm(batch: int, dim: int, norm: float, *, generator: torch.Generator,
                       symmetric: bool = False) -> torch.Tensor:
    """``[batch, dim, dim]`` float64 random matrices with spectral norm exactly ``norm``.

    ``symmetric=True`` spreads the eigenvalues uniformly over [−norm, norm] with one at
    ``norm``, the hard case for plain iteration; otherwise Gaussian entries (whose eigenvalues
    crowd in a disc of about half the norm).
    """
    if symmetric:
        q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64))
        eig = torch.empty(batch, dim, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
        eig[:, 0] = 1.0
        a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    else:
        a = torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64)
    return norm * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]


class TanhEquilibriumNet(torch.nn.Module):
    """f(a, x) = tanh(W a + U x + b) with ‖W‖₂ = ``norm`` < 1, a contraction in a.

    Implements the producers' ``ImplicitNetwork`` protocol; ``forward`` is f.

    Args:
        dim: number of equilibrium units D.
        in_dim: input size.
        norm: spectral norm of W, the contraction factor bound.
        seed: seed of the random weights.
        symmetric: W symmetric with eigenvalues spread over [−norm, norm] (harder to solve).
    """

    def __init__(self, dim: int, in_dim: int, norm: float = 0.9, *, seed: int = 0, symmetric: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dtype = torch.get_default_dtype()
        self.weight = torch.nn.Parameter(matrices_with_norm(1, dim, norm, generator=gen, symmetric=symmetric)[0].to(dtype))
        self.input_weight = torch.nn.Parameter(
            torch.randn(dim, in_dim, generator=gen, dtype=torch.float64).div(in_dim ** 0.5).to(dtype))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype))

    def fixed_point_map(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(a, x) for a: [B, D], x: [B, in_dim]."""
        return torch.tanh(a @ self.weight.T + x @ self.input_weight.T + self.bias)

    forward = fixed_point_map

    def map_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        """The input is f's only extra argument."""
        return (x,)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros [B, D]."""
        return x.new_zeros(x.shape[0], self.weight.shape[0])


def compare_backward_solvers(
    names: Sequence[str], *, dim: int = 200, in_dim: int = 50, batch: int = 16, norm: float = 0.9,
    b_max_iter: int = 30, b_tol: float = 1e-6, dtype: torch.dtype = torch.float32, device: str = "cpu",
    seed: int = 0,
) -> list[BackwardOutcome]:
    """Train-step style comparison: analytic equilibrium, then each backward solver on the same loss;
    ``grad_error`` is dW's relative error against the ``exact`` solver's (a dense LU solve of each
    sample's adjoint system)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        net = TanhEquilibriumNet(dim, in_dim, norm, seed=seed).to(device)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, in_dim, generator=gen, dtype=dtype).to(device)
        grad_a = torch.randn(batch, dim, generator=gen, dtype=dtype).to(device)
        eq = get_producer("analytic", f_max_iter=200, f_tol=1e-6)(net, x)
        exact = implicit_grad(net, eq.a, *eq.f_args, b_solver="exact", b_max_iter=3, b_tol=1e-12)
        (reference,) = torch.autograd.grad((exact * grad_a).sum(), net.weight)
        rows = []
        for name in names:
            results: list[solvers.SolverResult] = []
            start = time.perf_counter()
            out = implicit_grad(net, eq.a, *eq.f_args, b_solver=name, b_max_iter=b_max_iter, b_tol=b_tol,
                                on_backward=results.append)
            (grad_w,) = torch.autograd.grad((out * grad_a).sum(), net.weight)
            if grad_w.is_cuda:
                torch.cuda.synchronize()
            elapsed = 1e3 * (time.perf_counter() - start)
            summary = results[0].summary()
            rows.append(BackwardOutcome(
                solver=name, n_evals=results[0].n_evals, rel_residual=summary["rel_residual_max"],
                converged=summary["converged_fraction"], status=summary["status"],
                grad_error=float((grad_w - reference).norm() / reference.norm()), milliseconds=elapsed,
            ))
        return rows
    finally:
        torch.set_default_dtype(previous)
