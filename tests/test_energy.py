"""implicit_snn.analysis: synaptic operations against hand counts, the energy formula, a training step's cost."""

import itertools
import math

import pytest
import torch
from torch import nn

import models
from implicit_snn import FeedbackSNN, ImplicitClassifier, SynapticLayer
from implicit_snn.analysis import (
    OperationEnergy, SpikeCensus, energy_report, fan_in, fan_out, spike_census, synapses, training_step_cost,
)
from implicit_snn.producers import Equilibrium


def loop_fan_out(op, in_shape):
    """Fan-out by enumerating every output element and kernel tap (an oracle independent of torch's convolution)."""
    counts = torch.zeros(in_shape, dtype=torch.float64)
    if isinstance(op, nn.Linear):
        return counts + op.out_features
    c_in, h, w = in_shape
    k_h, k_w = op.kernel_size
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = op.stride, op.padding, op.dilation
    groups = op.groups
    if isinstance(op, nn.ConvTranspose2d):
        # Each input pixel scatters to out = i·s − p + k·d; taps landing outside the output drop out.
        out_h = (h - 1) * s_h - 2 * p_h + d_h * (k_h - 1) + op.output_padding[0] + 1
        out_w = (w - 1) * s_w - 2 * p_w + d_w * (k_w - 1) + op.output_padding[1] + 1
        per_group = op.out_channels // groups
        for c, i, j, a, b in itertools.product(range(c_in), range(h), range(w), range(k_h), range(k_w)):
            if 0 <= i * s_h - p_h + a * d_h < out_h and 0 <= j * s_w - p_w + b * d_w < out_w:
                counts[c, i, j] += per_group
        return counts
    out_h = (h + 2 * p_h - d_h * (k_h - 1) - 1) // s_h + 1
    out_w = (w + 2 * p_w - d_w * (k_w - 1) - 1) // s_w + 1
    per_group = op.out_channels // groups
    for c, y, x, a, b in itertools.product(range(c_in), range(out_h), range(out_w), range(k_h), range(k_w)):
        i, j = y * s_h - p_h + a * d_h, x * s_w - p_w + b * d_w
        if 0 <= i < h and 0 <= j < w:
            counts[c, i, j] += per_group
    return counts


def test_fan_out_of_a_strided_padded_conv_and_a_transposed_conv_by_hand():
    # 3×3 kernel, stride 2, padding 1 on a 3×3 image: 2×2 outputs, each seeing a 2×2 corner of the image.
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert fan_out(conv, (1, 3, 3))[0].tolist() == [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    assert synapses(conv, (1, 3, 3)) == 16 and fan_in(conv, (1, 3, 3))[0].tolist() == [[4, 4], [4, 4]]
    # Its transpose, 2×2 → 4×4 (output padding 1): row 0 reaches output rows 0–1, row 1 rows 1–3.
    up = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
    assert fan_out(up, (1, 2, 2))[0].tolist() == [[4, 6], [6, 9]]
    assert synapses(up, (1, 2, 2)) == 25
    linear = nn.Linear(5, 3)
    assert fan_out(linear, (5,)).tolist() == [3.0] * 5 and synapses(linear, (5,)) == 15


@pytest.mark.parametrize("op, in_shape", [
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 6)),
    (nn.Conv2d(2, 4, 5, stride=1, padding=2), (2, 6, 6)),
    (nn.Conv2d(4, 4, 3, stride=2, padding=0, dilation=2, groups=2), (4, 9, 8)),
    (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 4, 5)),
    (nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1), (2, 3, 3)),
])
def test_fan_out_matches_an_enumeration_of_every_synapse(op, in_shape):
    counted = fan_out(op, in_shape)
    assert torch.equal(counted, loop_fan_out(op, in_shape))
    assert synapses(op, in_shape) == int(counted.sum()) == int(fan_in(op, in_shape).sum())


