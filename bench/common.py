"""What the benchmarks share: the device's name, the result files, timed SGD steps."""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from implicit_snn import precision
from implicit_snn.files import atomic_write_text


def device_name(device: str) -> str:
    """A human-readable name of the device, recorded with every figure."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def simd_flags() -> Optional[list[str]]:
    """The CPU's vector-arithmetic flags (AVX, AVX-512 with its BF16 and VNNI parts, AMX, FMA), or None
    where /proc/cpuinfo cannot be read: what decides whether bf16 products are native."""
    flags = precision._cpu_flags()
    return None if flags is None else sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))


def run_header(device: str) -> dict[str, Any]:
    """What every result file starts with: the device and its name, torch's version, the date, the
    CPU's vector flags and whether the device multiplies bf16 natively."""
    native, why = precision.native_bf16(device)
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_flags": simd_flags(), "native_bf16": native, "native_bf16_why": why}


def write_results(out: str | Path, stem: str, report: dict[str, Any], markdown: str) -> None:
    """``out/<stem>.json`` and ``out/<stem>.md``, each written atomically; the markdown is also printed."""
    atomic_write_text(Path(out) / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(Path(out) / f"{stem}.md", markdown)
    print(markdown)


def timed_sgd_steps(model: torch.nn.Module, state: dict, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    device: str, on_step: Optional[Callable[[], None]] = None) -> tuple[list[float], float]:
    """Milliseconds of one SGD step (the paper's settings) per batch, from the weights ``state`` and
    the same dropout masks every call, and the last loss; ``on_step`` runs after each step, untimed."""
    model.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(0)
    times = []
    for x, y in batches:
        sync(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        times.append(1e3 * (time.perf_counter() - start))
        if on_step is not None:
            on_step()
    return times, float(loss.detach())
