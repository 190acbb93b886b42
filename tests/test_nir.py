"""NIR export and import: exported graphs replayed for T steps by nirtorch (a client we did not
write, with a node map written from NIR's definitions) give our simulation's spike trains and
logits in float64; round trips through nir.write/read keep every array; what NIR cannot express
is refused in one line."""

import numpy as np
import pytest
import torch
from torch import nn

import models
from implicit_snn import FeedbackSNN, SpectralNorm, SynapticLayer, producers
from implicit_snn.nir import NIRExportError, from_nir, read_graph, to_nir, write

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")
from tests.nir_reference import replay  # noqa: E402  (needs nir)

#: (spec, per-sample input shape): F400, a two-layer linear network, F64C5's shape at a reduced width.
NETWORKS = {
    "f400": ("400 (F400)", (1, 28, 28)),
    "linear2": ("32-24 (F32)", (10,)),
    "conv": ("8C5s (F8C5)", (1, 14, 14)),
}


def randomize_batch_norm(model, seed):
    """Running statistics and affine parameters far from the identity, so that folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen, dtype=torch.float64))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen, dtype=torch.float64))
            module.bias.data.copy_(torch.rand(n, generator=gen, dtype=torch.float64) - 0.3)


def network(name, producer="lif", *, time_steps=6, leak=0.9, seed=0):
    spec, in_shape = NETWORKS[name]
    torch.manual_seed(seed)
    model = models.from_spec(spec, in_shape, 10).double()
    randomize_batch_norm(model, seed)
    options = dict(time_steps=time_steps) if producer == "if" else dict(time_steps=time_steps, leak=leak)
    model.set_producer(producer, options)
    return model.eval()


def inputs(model, kind, *, batch=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = model.network.in_shape
    if kind == "constant":
        return 2.0 * torch.rand(batch, *shape, generator=gen, dtype=torch.float64)
    steps = model.producer.time_steps
    return (torch.rand(batch, steps + 2, *shape, generator=gen, dtype=torch.float64) < 0.4).double()


def simulated(model, x):
    """Our simulation's spike trains per layer ``[B, T, ...]`` and logits."""
    producer = model.producer
    options = dict(time_steps=producer.time_steps, record="spikes")
    if producer.leak != 1.0:
        options["leak"] = producer.leak
    eq = producers.get_producer("lif" if producer.leak != 1.0 else "if", **options)(model.network, x)
    with torch.no_grad():
        return eq.extras["spikes"], model(x)


def assert_replays_exactly(model, x):
    graph = to_nir(model)
    trains, logits = simulated(model, x)
    out, spikes = replay(graph, x)
    for index, train in enumerate(trains, start=1):
        theirs = spikes[f"layer{index}_threshold"]
        differ = int((theirs != train).sum())
        assert differ == 0, f"layer {index}: {differ} of {train.numel()} spikes differ"
        assert train.sum() > 0 and train.mean() < 1  # the comparison means something: spikes and silences
    torch.testing.assert_close(out, logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_nir(graph, dtype=torch.float64)(x), logits, rtol=0, atol=1e-12)
    return graph


@pytest.mark.parametrize("producer", ["lif", "if"])
@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("kind", ["constant", "spikes"])
def test_nirtorch_replays_the_exported_graph_spike_for_spike(name, producer, kind):
    model = network(name, producer)
    assert_replays_exactly(model, inputs(model, kind))


def test_the_feedback_arrives_one_step_late_and_the_reset_subtracts_leak_times_vth():
    """What the graph says, read off its nodes: the cycle edges, and the reset's scale."""
    model = network("linear2", "lif", leak=0.8)
    graph = to_nir(model)
    vth = float(model.network.vth)
    assert np.allclose(graph.nodes["layer1_reset"].scale, -0.8 * vth)
    assert ("feedback", "layer1_integrator") in graph.edges and ("layer2_threshold", "feedback") in graph.edges
    lam = 1 - graph.metadata["dt"] / graph.nodes["layer1_integrator"].tau
    assert np.allclose(lam, 0.8, rtol=1e-12)


