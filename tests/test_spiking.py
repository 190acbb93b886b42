"""The IF/LIF simulation: exact dynamics, convergence to the fixed point of f, no hidden side effects."""

import pytest
import torch
from torch import nn

from implicit_snn import FeedbackSNN, ImplicitClassifier, SpectralNorm, SynapticLayer, producers, simulation
from implicit_snn.neurons import time_average


def tiny_network(layers=(4, 3), in_dim=3, *, seed=0, batch_norm=False, dropout=0.0, vth=2.0, bn_momentum=0.1):
    torch.manual_seed(seed)
    sizes = [in_dim, *layers]
    norm = dict(batch_norm=batch_norm, dropout=dropout, bn_momentum=bn_momentum)
    input_layer = SynapticLayer(nn.Linear(in_dim, layers[0]), **norm)
    forward = [SynapticLayer(nn.Linear(a, b), **norm) for a, b in zip(sizes[1:], sizes[2:])]
    feedback = SynapticLayer(nn.Linear(layers[-1], layers[0], bias=False), dropout=dropout, spectral=SpectralNorm(1.0))
    with torch.no_grad():  # non-zero biases so that the bias path is exercised
        for layer in [input_layer, *forward]:
            layer.op.bias.uniform_(-0.5, 1.0)
    return FeedbackSNN((in_dim,), input_layer, forward, feedback, vth=vth)


def scalar_simulation(net, x, time_steps, leak):
    """The dynamics of supplement Eq. (20)/(23), one neuron at a time in Python floats."""
    vth = float(net.vth)
    mats = [(net.input_layer.op.weight.tolist(), net.input_layer.op.bias.tolist())]
    mats += [(layer.op.weight.tolist(), layer.op.bias.tolist()) for layer in net.forward_layers]
    w_fb = net.feedback.effective_weight(update=False).tolist()
    sizes = [len(b) for _, b in mats]
    results = []
    for sample in range(x.shape[0]):
        u = [[0.0] * n for n in sizes]
        s = [[0.0] * n for n in sizes]
        rate = [[0.0] * n for n in sizes]
        train = [[] for _ in sizes]
        for t in range(time_steps):
            x_t = (x[sample, t] if x.dim() == 3 else x[sample]).tolist()
            last_previous = list(s[-1])  # the feedback carries the last layer's spikes of step t − 1
            for layer, (w, b) in enumerate(mats):
                source = x_t if layer == 0 else s[layer - 1]
                for i in range(sizes[layer]):
                    current = b[i] + sum(w[i][j] * source[j] for j in range(len(source)))
                    if layer == 0 and t > 0:
                        current += sum(w_fb[i][k] * last_previous[k] for k in range(sizes[-1]))
                    u[layer][i] += current
                    spike = 1.0 if u[layer][i] >= vth else 0.0
                    u[layer][i] = (u[layer][i] - vth * spike) * leak
                    s[layer][i] = spike
            for layer in range(len(sizes)):
                rate[layer] = [leak * r + sp for r, sp in zip(rate[layer], s[layer])]
                train[layer].append(list(s[layer]))
        norm = sum(leak ** k for k in range(time_steps))
        results.append(([[r / norm for r in layer] for layer in rate], train))
    return results


@pytest.mark.parametrize("layers", [(4,), (4, 3), (5, 4, 3)])
@pytest.mark.parametrize("producer, leak", [("if", 1.0), ("lif", 0.9)])
@pytest.mark.parametrize("spikes", [False, True])
def test_simulation_matches_a_scalar_loop_exactly(layers, producer, leak, spikes, float64):
    net = tiny_network(layers, vth=1.0).eval()  # a low threshold makes the feedback matter more
    steps = 20
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(4, steps, 3, generator=gen) < 0.5).double() * 2.0 if spikes else 1.5 * torch.rand(4, 3, generator=gen)
    options = dict(time_steps=steps, record="spikes") if producer == "if" else dict(time_steps=steps, leak=leak, record="spikes")
    eq = producers.get_producer(producer, **options)(net, x)
    expected = scalar_simulation(net, x, steps, leak)
    for sample, (rates, trains) in enumerate(expected):
        for layer in range(len(layers)):
            got_train = eq.extras["spikes"][layer][sample]
            assert got_train.tolist() == trains[layer]
            torch.testing.assert_close(eq.extras["rates"][layer][sample], torch.tensor(rates[layer]), rtol=0, atol=1e-12)
    assert torch.equal(eq.a, eq.extras["rates"][-1])
    assert eq.extras["spikes"][0].sum() > 0  # the test exercises actual spiking


