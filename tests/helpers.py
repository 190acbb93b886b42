"""Problem generators shared by the tests: contractive maps with known solutions."""

from __future__ import annotations

import contextlib
import dataclasses

import torch


def matrices_with_norm(batch: int, dim: int, norm: float, *, generator: torch.Generator,
                       dtype=torch.float64, device="cpu", symmetric: bool = False) -> torch.Tensor:
    """``[batch, dim, dim]`` random matrices with spectral norm exactly ``norm``.

    ``symmetric=True`` spreads the eigenvalues uniformly over [−norm, norm], the hard case for
    plain iteration (the largest ones are close to the bound).
    """
    if symmetric:
        q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64))
        eig = torch.empty(batch, dim, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
        eig[:, 0] = 1.0
        a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    else:
        a = torch.randn(batch, dim, dim, generator=generator, dtype=torch.float64)
    a = norm * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    return a.to(dtype=dtype, device=device)


@dataclasses.dataclass
class AffineProblem:
    """g(z) = A z + c per sample, on tensors of shape ``[B, *event_shape]``; ``solution`` is exact."""

    a: torch.Tensor  # [B, D, D]
    c: torch.Tensor  # [B, D]
    shape: tuple[int, ...]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1)
        return (torch.einsum("bij,bj->bi", self.a, flat) + self.c).reshape(z.shape)

    @property
    def solution(self) -> torch.Tensor:
        eye = torch.eye(self.a.shape[-1], dtype=torch.float64, device=self.a.device)
        exact = torch.linalg.solve(eye - self.a.double(), self.c.double())
        return exact.to(self.a.dtype).reshape(self.shape)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.a.dtype, device=self.a.device)


def affine_problem(shape, norm, *, seed=0, dtype=torch.float64, device="cpu", symmetric=False) -> AffineProblem:
    """A random affine contraction with Lipschitz constant ``norm`` on batched tensors of ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    batch, dim = shape[0], 1
    for size in shape[1:]:
        dim *= size
    a = matrices_with_norm(batch, dim, norm, generator=gen, dtype=dtype, device=device, symmetric=symmetric)
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return AffineProblem(a, c, tuple(shape))


class TanhNetwork(torch.nn.Module):
    """f(a, x) = tanh(W a + U x + b) with ‖W‖₂ = ``norm``, hence ‖J_f‖ ≤ ``norm``.

    Also an ``ImplicitNetwork`` for the producers (x is its own f argument).
    """

    def __init__(self, dim: int, in_dim: int, norm: float = 0.9, *, seed: int = 0, symmetric: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = matrices_with_norm(1, dim, norm, generator=gen, symmetric=symmetric)[0]
        self.weight = torch.nn.Parameter(w.to(torch.get_default_dtype()))
        self.input_weight = torch.nn.Parameter(torch.randn(dim, in_dim, generator=gen, dtype=torch.float64).to(torch.get_default_dtype()))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(dim, generator=gen, dtype=torch.float64).to(torch.get_default_dtype()))

    def fixed_point_map(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a @ self.weight.T + x @ self.input_weight.T + self.bias)

    forward = fixed_point_map

    def map_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.weight.shape[0])

    def dense_implicit_grads(self, a_star: torch.Tensor, x: torch.Tensor, grad_a: torch.Tensor):
        """The implicit-function-theorem gradient by a dense solve: vᵀ ∂f/∂(θ, x), v = (I − Jᵀ)⁻¹ grad_a."""
        with torch.no_grad():
            pre = a_star @ self.weight.T + x @ self.input_weight.T + self.bias
            jac = (1 - torch.tanh(pre) ** 2)[:, :, None] * self.weight[None]
            eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
            v = torch.linalg.solve(eye - jac.transpose(1, 2), grad_a)
        xs = x.detach().requires_grad_()
        out = self.fixed_point_map(a_star.detach(), xs)
        return torch.autograd.grad(out, (self.weight, self.input_weight, self.bias, xs), v)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ over the whole tensor."""
    return float((actual - expected).norm() / expected.norm())


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily set torch's default dtype (for hypothesis tests, which cannot use fixtures)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
