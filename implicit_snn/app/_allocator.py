"""Keep freed host memory in the process for reuse (glibc only; elsewhere nothing happens).

A training step frees and reallocates the same tensors every time. glibc's malloc hands freed
blocks at the top of the heap back to the kernel and serves blocks above its mmap threshold by
fresh mappings, so the next step's tensors of a few hundred KiB page-fault on first touch:
about 300 faults per F400 step here, several percent of its time. Raising the trim threshold
and the mmap threshold keeps the memory mapped; peak memory is unchanged (the blocks are
reused, not added), and only a process that shrinks from a larger peak keeps that peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold on 64-bit systems
_TRIM_THRESHOLD = 512 << 20
_TOP_PAD = 64 << 20


def retain_freed_memory() -> bool:
    """Tune glibc's malloc as described above for this process; True if it applied.

    Process-wide, so called by the application (CLI, benchmarks), never on import of the library.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = [mallopt(option, value) == 1 for option, value in
          ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))]
    return all(ok)
