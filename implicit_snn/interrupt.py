"""A cooperative stop: a flag that long loops poll, so that a stop request (Ctrl-C, SIGTERM) ends
a simulation of many time steps or an evaluation of many batches promptly instead of after it.

Whoever handles the signal calls ``request_stop()`` (the command line does, from its signal
handler); the simulation loops of the spiking producers and of BPTT call ``check()`` once per
time step, and ``evaluate`` between batches. ``check()`` raises ``StopRequested`` only inside an
``abortable()`` block: there the caller (``Trainer``) knows how to undo the work in progress,
while anyone else calling a producer (``eval``, ``analyze``, a user's script) is never cut short.
Reading a module-level bool costs nothing next to a time step's tensor operations.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

_requested = False
_depth = 0  # nesting of abortable() blocks


class StopRequested(Exception):
    """A stop was requested while abortable work was in progress; that work was abandoned."""


def request_stop() -> None:
    """Ask the abortable work in progress to stop at its next check (safe in a signal handler)."""
    global _requested
    _requested = True


def stop_requested() -> bool:
    """Whether a stop has been requested since the last ``clear_stop``."""
    return _requested


def clear_stop() -> None:
    """Forget a stop request (before a new run, and once it has been acted on for good)."""
    global _requested
    _requested = False


@contextlib.contextmanager
def abortable() -> Iterator[None]:
    """Within the block, ``check()`` raises ``StopRequested`` once a stop is requested."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def check() -> None:
    """Raise ``StopRequested`` if a stop was requested and the caller is in an ``abortable()`` block."""
    if _requested and _depth:
        raise StopRequested("a stop was requested")
