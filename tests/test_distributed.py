"""Data-parallel training with torchrun (two CPU processes, Gloo): the gradient, the run, the resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from implicit_snn import distributed
from implicit_snn.app.cli import main
from implicit_snn.data import ArrayDataset, BatchLoader, DatasetInfo
from tests.ddp_worker import batch, build
from tests.helpers import SMALL, comparable, metrics

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` in two processes under torchrun; fail with their output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_ddp_gradient_is_the_whole_batch_gradient_of_the_parts(tmp_path, kind):
    """Two processes' averaged implicit gradient equals the gradient of the batch's mean loss when each
    part of the batch is solved on its own (batch statistics per process), unequal parts included."""
    out = tmp_path / "grads.pt"
    torchrun("tests/ddp_worker.py", kind, str(out))
    got = torch.load(out)
    data = batch(kind)
    expected: dict[str, torch.Tensor] = {}
    for part in (slice(0, 5), slice(5, 9)):  # the parts BatchLoader gives ranks 0 and 1 of 9 samples
        model = build(kind)
        logits = model(data.inputs[part].double())
        loss = torch.nn.functional.cross_entropy(logits, data.labels[part]) * (part.stop - part.start) / len(data)
        loss.backward()
        for name, p in model.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert float((got[name] - grad).norm()) <= 1e-9 * float(grad.norm()) + 1e-14, name


@pytest.mark.slow
def test_two_processes_train_resume_exactly_and_save_the_model_they_evaluated(tmp_path):
    # 256 test samples in batches of 255 leave the second process no part of the last batch.
    small = [*SMALL, "--device", "cpu", "--test-batch-size", "255"]
    torchrun("-m", "implicit_snn", "train", *small, "--epochs", "2", "--out", str(tmp_path / "full"))
    torchrun("-m", "implicit_snn", "train", *small, "--epochs", "1", "--out", str(tmp_path / "split"))
    torchrun("-m", "implicit_snn", "train", *small, "--epochs", "2", "--out", str(tmp_path / "split"), "--resume")
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert len(full) == 2 and comparable(full) == comparable(split)
    # Both processes' backward solves are counted: 448 training samples in batches of 32, two parts each.
    assert sum(full[0]["backward_status"].values()) == 2 * (448 // 32)
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint-last.pt", weights_only=False)
    assert a["world_size"] == 2 and len(a["rank_rng"]) == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # One process evaluating the saved checkpoint sees what the two logged.
    assert main(["eval", str(tmp_path / "full" / "checkpoint-last.pt"), "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert evaluated["acc"] == full[-1]["test_acc"]
    assert evaluated["loss"] == pytest.approx(full[-1]["test_loss"], rel=1e-5)
    # Resuming needs as many processes as wrote the checkpoint.
    with pytest.raises(SystemExit, match="saved by a run of 2 process.es.; continue it with as many"):
        main(["train", *small, "--epochs", "3", "--out", str(tmp_path / "full"), "--resume"])


def test_ranks_differ_in_dropout_streams_but_rank_zero_keeps_the_runs_seed():
    two = [distributed.Context(rank=r, world_size=2) for r in range(2)]
    assert distributed.rank_seed(7, distributed.Context.single()) == distributed.rank_seed(7, two[0]) == 7
    assert distributed.rank_seed(7, two[1]) != 7


@pytest.mark.parametrize("augment", [False, True])
def test_sharded_batches_split_each_batch_and_keep_the_generators_in_step(augment):
    n, world = 23, 3
    info = DatasetInfo("idx", (1,), 2, "constant")
    data = ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 2, info)

    def noise(x, generator):  # draws one number per sample of the batch it sees
        return x + torch.rand(x.shape, generator=generator)

    def loader(rank, size):
        return BatchLoader(data, 8, shuffle=True, generator=torch.Generator().manual_seed(3),
                           augment=noise if augment else None, shard=(rank, size))

    whole = list(loader(0, 1))
    shards = [loader(r, world) for r in range(world)]
    parts = [list(s) for s in shards]
    for b, (x, y) in enumerate(whole):
        sizes = [p[b][0].shape[0] for p in parts]
        assert sum(sizes) == x.shape[0] and max(sizes) - min(sizes) <= 1
        assert torch.equal(torch.cat([p[b][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[b][1] for p in parts]), y)
    states = [s.generator.get_state() for s in shards]
    assert all(torch.equal(states[0], s) for s in states[1:])
    with pytest.raises(ValueError, match="`shard` must be"):
        BatchLoader(data, 8, shuffle=False, shard=(3, 3))
