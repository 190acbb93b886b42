"""Implicit differentiation through an equilibrium, whatever produced it.

Given a fixed point a* = f(a*, *args) found by any black box, the gradient of a loss L with
respect to f's parameters and ``args`` is vᵀ ∂f(a*, args)/∂(θ, args) with v the solution of
the adjoint system v = J_f(a*)ᵀ v + ∂L/∂a (the implicit function theorem). The producer of a*
is never differentiated; only one evaluation of f with grad is made, and the adjoint solve
takes VJPs of that one graph with respect to a only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from solvers import AffineMap, SolverResult, check_budget, check_settings, configure, get_solver

OnBackward = Callable[[SolverResult], None]
#: ``linearize(a, *args) -> (f(a, *args) with graph, jt)`` with ``jt(v, add=None) = J_f(a)ᵀ v (+ add)``.
Linearize = Callable[..., tuple[torch.Tensor, Callable[..., torch.Tensor]]]
VJP_MODES = ("auto", "autograd")


def check_backward_budget(b_max_iter: Any) -> None:
    """Refuse a backward budget below one step in one line: the Jacobian-free gradient has one
    switch, ``b_solver="phantom"`` with ``b_options={"steps": 0}``, not a zero budget."""
    if isinstance(b_max_iter, bool) or not isinstance(b_max_iter, int) or b_max_iter < 1:
        raise ValueError(f"`b_max_iter` must be an int >= 1, got {b_max_iter!r}; for the Jacobian-free gradient "
                         "use b_solver phantom with b_options steps=0")


class ImplicitAdjoint:
    """The backward: solve the adjoint system with a registry solver.

    Args:
        b_solver: a registered solver name (``"broyden"``, ``"anderson"``, ...) or a solver object.
        b_max_iter: cap on solver steps (each about one VJP of f), an int >= 1. The
            Jacobian-free gradient is ``b_solver="phantom", b_options={"steps": 0}``.
        b_tol: tolerance of the adjoint solve, in ``b_stop_mode``.
        b_stop_mode: ``"rel"`` (default) or ``"abs"`` residual.
        b_options: one dict of the solver's own options (e.g. ``{"memory": 10}``) and the
            driver's call options (``throw``, ``check_every``, ``return_best``,
            ``divergence_factor``), split by name and checked now (``solvers.configure``): an
            unknown name is a ``ValueError`` listing what this solver accepts, and a call option
            it cannot honour is refused.
        on_backward: called with the ``SolverResult`` after every backward solve.
        vjp: ``"auto"`` takes J_fᵀv from the explicit operator of a ``linearize`` callable when
            one is given (``FeedbackSNN.linearized_map``), else from autograd; ``"autograd"``
            always differentiates f's graph (the reference the explicit operator is tested on).

    Attributes:
        solver: the solver, its own options applied; ``call_options``: what each solve passes it.
        name: the registered name it was given by, or the solver object's class name.
        max_iter, tol, stop_mode: the settings of each solve.
        last_result: the ``SolverResult`` of the most recent backward solve (None before any).
    """

    def __init__(
        self,
        b_solver: Any = "broyden",
        *,
        b_max_iter: int = 30,
        b_tol: float = 1e-6,
        b_stop_mode: str = "rel",
        b_options: Optional[dict[str, Any]] = None,
        on_backward: Optional[OnBackward] = None,
        vjp: str = "auto",
    ):
        check_backward_budget(b_max_iter)
        check_settings(b_max_iter, b_tol, b_stop_mode, prefix="b_")
        if vjp not in VJP_MODES:
            raise ValueError(f"`vjp` must be one of {VJP_MODES}, got {vjp!r}")
        if b_options is not None and not isinstance(b_options, dict):
            raise TypeError(f"`b_options` must be a dict, got {type(b_options).__name__}")
        self.vjp = vjp
        self.solver, self.call_options = configure(get_solver(b_solver), b_options or {})
        check_budget(self.solver, b_max_iter, prefix="b_")  # a fixed budget above the cap: an error now
        self.name = b_solver if isinstance(b_solver, str) else type(b_solver).__name__
        self.max_iter = b_max_iter
        self.tol = b_tol
        self.stop_mode = b_stop_mode
        self.on_backward = on_backward
        self.last_result: Optional[SolverResult] = None

    def __repr__(self) -> str:
        return (f"ImplicitAdjoint(b_solver={self.solver!r}, b_max_iter={self.max_iter}, b_tol={self.tol}, "
                f"b_stop_mode={self.stop_mode!r}, vjp={self.vjp!r}, call_options={self.call_options!r})")

    def __call__(self, f: Callable[..., torch.Tensor], a_star: torch.Tensor, *args: Any,
                 linearize: Optional[Linearize] = None, coupled: bool = False) -> torch.Tensor:
        """A tensor equal to ``a_star`` whose gradient is the implicit one.

        Args:
            f: the fixed-point map, ``f(a, *args) -> tensor shaped like a``; any differentiable
                callable (an nn.Module or a closure over parameters).
            a_star: the equilibrium ``[B, ...]``, computed by anything; it is not differentiated.
            *args: further inputs of f; gradients reach those that require grad.
            linearize: optionally, f with its transposed Jacobian as an explicit operator
                (``FeedbackSNN.linearized_map``), used instead of f when ``vjp="auto"``.
            coupled: f mixes the samples of the batch (batch statistics in training,
                ``FeedbackSNN.couples_samples``): the adjoint is then solved as one problem for
                the whole batch (the solver's ``coupled=True``), the only way its reported
                residuals are true at the returned adjoint.

        Returns:
            ``a_star``'s values (exactly, not f(a_star)); in backward, ∂L/∂θ = vᵀ ∂f/∂θ with
            v = (I − J_fᵀ)⁻¹ ∂L/∂a. When gradients are off, ``a_star`` itself without calling f.
        """
        if not isinstance(a_star, torch.Tensor):
            raise TypeError(f"`a_star` must be a torch.Tensor, got {type(a_star).__name__}")
        a_star = a_star.detach()
        if not torch.is_grad_enabled():
            return a_star
        jt = None
        if linearize is not None and self.vjp == "auto":
            # The operator gives Jᵀv, so f's graph needs no path to a: the one backward through
            # it then skips the product that would compute a gradient nobody reads.
            z = a_star
            fz, jt = linearize(z, *args)
        else:
            z = a_star.clone().requires_grad_()
            fz = f(z, *args)
        if not isinstance(fz, torch.Tensor) or fz.shape != a_star.shape:
            got = tuple(fz.shape) if isinstance(fz, torch.Tensor) else type(fz).__name__
            raise ValueError(f"f(a, *args) must return a tensor shaped like a {tuple(a_star.shape)}, got {got}")
        if not fz.requires_grad:
            return a_star
        return _ImplicitBridge.apply(fz, a_star, z, self, jt, coupled)

    def solve_adjoint(self, fz: torch.Tensor, z: torch.Tensor, grad: torch.Tensor,
                      jt: Optional[Callable[..., torch.Tensor]] = None, coupled: bool = False) -> torch.Tensor:
        """v with v = J_f(z)ᵀ v + grad, by the operator ``jt`` or by VJPs of the graph ``fz = f(z, ...)`` w.r.t. z
        (one problem for the whole batch if ``coupled``)."""

        if jt is not None:
            def transposed(v: torch.Tensor) -> torch.Tensor:
                return jt(v)

            def adjoint_map(v: torch.Tensor) -> torch.Tensor:
                return jt(v, add=grad)  # Jᵀv + ∂L/∂a fused into the last product
        else:
            def transposed(v: torch.Tensor) -> torch.Tensor:
                (vjp,) = torch.autograd.grad(fz, z, v, retain_graph=True, allow_unused=True)
                return torch.zeros_like(v) if vjp is None else vjp

            def adjoint_map(v: torch.Tensor) -> torch.Tensor:
                return transposed(v) + grad

        # Only passed when set, so that a user's own solver callable need not know the argument.
        coupling = {"coupled": True} if coupled else {}
        # The adjoint system as a linear problem v = A v + c, A: v ↦ J_fᵀ v, c = ∂L/∂a: linear
        # solvers apply A itself, the others see g(v) = A v + c.
        problem = AffineMap(transposed, grad, apply=adjoint_map)
        result = self.solver(
            problem, grad, max_iter=self.max_iter, tol=self.tol, stop_mode=self.stop_mode,
            **coupling, **self.call_options,
        )
        self.last_result = result
        if self.on_backward is not None:
            self.on_backward(result)
        return result.z


class _ImplicitBridge(torch.autograd.Function):
    """Forward: the producer's a*. Backward: the incoming ∂L/∂a becomes the adjoint solution v,
    handed to f's graph, which carries it into f's parameters and arguments."""

    @staticmethod
    def forward(ctx, fz, a_star, z, adjoint, jt, coupled):  # type: ignore[override]
        # Saved tensors are released after a backward without retain_graph, and kept with it.
        ctx.save_for_backward(fz, z)
        ctx.adjoint, ctx.jt, ctx.coupled = adjoint, jt, coupled
        return a_star.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        fz, z = ctx.saved_tensors
        # Starting from ∂L/∂a (the Jacobian-free gradient) instead of zero saves one VJP.
        with torch.enable_grad():
            v = ctx.adjoint.solve_adjoint(fz, z, grad.contiguous(), ctx.jt, ctx.coupled)
        return v, None, None, None, None, None


def implicit_grad(
    f: Callable[..., torch.Tensor],
    a_star: torch.Tensor,
    *args: Any,
    b_solver: Any = "broyden",
    b_max_iter: int = 30,
    b_tol: float = 1e-6,
    b_stop_mode: str = "rel",
    b_options: Optional[dict[str, Any]] = None,
    on_backward: Optional[OnBackward] = None,
    linearize: Optional[Linearize] = None,
    coupled: bool = False,
) -> torch.Tensor:
    """Attach the implicit gradient of the fixed point a* = f(a*, *args) to ``a_star``.

    Returns a tensor equal to ``a_star`` whose gradient with respect to f's parameters and to
    ``args`` is vᵀ ∂f(a*, args)/∂θ, v = (I − J_f(a*)ᵀ)⁻¹ ∂L/∂a, v found by the solver
    ``b_solver`` (a registry name or a solver object) within ``b_max_iter`` (>= 1) steps to ``b_tol``.
    ``on_backward`` receives the backward solve's ``SolverResult`` (evaluations, residuals,
    convergence) for logging; an ``ImplicitAdjoint`` keeps it as ``last_result``. ``linearize``
    optionally gives f with an explicit transposed Jacobian, and ``coupled`` says that f mixes the
    samples (see ``ImplicitAdjoint.__call__``). ``b_options`` is one dict of the solver's own
    options and the driver's call options ``throw``, ``check_every``, ``return_best``,
    ``divergence_factor``, checked before anything runs (see ``ImplicitAdjoint``).

    Example:
        >>> a = solvers.get_solver("anderson")(lambda z: f(z, x), z0, max_iter=50, tol=1e-6).z
        >>> loss(implicit_grad(f, a, x)).backward()
    """
    adjoint = ImplicitAdjoint(
        b_solver, b_max_iter=b_max_iter, b_tol=b_tol, b_stop_mode=b_stop_mode, b_options=b_options,
        on_backward=on_backward,
    )
    return adjoint(f, a_star, *args, linearize=linearize, coupled=coupled)