def two_layer_conv_network(batch_norm=False):
    """input 1×3×3 → layer 1 (1×3×3, conv k3 p1) → layer 2 (1×2×2, conv k3 s2 p1) → feedback (transposed, → 1×3×3)."""
    layer = dict(batch_norm=batch_norm)
    network = FeedbackSNN(
        (1, 3, 3), SynapticLayer(nn.Conv2d(1, 1, 3, padding=1), **layer),
        [SynapticLayer(nn.Conv2d(1, 1, 3, stride=2, padding=1), **layer)],
        SynapticLayer(nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, bias=False)))
    return ImplicitClassifier(network, 3, producer="if", producer_options=dict(time_steps=5))


def census_of(model, layer_counts, last_spikes, steps=5):
    """A census of one batch with the given spike counts per layer ([B, *shape]) and last-step spikes."""
    census = SpikeCensus.empty(steps, model.network.layer_shapes)
    eq = Equilibrium(a=layer_counts[-1] / steps, f_args=(), extras={
        "firing_rates": [c / steps for c in layer_counts], "last_spikes": last_spikes})
    census.add(eq, torch.zeros(layer_counts[0].shape[0], 1, 3, 3), spike_input=False)
    return census


def test_sops_of_known_spikes_by_hand():
    model = two_layer_conv_network()
    layer1 = torch.tensor([[[[3., 0., 1.], [0., 5., 0.], [2., 0., 0.]]]])
    layer2 = torch.tensor([[[[2., 1.], [0., 4.]]]])
    last2 = torch.tensor([[[[1., 0.], [0., 1.]]]])
    report = energy_report(model, census_of(model, [layer1, layer2], [torch.zeros_like(layer1), last2]))
    rows = {row.name: row for row in report.layers}
    assert list(rows) == ["input", "forward 1→2", "feedback 2→1", "readout"]
    # Layer 1's fan-out into the strided conv is [[1,2,1],[2,4,2],[1,2,1]]: 3·1 + 1·1 + 5·4 + 2·1.
    assert rows["forward 1→2"].spikes_per_sample == 11 and rows["forward 1→2"].sops_per_sample == 26
    # The feedback delivers all but the last step's spikes, [[1,1],[0,3]], each to 4 synapses.
    assert rows["feedback 2→1"].spikes_per_sample == 5 and rows["feedback 2→1"].sops_per_sample == 20
    # The constant input's 3×3 conv with padding 1: fan-ins 4 (corners), 6 (edges), 9 (centre), once.
    assert rows["input"].macs_per_sample == 4 * 4 + 4 * 6 + 9 and rows["input"].sops_per_sample == 0
    assert rows["readout"].macs_per_sample == 4 * 3
    assert rows["forward 1→2"].dense_macs_per_sample == 5 * 16 and rows["feedback 2→1"].dense_macs_per_sample == 4 * 16
    assert report.total["sops_per_sample"] == 46 and report.total["ann_macs_per_sample"] == 49 + 16 + 16 + 12


def test_sops_of_known_spikes_in_a_linear_two_layer_network_by_hand():
    network = FeedbackSNN((4,), SynapticLayer(nn.Linear(4, 3)), [SynapticLayer(nn.Linear(3, 2))],
                          SynapticLayer(nn.Linear(2, 3, bias=False)))
    model = ImplicitClassifier(network, 5, producer="if", producer_options=dict(time_steps=4))
    census = SpikeCensus.empty(4, network.layer_shapes)
    layer1, layer2 = torch.tensor([[2., 0., 1.]]), torch.tensor([[3., 1.]])
    census.add(Equilibrium(a=layer2 / 4, f_args=(), extras={
        "firing_rates": [layer1 / 4, layer2 / 4], "last_spikes": [torch.zeros(1, 3), torch.tensor([[1., 0.]])]}),
        torch.zeros(1, 4), spike_input=False)
    rows = {row.name: row for row in energy_report(model, census).layers}
    assert rows["forward 1→2"].sops_per_sample == 3 * 2  # three spikes, each to both neurons of layer 2
    assert rows["feedback 2→1"].spikes_per_sample == 3 and rows["feedback 2→1"].sops_per_sample == 3 * 3
    assert rows["input"].macs_per_sample == 12 and rows["readout"].macs_per_sample == 10
    assert rows["feedback 2→1"].ann_macs_per_sample == 6 and rows["forward 1→2"].dense_macs_per_sample == 4 * 6


