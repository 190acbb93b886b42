"""The maps solvers see: a user's map wrapped to count its calls in the solver's layout, an affine
map given as its linear operator and offset, and the residuals measured from them."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

Map = Callable[[torch.Tensor], torch.Tensor]


class AffineMap:
    """An affine map g(z) = A z + c given as its parts: the linear operator A and the offset c.

    Linear solvers use A itself (GMRES's Arnoldi products, ``exact``'s columns, the Neumann
    series' terms, SPIDE's spike inputs), never a difference of two evaluations of g; the
    others see only g. The backward hands its adjoint system to solvers this way, A being
    v ↦ J_fᵀ v (the network's explicit operator, or autograd's VJP) and c = ∂L/∂a. Since g is
    affine by construction, GMRES may take the image its recurrence forms at the returned
    point as measured.

    Args:
        linear: ``v ↦ A v`` on tensors shaped like z (one call counts as one evaluation).
        offset: c, shaped like z.
        apply: optionally ``z ↦ A z + c`` in one fused call (e.g. a product-and-add); by default
            ``linear(z) + offset``.
    """

    affine = True

    def __init__(self, linear: Map, offset: torch.Tensor, *, apply: Optional[Map] = None):
        if not callable(linear):
            raise TypeError(f"AffineMap needs a callable linear operator, got {type(linear).__name__}")
        if not isinstance(offset, torch.Tensor):
            raise TypeError(f"AffineMap's offset must be a tensor, got {type(offset).__name__}")
        if apply is not None and not callable(apply):
            raise TypeError(f"AffineMap's apply must be callable, got {type(apply).__name__}")
        self.linear, self.offset, self._apply = linear, offset, apply

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply(z) if self._apply is not None else self.linear(z) + self.offset

    def __repr__(self) -> str:
        return f"AffineMap(linear={self.linear!r}, offset shaped {tuple(self.offset.shape)})"


def is_declared_affine(g: Any) -> bool:
    """Whether ``g`` was declared affine (an ``AffineMap``, or any callable with ``affine = True``)."""
    return getattr(g, "affine", False) is True


class BatchedMap:
    """Wraps a user map ``g: [B, ...] -> [B, ...]`` as ``[B, D] -> [B, D]`` (``[1, B·D]`` for a
    coupled batch) and counts its calls. For an ``AffineMap`` it also offers its linear part
    (``linear``, counted alike: one product is one evaluation) and its offset, same layout."""

    def __init__(self, g: Map, shape: torch.Size, *, coupled: bool = False):
        self._g = g
        self._shape = shape
        # [B, D] problems of independent samples need no reshaping (the common case).
        self._flat = len(shape) == 2 and not coupled
        self.n_evals = 0
        self.is_affine = is_declared_affine(g)
        self._linear = getattr(g, "linear", None) if self.is_affine else None
        offset = getattr(g, "offset", None) if self._linear is not None else None
        if offset is not None and tuple(offset.shape) != tuple(shape):
            raise ValueError(f"the affine map's offset is shaped {tuple(offset.shape)}, its input {tuple(shape)}")
        self._offset = offset

    @property
    def has_linear(self) -> bool:
        """Whether the map's linear part A is available (an ``AffineMap``)."""
        return self._linear is not None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self._counted(self._g, z)

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """A v for the flat layout (only where ``has_linear``)."""
        return self._counted(self._linear, v)

    def offset(self, like: torch.Tensor) -> torch.Tensor:
        """c in the flat layout of ``like`` (only where ``has_linear``)."""
        return self._offset.reshape(like.shape).to(like.dtype)

    def _counted(self, fn: Map, z: torch.Tensor) -> torch.Tensor:
        out = fn(z if self._flat else z.view(self._shape))
        self.n_evals += 1
        if not isinstance(out, torch.Tensor) or out.shape != self._shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the map must return a tensor shaped like its input {tuple(self._shape)}, got {got}"
            )
        return out if self._flat else out.reshape(z.shape)


def residual_norms(fz: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
    """[2, B]: per sample ``‖fz‖`` and that over ``‖g(z)‖``, for ``fz = g(z) − z`` and ``gz`` [B, D]."""
    out = fz.new_empty(2, fz.shape[0])
    torch.linalg.vector_norm(fz, dim=1, out=out[0])
    torch.div(out[0], torch.linalg.vector_norm(gz, dim=1).clamp_min_(torch.finfo(gz.dtype).tiny), out=out[1])
    return out


def residuals(z: torch.Tensor, gz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``‖g(z) − z‖`` and that over ``‖g(z)‖`` for [B, D] tensors."""
    abs_res, rel_res = residual_norms(gz - z, gz)
    return abs_res, rel_res


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite (one host sync)."""
    # A sum is one cheap pass and is finite whenever every entry is, unless finite entries
    # overflow it; only then is the exact, several-times-slower elementwise test needed.
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def first_evaluation(g: BatchedMap, z0: torch.Tensor) -> torch.Tensor:
    """Evaluate ``g(z0)`` once, refusing non-finite input or output with a clear error."""
    if not all_finite(z0):
        raise ValueError("`z0` contains NaN or Inf; a fixed-point solve needs a finite initial guess")
    gz0 = g(z0)
    if not all_finite(gz0):
        raise ValueError("the map returned NaN or Inf at the initial guess `z0`; check its inputs")
    return gz0
