"""What the tests share: contractive maps with known solutions, small CLI runs and their files."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from pathlib import Path

import pytest
import torch

from implicit_snn.app.cli import main
from implicit_snn.app.rundir import RunDir

from implicit_snn.app.demo import TanhEquilibriumNet, matrices_with_norm


@dataclasses.dataclass
class AffineProblem:
    """g(z) = A z + c per sample, on tensors of shape ``[B, *event_shape]``; ``solution`` is exact."""

    a: torch.Tensor  # [B, D, D]
    c: torch.Tensor  # [B, D]
    shape: tuple[int, ...]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z) + self.c.reshape(z.shape)

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """A v alone."""
        flat = v.reshape(v.shape[0], -1)
        return torch.einsum("bij,bj->bi", self.a, flat).reshape(v.shape)

    def declared(self, apply=None, linear=None):
        """This problem as a ``solvers.AffineMap`` (its linear part and offset), as a backward hands
        its adjoint system to the solvers; ``apply``/``linear`` replace g or A (e.g. to count calls)."""
        import solvers

        return solvers.AffineMap(linear or self.linear, self.c.reshape(self.shape), apply=apply)

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
    a = matrices_with_norm(batch, dim, norm, generator=gen, symmetric=symmetric).to(dtype=dtype, device=device)
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return AffineProblem(a, c, tuple(shape))


# f(a, x) = tanh(W a + U x + b) with a dense implicit-gradient oracle.
class TanhNetwork(TanhEquilibriumNet):
    """The demo's network with the tests' oracle: its implicit gradient by a dense solve."""

    def dense_implicit_grads(self, a_star: torch.Tensor, x: torch.Tensor, grad_a: torch.Tensor):
        """Gradients of ⟨grad_a, a*⟩ w.r.t. (W, U, b, x) by the implicit function theorem, densely."""
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


def true_residuals(g, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ‖g(z) − z‖ and ‖g(z) − z‖ / ‖g(z)‖, measured here (what a solver must report)."""
    gz = g(z)
    abs_res = (gz - z).reshape(z.shape[0], -1).norm(dim=1)
    return abs_res, abs_res / gz.reshape(z.shape[0], -1).norm(dim=1)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily set torch's default dtype (for hypothesis tests, which cannot use fixtures)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# A few seconds of training: the synthetic dataset, small batches, T = 3, one thread.
SMALL = ["--dataset", "synthetic", "--val-size", "64", "--batch-size", "32", "--time-steps", "3", "--threads", "1"]


def metrics(run_dir) -> list[dict]:
    """The metrics rows of a run directory."""
    return RunDir(Path(run_dir)).read_metrics()


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics rows without the timing and memory figures, which differ between identical runs."""
    timing = ("train_seconds", "train_images_per_s", "backward_ms_mean", "eval_seconds", "peak_memory_mib")
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]


def cli_error(argv: list[str], capsys) -> str:
    """Run the command line in this process on input it must refuse; returns the error it printed,
    after checking that it is one line and that the exit status is not 0."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert code not in (0, None)
    # Usage errors (ours and argparse's) print one line to stderr and exit with 2; a stop while
    # training (a non-converged solve with throw=True) exits with its message (status 1).
    message = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert "\n" not in message.strip(), message
    return message


# N-MNIST files written by hand: 5-byte events in the dataset's digit folders.

def event(x: int, y: int, p: int, ts: int) -> bytes:
    return bytes([x, y, (p << 7) | ((ts >> 16) & 0x7F), (ts >> 8) & 0xFF, ts & 0xFF])


# (x, y, polarity, ts): expected (t, polarity, y, x) with 3 ms bins and T = 4.
NMNIST_EVENTS = {
    ("Train", 3, "00001.bin"): [(0, 0, 1, 0),            # ts = 0 is kept (the reference drops it)
                                (33, 5, 0, 2999),        # last microsecond of frame 0
                                (10, 20, 1, 3000),       # first of frame 1
                                (10, 20, 1, 3500),       # same bin: count 2
                                (7, 8, 0, 11999),        # last frame (3) is filled
                                (7, 8, 1, 12000),        # past the last frame: dropped
                                (1, 2, 1, 0x7FFFFF)],    # largest timestamp: dropped
    ("Train", 3, "00000.bin"): [(4, 4, 0, 6000)],
    ("Train", 7, "00005.bin"): [(33, 33, 1, 9001)],
    ("Test", 0, "00009.bin"): [(2, 3, 0, 100)],
}


def write_nmnist(base: Path) -> None:
    for (split, digit, name), events in NMNIST_EVENTS.items():
        folder = base / split / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"".join(event(*e) for e in events))


# Writes that fail as on a full disk, or that do something (send a signal) midway.

class _InterceptedFile:
    """A file open for writing with ``room`` bytes left on its disk: a write past them writes what
    fits and raises OSError(ENOSPC); ``on_write(n)`` runs before the n-th write."""

    def __init__(self, handle, room, on_write):
        self.handle, self.room, self.on_write, self.written, self.writes = handle, room, on_write, 0, 0

    def write(self, data):
        self.writes += 1
        if self.on_write is not None:
            self.on_write(self.writes)
        data = bytes(data)
        if self.room is not None and self.written + len(data) > self.room:
            self.handle.write(data[:self.room - self.written])
            self.written = self.room
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def intercept_writes(monkeypatch, name: str, *, nth: int = 1, room=None, on_write=None) -> list[str]:
    """Route the ``nth`` atomic write of the file called ``name`` (through its temporary file
    ``.name.*.tmp``) through ``_InterceptedFile``; returns the temporary files opened for ``name``."""
    real_fdopen = os.fdopen
    opened: list[str] = []

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "w" in mode and os.path.basename(target).startswith(f".{name}."):
            opened.append(target)
            if len(opened) == nth:
                return _InterceptedFile(handle, room, on_write)
        return handle

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell which file a descriptor writes")
    monkeypatch.setattr(os, "fdopen", fdopen)
    return opened


def temporary_files(folder) -> list[str]:
    """Leftover temporary files of atomic writes in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))