def test_the_energy_formula_and_its_assumptions():
    model = two_layer_conv_network()
    layer1, layer2 = torch.full((2, 1, 3, 3), 2.0), torch.ones(2, 1, 2, 2)
    census = census_of(model, [layer1, layer2], [torch.zeros_like(layer1), torch.zeros_like(layer2)])
    costs = OperationEnergy(per_sop_pj=2.0, per_mac_pj=10.0)
    report = energy_report(model, census, costs)
    for row in report.layers:
        assert row.energy_pj == pytest.approx(2.0 * row.sops_per_sample + 10.0 * row.macs_per_sample)
        assert row.ann_energy_pj == pytest.approx(10.0 * row.synapses)
    total = report.total
    assert total["energy_pj"] == pytest.approx(2.0 * total["sops_per_sample"] + 10.0 * total["macs_per_sample"])
    assert total["ann_over_snn"] == pytest.approx(total["ann_energy_pj"] / total["energy_pj"])
    assert total["ann_macs_per_iteration"] == 32  # the forward conv and the feedback, 16 synapses each
    assert OperationEnergy().per_sop_pj == 0.9 and OperationEnergy().per_mac_pj == 4.6
    for bad in (-1.0, math.nan, True):
        with pytest.raises(ValueError, match="`per_sop_pj` must be a finite number >= 0"):
            OperationEnergy(per_sop_pj=bad)


def test_a_simulation_counts_match_a_step_by_step_count_of_its_spike_trains():
    torch.manual_seed(0)
    model = models.from_spec("3C3s-2C3s (F3C3u)", (1, 8, 8), 3, producer="if", producer_options=dict(time_steps=7),
                             dropout=0.0)
    model.eval()
    x = torch.rand(6, 1, 8, 8) * 4
    report = energy_report(model, spike_census(model, [(x[:4], None), (x[4:], None)]))
    trains = model.producer.__class__(time_steps=7, record="spikes")(model.network, x).extras["spikes"]
    network = model.network
    forward_op, feedback_op = network.forward_layers[0].op, network.feedback.op
    # Σ_t Σ_i s_i(t) · (synapses from i), by the loop oracle; the feedback only at t < T − 1.
    expected_forward = sum(float((trains[0][:, t] * loop_fan_out(forward_op, network.layer_shapes[0])).sum())
                           for t in range(7)) / 6
    expected_feedback = sum(float((trains[1][:, t] * loop_fan_out(feedback_op, network.layer_shapes[1])).sum())
                            for t in range(6)) / 6
    rows = {row.name: row for row in report.layers}
    assert rows["forward 1→2"].sops_per_sample == pytest.approx(expected_forward, rel=1e-12)
    assert rows["feedback 2→1"].sops_per_sample == pytest.approx(expected_feedback, rel=1e-12)
    assert expected_forward > 0 and expected_feedback > 0


def test_spike_input_drives_the_input_layer_by_events():
    torch.manual_seed(1)
    model = models.from_spec("6 (F6)", (4,), 2, producer="lif", producer_options=dict(time_steps=3), dropout=0.0)
    spikes = (torch.rand(5, 4, 4) < 0.5).float()  # [B, T'=4, 4 inputs]; the first 3 frames are simulated
    report = energy_report(model, spike_census(model, [(spikes, None)]))
    row = report.layers[0]
    assert report.input == "spikes" and row.name == "input"
    assert row.spikes_per_sample == pytest.approx(float(spikes[:, :3].sum()) / 5)
    assert row.sops_per_sample == pytest.approx(6 * float(spikes[:, :3].sum()) / 5)  # each input reaches 6 neurons
    assert row.macs_per_sample == 0 and row.dense_macs_per_sample == 3 * 24