def test_a_stride_one_transposed_conv_feedback_is_a_flipped_conv():
    torch.manual_seed(3)
    base = models.build_network("8C5s (F8C5)", (1, 14, 14))
    feedback = SynapticLayer(nn.ConvTranspose2d(8, 8, 3, 1, 1, bias=False), spectral=SpectralNorm(1.0))
    model = models.from_spec("8C5s (F8C5)", (1, 14, 14), 10)
    model.network = FeedbackSNN((1, 14, 14), base.input_layer, [], feedback, vth=2.0)
    model.double()
    randomize_batch_norm(model, 3)
    model.set_producer("lif", {"time_steps": 6, "leak": 0.9})
    model.eval()
    assert_replays_exactly(model, inputs(model, "constant"))
    assert type(to_nir(model).nodes["feedback"]).__name__ == "Conv2d"


def test_write_and_read_keep_every_array_and_the_metadata(tmp_path):
    model = network("conv", "lif")
    graph = to_nir(model)
    path = tmp_path / "model.nir"
    write(graph, path)
    back = read_graph(path)
    assert sorted(back.nodes) == sorted(graph.nodes) and sorted(back.edges) == sorted(graph.edges)
    for name, node in graph.nodes.items():
        for field, value in vars(node).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(getattr(back.nodes[name], field), value), (name, field)
    assert back.metadata["time_steps"] == 6 and back.metadata["encoding"] == graph.metadata["encoding"]
    x = inputs(model, "constant")
    logits = model(x).detach()
    torch.testing.assert_close(from_nir(path, dtype=torch.float64)(x), logits, rtol=0, atol=1e-12)
    # nir.read returns the nodes in another (alphabetical) order: nirtorch's replay does not depend on it.
    torch.testing.assert_close(replay(back, x)[0], logits, rtol=0, atol=1e-12)


def test_portable_mode_is_refused_unless_asked_for_and_then_differs():
    model = network("linear2", "lif")
    with pytest.raises(NIRExportError, match="portable mode is lossy"):
        to_nir(model, mode="portable")
    graph = to_nir(model, mode="portable", lossy=True)
    assert {type(node).__name__ for node in graph.nodes.values()} >= {"LIF"}
    x = inputs(model, "constant")
    ours = from_nir(graph, dtype=torch.float64)(x)
    theirs, _ = replay(graph, x, at_equality=False)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-12)
    assert not torch.allclose(ours, model(x).detach(), atol=1e-6)  # reset to zero is another network


@pytest.mark.parametrize("case, words", [
    ("upsampling", "feedback 2→1 is a transposed convolution of stride (2, 2)"),
    ("analytic", "producer has no spiking equivalent"),
    ("training", "training mode"),
    ("not a model", "exports an ImplicitClassifier on a FeedbackSNN"),
])
def test_what_nir_cannot_express_is_one_line_naming_it(case, words):
    if case == "upsampling":
        model = models.from_spec("8C3s-16C3s (F8C3u)", (1, 16, 16), 10).eval()
    elif case == "analytic":
        model = models.from_spec("32 (F32)", (10,), 10, producer="analytic").eval()
    elif case == "training":
        model = models.from_spec("32 (F32)", (10,), 10).train()
    else:
        model = nn.Linear(3, 3)
    with pytest.raises(NIRExportError) as info:
        to_nir(model)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_import_refuses_unknown_nodes_missing_files_and_files_that_are_not_nir(tmp_path):
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                                "delay": nir.Delay(delay=np.ones(3)),
                                "output": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("input", "delay"), ("delay", "output")], metadata={"time_steps": 2})
    with pytest.raises(ValueError, match="^NIR node 'delay' of type Delay is not supported"):
        from_nir(graph)
    with pytest.raises(FileNotFoundError, match="no NIR file at"):
        from_nir(tmp_path / "missing.nir")
    text = tmp_path / "notes.nir"
    text.write_text("not a graph")
    with pytest.raises(ValueError, match="is not a NIR graph") as info:
        from_nir(text)
    assert "\n" not in str(info.value)


def test_a_graph_with_a_loose_node_is_refused_before_any_executor_waits_on_it():
    model = network("linear2", "lif")
    graph = to_nir(model)
    graph.nodes["orphan"] = nir.Scale(scale=np.ones(32))
    with pytest.raises(NIRExportError, match=r"\['orphan'\] are not on a path"):
        from_nir(graph)


