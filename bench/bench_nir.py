"""A trained network through NIR: predictions of the exported graph against ``implicit-snn eval``'s.

Loads a run's checkpoint, exports it (exact mode, and the lossy portable mode), replays the graph
on a whole split with ``implicit_snn.nir.from_nir`` and, for the exact graph, with nirtorch and
a node map written from NIR's definitions (tests/nir_reference.py), and counts the images whose
prediction differs from the model's own, in float64 and float32. Writes a JSON report::

    python bench/bench_nir.py bench/results/nir-f400/run --out bench/results/nir-f400/report.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from implicit_snn.app.build import load_split, model_from_config, producer_settings  # noqa: E402
from implicit_snn.app.commands import load_checkpoint  # noqa: E402
from implicit_snn.app.config import RunConfig  # noqa: E402
from implicit_snn.files import atomic_write_text  # noqa: E402
from implicit_snn.nir import from_nir, to_nir  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def predictions(fn, data, dtype, batch_size):
    """Logits' argmax over the split, and the logits themselves."""
    outs = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs[start:start + batch_size].to(dtype)
            outs.append(fn(x))
    logits = torch.cat(outs)
    return logits.argmax(1), logits


def graph_of(model):
    return to_nir(model)


def differing_spikes(model, graph, data, dtype, batch_size):
    """(spikes that differ between our simulation and the exact graph's replay, all spikes compared)."""
    from implicit_snn import producers

    producer = model.producer
    options = dict(time_steps=producer.time_steps, record="spikes")
    name = "if" if producer.leak == 1.0 else "lif"
    if name == "lif":
        options["leak"] = producer.leak
    simulate = producers.get_producer(name, **options)
    replayed = from_nir(graph, dtype=dtype)
    layers = [n for n in graph.nodes if n.endswith("_threshold")]
    differ = total = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs[start:start + batch_size].to(dtype)
            ours = simulate(model.network, x).extras["spikes"]
            _, theirs = replayed.run(x, record=tuple(layers))
            for train, name in zip(ours, layers):
                differ += int((train != theirs[name]).sum())
                total += train.numel()
    return differ, total


def nirtorch_replay(graph, dtype):
    from tests.nir_reference import replay

    return lambda x: replay(graph, x, dtype=dtype)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path, ckpt = load_checkpoint(args.run)
    config = RunConfig(**ckpt["config"])
    data = load_split(config, args.split)
    labels = data.labels
    report = {"checkpoint": str(path), "split": args.split, "samples": len(data), "machine": platform.processor()
              or platform.machine(), "torch": torch.__version__, "command": " ".join(["python", *sys.argv]), "rows": []}
    for dtype_name, dtype in DTYPES.items():
        model = model_from_config(config, data.info.num_classes, data.info.in_shape)
        model.load_state_dict(ckpt["model"])
        model.set_producer(config.producer or "lif", producer_settings(config))
        model.to(dtype).eval()
        ours, our_logits = predictions(model, data, dtype, args.batch_size)
        row = {"dtype": dtype_name, "model_accuracy": float((ours == labels).double().mean())}
        for mode in ("exact", "portable"):
            graph = to_nir(model, mode=mode, lossy=mode == "portable")
            start = time.perf_counter()
            theirs, logits = predictions(from_nir(graph, dtype=dtype), data, dtype, args.batch_size)
            row[mode] = {"accuracy": float((theirs == labels).double().mean()),
                         "predictions_differing": int((theirs != ours).sum()),
                         "max_abs_logit_difference": float((logits - our_logits).abs().max()),
                         "seconds": time.perf_counter() - start}
        row["exact"]["spikes_differing"], row["exact"]["spikes"] = differing_spikes(model, graph_of(model), data,
                                                                                  dtype, args.batch_size)
        graph = to_nir(model)
        theirs, logits = predictions(nirtorch_replay(graph, dtype), data, dtype, args.batch_size)
        row["exact_nirtorch"] = {"accuracy": float((theirs == labels).double().mean()),
                                 "predictions_differing": int((theirs != ours).sum()),
                                 "max_abs_logit_difference": float((logits - our_logits).abs().max())}
        report["rows"].append(row)
        print(json.dumps(row))
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