def test_a_training_step_costs_its_simulation_and_its_adjoint_solve():
    torch.manual_seed(2)
    model = models.from_spec("4C3s-4C3s (F4C3u)", (1, 8, 8), 3, producer="lif",
                             producer_options=dict(time_steps=4, leak=0.9))
    x, y = torch.rand(8, 1, 8, 8) * 3, torch.randint(0, 3, (8,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cost = training_step_cost(model, x, y).to_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # left as it was
    shapes = model.network.layer_shapes
    forward_synapses = synapses(model.network.forward_layers[0].op, shapes[0])
    feedback_synapses = synapses(model.network.feedback.op, shapes[1])
    input_synapses = synapses(model.network.input_layer.op, model.network.in_shape)
    readout = math.prod(shapes[-1]) * 3
    back = cost["backward"]
    assert cost["solver"] == "broyden" and back["vjps"] == model.last_backward.n_evals > 1
    assert back["macs_per_vjp"] == forward_synapses + feedback_synapses
    assert back["theta_pass_macs"] == input_synapses + 2 * forward_synapses + feedback_synapses + 2 * readout
    assert back["macs"] == back["vjps"] * back["macs_per_vjp"] + back["theta_pass_macs"]
    assert cost["forward"]["macs"] == input_synapses + readout + forward_synapses + feedback_synapses
    assert cost["energy_pj"] == pytest.approx(cost["forward"]["energy_pj"] + 4.6 * back["macs"])
    model.set_backward("spide", b_max_iter=12)
    spiking = training_step_cost(model, x, y).to_dict()["backward"]
    events = model.last_backward.counters["spike_events"]
    reach = fan_in(model.network.forward_layers[0].op, shapes[0])  # Jᵀ's first stage: the last layer's fan-in
    assert spiking["vjps"] == 12 and spiking["spikes"] == pytest.approx(float(events.sum()) / 8) and spiking["spikes"] > 0
    assert spiking["sops"] == pytest.approx(float((events.double() * reach).sum()) / 8)
    assert spiking["event_driven_macs"] == 11 * feedback_synapses + spiking["theta_pass_macs"]


def test_the_spide_solver_counts_the_spikes_it_feeds_through_the_map():
    import solvers

    torch.manual_seed(3)
    a = torch.randn(6, 6) * 0.1
    c = torch.randn(4, 6)
    inputs = []

    def g(z):
        inputs.append(z.clone())
        return z @ a.T + c

    result = solvers.get_solver("spide")(g, torch.zeros(4, 6), max_iter=20, tol=1e-9)
    # g sees 0 first, then θ·s for steps 1..T−1, then the estimate: the middle ones are the spikes.
    theta = solvers.get_solver("spide").thresholds(torch.zeros(4, 6), c)
    fed = sum((z / theta).round().abs() for z in inputs[1:-1])
    assert len(inputs) == result.n_evals == 21
    assert torch.equal(result.counters["spike_events"], fed) and float(fed.sum()) > 0


def test_the_analysis_page_runs_as_written():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "analysis.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/analysis.md", "exec"), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_counts_on_cuda_equal_those_on_the_cpu():
    torch.manual_seed(4)
    model = models.from_spec("4C3s-4C3s (F4C3u)", (1, 8, 8), 3, producer="if", producer_options=dict(time_steps=6))
    x = torch.rand(8, 1, 8, 8) * 3
    cpu = energy_report(model, spike_census(model, [(x, None)])).to_dict()
    model.cuda()
    gpu = energy_report(model, spike_census(model, [(x.cuda(), None)])).to_dict()
    # A float32 product may round differently on the GPU and move the odd spike.
    assert gpu["total"]["sops_per_sample"] == pytest.approx(cpu["total"]["sops_per_sample"], rel=1e-3)
    assert training_step_cost(model, x.cuda(), torch.zeros(8, dtype=torch.long).cuda()).backward["vjps"] > 0