def test_if_rate_converges_to_the_fixed_point_like_one_over_t(float64):
    net = tiny_network((40,), in_dim=10, seed=3).eval()
    x = torch.rand(8, 10)
    errors = []
    for steps in (10, 100, 1000):
        eq = producers.get_producer("if", time_steps=steps)(net, x)
        with torch.no_grad():
            fa = net.fixed_point_map(eq.a, *eq.f_args)
        errors.append(float(((eq.a - fa).norm(dim=1) / eq.a.norm(dim=1).clamp_min(1e-12)).mean()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.3 * errors[0] and errors[2] < 0.3 * errors[1]  # roughly 1/T: a factor ~10 per decade
    assert errors[2] < 0.02


def test_lif_rate_stays_within_a_bounded_error(float64):
    net = tiny_network((40,), in_dim=10, seed=3).eval()
    x = torch.rand(8, 10)
    errors = []
    for steps in (100, 1000, 3000):
        eq = producers.get_producer("lif", time_steps=steps, leak=0.95)(net, x)
        with torch.no_grad():
            fa = net.fixed_point_map(eq.a, *eq.f_args)
        errors.append(float(((eq.a - fa).norm(dim=1) / eq.a.norm(dim=1).clamp_min(1e-12)).mean()))
    assert max(errors) < 0.25
    assert max(errors) - min(errors) < 0.05  # bounded, not growing with T


def test_spike_train_input_is_averaged_exactly_and_never_modified(float64):
    net = tiny_network((4,)).eval()
    x = (torch.rand(3, 10, 3) < 0.3).double()
    before = x.clone()
    eq = producers.get_producer("lif", time_steps=10, leak=0.9)(net, x)
    weights = torch.tensor([0.9 ** (9 - t) for t in range(10)], dtype=torch.float64)
    expected = (x * weights[None, :, None]).sum(1) / weights.sum()
    torch.testing.assert_close(eq.f_args[0], expected, rtol=1e-14, atol=1e-14)
    assert torch.equal(x, before)
    eq_if = producers.get_producer("if", time_steps=10)(net, x)
    torch.testing.assert_close(eq_if.f_args[0], x.mean(1), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(time_average(x, 1.0), x.mean(1))


def test_constant_input_is_never_modified_by_forward_or_backward(device):
    net = tiny_network((6, 5), in_dim=4, batch_norm=True, dropout=0.2).to(device)
    model = ImplicitClassifier(net, 3, producer="lif", producer_options=dict(time_steps=5)).to(device).train()
    x = torch.randn(4, 4, device=device)
    before = x.clone()
    model(x).square().sum().backward()
    assert torch.equal(x, before)


def test_dropout_masks_are_drawn_once_and_shared_by_every_step_and_f():
    net = tiny_network((6, 5), in_dim=4, dropout=0.5).train()
    seen = []

    def spy(original):
        def watch(x_t, state):
            seen.append((state.input_mask, state.forward_masks, state.feedback_mask))
            return original(x_t, state)
        return watch

    net.input_current = spy(net.input_current)
    net.input_drive = spy(net.input_drive)
    x = (torch.rand(3, 7, 4) < 0.5).float()
    model = ImplicitClassifier(net, 2, producer="if", producer_options=dict(time_steps=7))
    model(x).sum().backward()
    # 7 simulated steps (F¹x_t each), then the differentiable f (F¹x̄)
    assert len(seen) == 7 + 1
    first = seen[0]
    assert sorted(first[0].unique().tolist()) == [0.0, 2.0]  # an inverted dropout mask at p = 0.5
    for masks in seen[1:]:
        assert masks[0] is first[0] and masks[2] is first[2]
        assert all(a is b for a, b in zip(masks[1], first[1]))


def test_fresh_masks_each_forward_and_none_in_eval():
    net = tiny_network((6,), in_dim=4, dropout=0.5).train()
    x = torch.randn(2, 4)
    _, s1 = net.map_inputs(x)
    _, s2 = net.map_inputs(x)
    assert not torch.equal(s1.input_mask, s2.input_mask)
    net.eval()
    _, s3 = net.map_inputs(x)
    assert s3.input_mask is None and s3.feedback_mask is None


def test_batch_norm_running_statistics_move_exactly_once_per_training_step():
    net = tiny_network((6, 5), in_dim=4, batch_norm=True)
    model = ImplicitClassifier(net, 2, producer="lif", producer_options=dict(time_steps=4)).train()
    bns = [net.input_layer.bn, *(layer.bn for layer in net.forward_layers)]
    for step in range(1, 4):
        model(torch.randn(5, 4)).sum().backward()
        assert [int(bn.num_batches_tracked) for bn in bns] == [step] * len(bns)
    model.eval()
    with torch.no_grad():
        model(torch.randn(5, 4))
    assert [int(bn.num_batches_tracked) for bn in bns] == [3] * len(bns)


def test_bn_momentum_0_19_equals_the_reference_double_update():
    """One update at 0.19 is the reference's two updates at 0.1 with the same batch statistics (B1)."""
    net = tiny_network((6,), in_dim=4, batch_norm=True, bn_momentum=0.19)
    model = ImplicitClassifier(net, 2, producer="lif", producer_options=dict(time_steps=4)).train()
    x = torch.randn(5, 4)
    batch_mean = net.input_layer.linear(net._prepare_input(x)).mean(0).detach()
    model(x).sum().backward()
    expected = torch.zeros(6)
    for _ in range(2):
        expected = 0.9 * expected + 0.1 * batch_mean
    torch.testing.assert_close(net.input_layer.bn.running_mean, expected)
    assert int(net.input_layer.bn.num_batches_tracked) == 1


def test_simulation_input_normalisation_equals_the_one_f_uses():
    """For constant input the simulated input current and f's batch-norm current coincide (F.2)."""
    net = tiny_network((6,), in_dim=4, batch_norm=True).train()
    x = torch.randn(5, 4)
    x_bar, state = net.map_inputs(x)
    simulated = net.input_current(x, state)
    _, diff_state = net.differentiable_args(x_bar, state)
    in_f = net.input_current(x_bar, diff_state)
    torch.testing.assert_close(simulated, in_f, rtol=1e-5, atol=1e-5)


def test_vth_must_agree_with_the_network():
    net = tiny_network((4,), vth=2.0)
    with pytest.raises(ValueError, match="differs from the network's vth"):
        producers.get_producer("if", time_steps=3, vth=1.0)(net, torch.randn(2, 3))


@pytest.mark.parametrize("options, message", [
    (dict(time_steps=0), "`time_steps`"), (dict(leak=1.0), "`leak` must be in"), (dict(record="all"), "`record`"),
])
def test_bad_producer_options(options, message):
    with pytest.raises(ValueError, match=message):
        producers.get_producer("lif", **options)


def test_wrong_input_shapes_are_clear_errors():
    net = tiny_network((4,))
    with pytest.raises(ValueError, match="fits neither"):
        producers.get_producer("if", time_steps=3)(net, torch.randn(2, 5))
    with pytest.raises(ValueError, match="fewer than time_steps"):
        producers.get_producer("if", time_steps=8)(net, torch.rand(2, 4, 3))


def test_calling_the_network_itself_is_refused():
    # f is fixed_point_map; a call net(x) would read as a simulation or a classifier and be neither.
    net = tiny_network((4,))
    with pytest.raises(TypeError, match="not called directly"):
        net(torch.zeros(2, 3))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 samples wherever a network allows them (the CPU default chunks large layers only)."""
    monkeypatch.setattr(simulation, "CHUNK_BYTES", 1)
    monkeypatch.setattr(simulation, "MIN_CHUNK", 3)


def simulate_both_ways(monkeypatch, network, x, producer):
    """The producer's equilibrium with the batch whole, then in chunks (same dropout masks: the RNG reseeded)."""
    results = []
    for chunk_bytes, min_chunk in ((1 << 62, 1 << 30), (1, 3)):
        monkeypatch.setattr(simulation, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(simulation, "MIN_CHUNK", min_chunk)
        torch.manual_seed(5)
        with torch.no_grad():
            results.append(producer(network, x))
    assert len(simulation.sample_chunks(network, x.shape[0], "cpu")) > 1  # the second run was chunked
    return results


@pytest.mark.parametrize("layers", [(4,), (5, 4, 3)])
@pytest.mark.parametrize("producer, leak", [("if", 1.0), ("lif", 0.9)])
@pytest.mark.parametrize("spikes", [False, True])
def test_a_batch_simulated_in_chunks_equals_the_whole_batch(monkeypatch, layers, producer, leak, spikes):
    """The samples never mix in the simulation: chunks of the batch, one after another, give the
    same spikes, rates and statistics, bit for bit (training mode: dropout masks and batch norm)."""
    net = tiny_network(layers, vth=1.0, dropout=0.3, batch_norm=True).train()
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(10, 12, 3, generator=gen) < 0.5).float() * 2.0 if spikes else 1.5 * torch.rand(10, 3, generator=gen)
    options = dict(time_steps=12, record="spikes") | ({} if producer == "if" else dict(leak=leak))
    whole, chunked = simulate_both_ways(monkeypatch, net, x, producers.get_producer(producer, **options))
    assert torch.equal(whole.a, chunked.a) and whole.extras["spikes"][0].sum() > 0
    for key in ("rates", "firing_rates", "spikes", "last_spikes"):
        assert all(torch.equal(a, b) for a, b in zip(whole.extras[key], chunked.extras[key])), key
    for key in ("firing_rate", "silent_per_layer", "saturated_per_layer"):
        assert torch.equal(torch.as_tensor(whole.stats[key]), torch.as_tensor(chunked.stats[key])), key


@pytest.mark.parametrize("sim_precision", ["fp32", "bf16"])
def test_a_conv_network_simulated_in_chunks_equals_the_whole_batch(monkeypatch, sim_precision):
    import models

    torch.manual_seed(0)
    model = models.from_spec("3C3-4C3s (F3C3u)", (1, 6, 6), 3, dropout=0.2, producer="lif").train()
    producer = producers.get_producer("lif", time_steps=15, leak=0.95, sim_precision=sim_precision, record="spikes")
    whole, chunked = simulate_both_ways(monkeypatch, model.network, torch.rand(8, 1, 6, 6) * 3, producer)
    assert torch.equal(whole.a, chunked.a) and whole.a.sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(whole.extras["spikes"], chunked.extras["spikes"]))


def test_only_a_cpu_simulation_of_a_network_that_allows_it_is_chunked(small_chunks):
    net = tiny_network((4, 3))
    assert [(s.start, s.stop) for s in simulation.sample_chunks(net, 10, "cpu")] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert simulation.sample_chunks(net, 10, "cuda") == [None]  # a GPU runs the batch whole
    assert simulation.sample_chunks(net, 3, "cpu") == [None]

    class NoRows:  # a network without simulation_rows may mix its samples: never chunked
        layer_shapes = net.layer_shapes

    assert simulation.sample_chunks(NoRows(), 10, "cpu") == [None]
