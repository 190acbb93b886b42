"""The spiking simulation's arithmetic precision: float32, or bfloat16 products where the device
multiplies bfloat16 natively.

IDE never differentiates the simulation: it only has to land near the equilibrium, and the
backward linearises f at whatever a* it produced, in float32. Spikes are exactly 0 or 1, so
they are exact in bfloat16; only the weights and the products' outputs are rounded (8
significant bits). In ``"bf16"`` the simulation's synaptic products (feedback, forward layers,
and the input layer on spike-train input) take bfloat16 operands, weights and biases cast once
per forward pass, and return bfloat16; each product is then added to a float32 drive or
normalised in float32, and membrane potentials, thresholds, resets and the rate accumulation
stay float32. A constant input's current is computed once per pass, in float32.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch

PRECISIONS = ("fp32", "bf16", "auto")
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> Optional[frozenset[str]]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return None


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 natively, and why: CUDA by ``torch.cuda.is_bf16_supported``,
    a CPU by its flags (AVX512-BF16 or AMX-BF16; elsewhere bfloat16 products are emulated and slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        with torch.cuda.device(device):
            ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"the CUDA device {'supports' if ok else 'lacks native'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 detection for {device.type} devices"
    flags = _cpu_flags()
    if flags is None:
        return False, "the CPU's flags cannot be read (no /proc/cpuinfo)"
    found = [flag for flag in NATIVE_CPU_FLAGS if flag in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, "the CPU has neither avx512_bf16 nor amx_bf16 (bf16 products would be emulated)"


def check_precision(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of ``PRECISIONS``."""
    if name not in PRECISIONS:
        raise ValueError(f"`sim_precision` must be one of {', '.join(map(repr, PRECISIONS))}, got {name!r}")


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"``: ``name`` itself, or for ``"auto"`` bf16 exactly where ``device`` runs it natively."""
    check_precision(name)
    if name != "auto":
        return name
    return "bf16" if native_bf16(device)[0] else "fp32"


def product_dtype(name: str) -> Optional[torch.dtype]:
    """The products' dtype for a resolved precision: bfloat16 for ``"bf16"``, None for ``"fp32"`` (unchanged)."""
    return torch.bfloat16 if name == "bf16" else None