def test_the_cli_exports_a_trained_run_and_evaluates_the_graph_as_eval_evaluates_the_run(tmp_path, capsys):
    from implicit_snn.app.cli import main
    from tests.helpers import SMALL, cli_error

    run, graph = tmp_path / "run", tmp_path / "model.nir"
    assert main(["train", *SMALL, "--model", "24 (F24)", "--epochs", "1", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--json", str(tmp_path / "run.json")]) == 0
    assert main(["export", str(run), "--out", str(graph), "--dtype", "float64"]) == 0
    assert main(["eval", str(graph), "--dataset", "synthetic", "--dtype", "float64",
                 "--json", str(tmp_path / "graph.json")]) == 0
    import json

    ours = json.loads((tmp_path / "run.json").read_text())["results"][0]
    theirs = json.loads((tmp_path / "graph.json").read_text())["results"][0]
    assert theirs["acc"] == ours["acc"] and theirs["time_steps"] == ours["time_steps"] == 3
    assert abs(theirs["loss"] - ours["loss"]) < 1e-5  # float64 replay against the float32 model
    capsys.readouterr()
    assert "portable mode is lossy" in cli_error(["export", str(run), "--out", str(tmp_path / "p.nir"),
                                                  "--mode", "portable"], capsys)
    assert not (tmp_path / "p.nir").exists()
    assert "needs --dataset" in cli_error(["eval", str(graph)], capsys)
    assert "not used for a NIR graph" in cli_error(["eval", str(graph), "--dataset", "synthetic", "--leak", "0.9"],
                                                   capsys)
    assert "no NIR file at" in cli_error(["eval", str(tmp_path / "missing.nir"), "--dataset", "synthetic"], capsys)
    (tmp_path / "text.nir").write_text("not a graph")
    assert "is not a NIR graph" in cli_error(["eval", str(tmp_path / "text.nir"), "--dataset", "synthetic"], capsys)
    upsampling = tmp_path / "conv"
    assert main(["train", "--dataset", "synthetic", "--val-size", "64", "--batch-size", "32", "--time-steps", "2",
                 "--threads", "1", "--model", "4C3s-8C3s (F4C3u)", "--epochs", "1", "--out", str(upsampling)]) == 0
    capsys.readouterr()
    message = cli_error(["export", str(upsampling), "--out", str(tmp_path / "c.nir")], capsys)
    assert "feedback 2→1 is a transposed convolution of stride (2, 2)" in message


def test_the_docs_snippets_run():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "nir.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/nir.md", "exec"), namespace)


def test_snntorch_reads_what_docs_nir_md_says_it_reads():
    """Where snnTorch installs (the [bench] extra): its importer refuses our read-out's LI node."""
    snntorch_import = pytest.importorskip("snntorch.import_nir")
    graph = to_nir(network("linear2", "lif"), mode="portable", lossy=True)
    with pytest.raises(ValueError, match="LI"):
        snntorch_import.import_from_nir(graph)


def test_a_plain_recurrent_lif_graph_of_another_tool_replays_as_nirtorch_reads_it():
    """An RLeaky-style graph (Affine → LIF with a Linear recurrence → Affine), as snnTorch writes
    one: NIR's own reset to v_reset and spike at v > V_th; from_nir and nirtorch agree."""
    gen = np.random.default_rng(0)
    n, d = 12, 5
    lif = nir.LIF(tau=np.full(n, 2e-3), r=np.full(n, 20.0), v_leak=np.zeros(n), v_threshold=np.full(n, 1.0),
                  v_reset=np.zeros(n))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([d])}),
               "fc": nir.Affine(weight=gen.normal(size=(n, d)), bias=gen.normal(size=n) * 0.1),
               "lif": lif, "rec": nir.Linear(weight=gen.normal(size=(n, n)) * 0.3),
               "out": nir.Affine(weight=gen.normal(size=(3, n)), bias=np.zeros(3)),
               "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out"), ("out", "output")],
        metadata={"time_steps": 7, "dt": 1e-4})
    x = torch.as_tensor(gen.uniform(0, 2, size=(4, d)))
    ours, recorded = from_nir(graph, dtype=torch.float64).run(x, record=("lif",))
    theirs, spikes = replay(graph, x, at_equality=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert torch.equal(recorded["lif"], spikes["lif"]) and 0 < float(spikes["lif"].mean()) < 1
