"""Per-epoch metrics of training: running totals over an epoch's batches, the backward's wall
time, peak memory, and the summary of a run's epochs (the paper's protocol)."""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from typing import Any

import torch

from . import distributed
from .distributed import Context

def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BackwardTimer:
    """Wall time of one backward: by the clock on a CPU, by CUDA events on a GPU (read after the
    step's own synchronisation, so that timing adds none)."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._begin = time.perf_counter()

    def stop(self) -> None:
        if self._cuda:
            self._end.record()
        else:
            self._elapsed = time.perf_counter() - self._begin

    def seconds(self) -> float:
        return self._start.elapsed_time(self._end) / 1e3 if self._cuda else self._elapsed


def _as_floats(values: list[Any]) -> list[float]:
    """``values`` (0-dim tensors or numbers) as floats; tensors on one device are read in one sync."""
    if values and all(torch.is_tensor(v) for v in values) and len({v.device for v in values}) == 1:
        return torch.stack([v.detach().reshape(()).float() for v in values]).tolist()
    return [float(v) for v in values]


@dataclasses.dataclass
class EpochTotals:
    """Sums over the batches of one epoch (kept in checkpoints so a resumed epoch adds up the same)."""

    samples: int = 0
    loss: float = 0.0
    correct: int = 0
    batches: int = 0
    backward_evals: float = 0.0
    backward_rel_residual: float = 0.0
    backward_converged: float = 0.0
    backward_status: dict = dataclasses.field(default_factory=dict)
    forward_status: dict = dataclasses.field(default_factory=dict)
    firing_rate: float = 0.0
    firing_batches: int = 0
    # Per layer, sums over batches of the producer's ``firing_rate_per_layer``, ``silent_per_layer``
    # and ``saturated_per_layer`` (``layer_batches`` of them; [] until a producer reports them).
    firing_rate_per_layer: list = dataclasses.field(default_factory=list)
    silent_per_layer: list = dataclasses.field(default_factory=list)
    saturated_per_layer: list = dataclasses.field(default_factory=list)
    layer_batches: int = 0
    seconds: float = 0.0
    backward_seconds: float = 0.0  # in loss.backward() (the implicit backward's solve, or BPTT's)
    lr: float = math.nan  # the learning rate of the epoch's latest step
    skipped: int = 0  # steps skipped for a non-finite number (the same in every process; not in the other sums)

    def add(self, loss: float, correct: int, samples: int, model: torch.nn.Module) -> None:
        self.samples += samples
        self.loss += loss * samples
        self.correct += correct
        self.batches += 1
        result = getattr(model, "last_backward", None)
        if result is not None:
            summary = result.summary()
            self.backward_evals += summary["n_evals"]
            self.backward_rel_residual += summary["rel_residual_max"]
            self.backward_converged += summary["converged_fraction"]
            self.backward_status[summary["status"]] = self.backward_status.get(summary["status"], 0) + 1
        self.add_forward(model)

    def add_forward(self, model: torch.nn.Module) -> None:
        """Add the producer's statistics of the model's latest forward (firing rate, per-layer
        activity, solver status)."""
        forward = getattr(model, "last_forward", {})
        if forward.get("firing_rate") is not None:
            self.firing_rate += float(forward["firing_rate"])
            self.firing_batches += 1
        if all(forward.get(name) for name in self._PER_LAYER):
            layers = [forward[name] for name in self._PER_LAYER]
            values = _as_floats([v for per_layer in layers for v in per_layer])  # one host sync for all
            if not self.layer_batches:
                for name, per_layer in zip(self._PER_LAYER, layers):
                    setattr(self, name, [0.0] * len(per_layer))
            start = 0
            for name in self._PER_LAYER:
                sums = getattr(self, name)
                for index in range(len(sums)):
                    sums[index] += values[start + index]
                start += len(sums)
            self.layer_batches += 1
        if "forward_status" in forward:  # a forward solver (the analytic producer) reports its status too
            self.forward_status[forward["forward_status"]] = self.forward_status.get(forward["forward_status"], 0) + 1

    _SUMMED = ("samples", "loss", "correct", "batches", "backward_evals", "backward_rel_residual",
               "backward_converged", "firing_rate", "firing_batches", "layer_batches")
    _PER_LAYER = ("firing_rate_per_layer", "silent_per_layer", "saturated_per_layer")

    def across_processes(self, context: Context, device: torch.device) -> "EpochTotals":
        """The totals of all processes together (wall time and lr stay this process's own)."""
        if not context.distributed:
            return self
        sums = distributed.sum_across([float(getattr(self, name)) for name in self._SUMMED], context, device)
        merged = dataclasses.replace(self, **{name: type(getattr(self, name))(value)
                                             for name, value in zip(self._SUMMED, sums)})
        for field in ("backward_status", "forward_status"):
            combined: dict = {}
            for counts in distributed.gather_objects(getattr(self, field), context):
                for key, value in counts.items():
                    combined[key] = combined.get(key, 0) + value
            setattr(merged, field, combined)
        # Per layer, one gather for the three lists; a process that has counted no batch holds [].
        gathered = distributed.gather_objects([getattr(self, field) for field in self._PER_LAYER], context)
        for index, field in enumerate(self._PER_LAYER):
            lists = [values[index] for values in gathered if values[index]]
            setattr(merged, field, [sum(column) for column in zip(*lists)] if lists else [])
        return merged

    def forward_metrics(self, *, per_layer: bool = True) -> dict[str, Any]:
        """Batches per forward-solver status, the mean firing rate and (``per_layer``), per layer,
        the mean firing rate and the fractions of silent and saturated neurons (means over
        batches), each only where reported."""
        out: dict[str, Any] = {}
        if self.forward_status:
            out["forward_status"] = dict(self.forward_status)
        if self.firing_batches:
            out["firing_rate"] = self.firing_rate / self.firing_batches
        if per_layer and self.layer_batches:
            for name in self._PER_LAYER:
                out[name] = [value / self.layer_batches for value in getattr(self, name)]
        return out

    def metrics(self) -> dict[str, Any]:
        n = max(self.batches, 1)
        out = {
            "train_loss": self.loss / max(self.samples, 1),
            "train_acc": self.correct / max(self.samples, 1),
            "train_seconds": self.seconds,
            "train_images_per_s": self.samples / self.seconds if self.seconds > 0 else math.nan,
            "skipped_steps": self.skipped,  # steps not taken (non-finite numbers); loss and accuracy leave them out
        }
        if self.backward_seconds > 0:
            out["backward_ms_mean"] = 1e3 * self.backward_seconds / n
        if self.backward_status:
            out.update(backward_evals_mean=self.backward_evals / n, backward_rel_residual_mean=self.backward_rel_residual / n,
                       backward_converged_fraction=self.backward_converged / n, backward_status=dict(self.backward_status))
        out.update(self.forward_metrics())
        return out




def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch test accuracy, that of the epoch chosen on validation, and the best epoch's (the paper's protocol)."""
    if not rows:
        return {}
    summary: dict[str, Any] = {"epochs": len(rows), "final_test_acc": rows[-1].get("test_acc")}
    with_val = [r for r in rows if "val_acc" in r]
    if with_val:
        chosen = max(with_val, key=lambda r: (r["val_acc"], -r["epoch"]))
        summary.update(val_chosen_epoch=chosen["epoch"], val_chosen_test_acc=chosen.get("test_acc"))
    with_test = [r for r in rows if "test_acc" in r]
    if with_test:
        best = max(with_test, key=lambda r: (r["test_acc"], -r["epoch"]))
        summary.update(best_epoch=best["epoch"], best_epoch_test_acc=best["test_acc"])
        last10 = with_test[-10:]
        summary["last10_mean_test_acc"] = sum(r["test_acc"] for r in last10) / len(last10)
    summary["train_seconds_per_epoch_median"] = sorted(r["train_seconds"] for r in rows)[len(rows) // 2]
    summary["peak_memory_mib"] = max(r["peak_memory_mib"] for r in rows)
    return summary
