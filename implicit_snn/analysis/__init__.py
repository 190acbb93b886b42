"""What a trained implicit classifier does, measured: the questions behind ``implicit-snn analyze``.

* ``equilibrium_gap``: how far the SNN's average rates after T steps are from the equilibrium of
  f they are meant to approximate (supplement Theorems 1–2: the gap shrinks like 1/T for IF),
  and whether the read-out's decision changes between the two.
* ``compare_backward``: every backward solver on the same training step of the model: VJPs,
  residuals, convergence, time, and how far its parameter gradient is from a tight solve.
* ``FrozenStep``: one training step captured at its equilibrium, differentiated by any backward
  (what ``compare_backward`` and ``bench/bench_solvers.py`` build on).
* ``feedback_norm``: the feedback weight against the convergence condition ‖W‖₂ < V_th.
* ``spike_census`` and ``layer_activity``: every neuron's spikes over samples; per layer the
  mean firing rate, silent and saturated neurons and the spike-count histogram.
* ``energy_report`` and ``training_step_cost``: synaptic operations (spikes × fan-out), MACs and
  an energy estimate per layer and per sample, against the same network run without spikes,
  for inference and for one IDE training step.

The model is never changed: each function restores its state (weights, batch-norm statistics,
power-iteration vectors, train/eval mode, producer and backward) before returning.
"""

from ._activity import LayerActivity, SpikeCensus, layer_activity, spike_census
from ._energy import (
    EnergyReport, LayerEnergy, OperationEnergy, TrainingStepCost, energy_report, fan_in, fan_out, synapses,
    training_step_cost,
)
from ._equilibrium import EquilibriumGap, equilibrium_gap
from ._solvers import SPIDE_STEPS, BackwardOutcome, backward_budget, compare_backward, feedback_norm
from ._step import FrozenStep

__all__ = [
    "SPIDE_STEPS", "BackwardOutcome", "EnergyReport", "EquilibriumGap", "FrozenStep", "LayerActivity", "LayerEnergy",
    "OperationEnergy", "SpikeCensus", "TrainingStepCost", "backward_budget", "compare_backward", "energy_report",
    "equilibrium_gap", "fan_in", "fan_out", "feedback_norm", "layer_activity", "spike_census", "synapses", "training_step_cost",
]
