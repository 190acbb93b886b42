"""implicit_snn.analysis: per-layer activity (firing rate, silent and saturated neurons, histogram) against hand counts."""

import pytest
import torch

import models
from implicit_snn.analysis import SpikeCensus, layer_activity, spike_census
from implicit_snn.producers import Equilibrium


def test_activity_of_known_spike_counts_by_hand():
    # Two samples of a 4-neuron layer at T = 4: counts per (sample, neuron).
    counts = torch.tensor([[0., 4., 1., 0.], [0., 4., 2., 4.]])
    census = SpikeCensus.empty(4, ((4,),))
    census.add(Equilibrium(a=counts / 4, f_args=(), extras={"firing_rates": [counts / 4],
                                                            "last_spikes": [torch.zeros(2, 4)]}),
               torch.zeros(2, 3), spike_input=False)
    (row,) = layer_activity(census)
    assert row.firing_rate == pytest.approx(15 / 32)  # 15 spikes in 2 samples × 4 neurons × 4 steps
    assert row.silent == 3 / 8 and row.saturated == 3 / 8
    assert row.never_firing == 1 / 4  # neuron 0 is silent on both samples; neuron 3 only on one
    assert row.always_saturated == 1 / 4  # neuron 1
    assert row.spikes_per_sample == 7.5
    assert row.histogram == (3 / 8, 1 / 8, 1 / 8, 0.0, 3 / 8)
    assert row.to_dict()["histogram"] == {"spike_counts": [0, 1, 2, 3, 4], "fraction": list(row.histogram)}


@pytest.mark.parametrize("producer, options", [("if", {}), ("lif", {"leak": 0.8})])
def test_activity_of_a_simulation_matches_its_spike_trains(producer, options):
    torch.manual_seed(0)
    model = models.from_spec("12-8 (F12)", (10,), 3, producer=producer,
                             producer_options=dict(time_steps=6, **options), dropout=0.0)
    model.eval()
    x = torch.rand(9, 10) * 3
    rows = layer_activity(spike_census(model, [(x[:5], None), (x[5:], None)]))
    trains = type(model.producer)(time_steps=6, record="spikes", **options)(model.network, x).extras["spikes"]
    for row, train in zip(rows, trains):
        train = train.double()
        per_pair = train.sum(1)  # [B, neurons]: spikes of each neuron in each sample
        assert row.firing_rate == pytest.approx(float(train.mean()), rel=1e-12)
        assert row.silent == pytest.approx(float((per_pair == 0).double().mean()))
        assert row.saturated == pytest.approx(float((per_pair == 6).double().mean()))
        assert row.never_firing == pytest.approx(float((per_pair.sum(0) == 0).double().mean()))
        hand = [float((per_pair == k).double().mean()) for k in range(7)]
        assert row.histogram == pytest.approx(hand) and sum(row.histogram) == pytest.approx(1.0)
    assert rows[0].firing_rate > 0 and 0 < rows[0].silent < 1  # the test inputs exercise the layer


def test_a_census_needs_a_spiking_producer_and_samples():
    model = models.from_spec("4 (F4)", (3,), 2, producer="analytic")
    with pytest.raises(ValueError, match="counting spikes needs a spiking producer"):
        spike_census(model, [(torch.rand(2, 3), None)])
    model.set_producer("if", {"time_steps": 2})
    with pytest.raises(ValueError, match="at least one sample"):
        spike_census(model, [])
