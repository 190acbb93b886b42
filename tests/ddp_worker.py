"""One DistributedDataParallel training step, run by ``torchrun`` from tests/test_distributed.py.

Every process builds the same float64 model, takes its part of one fixed batch, and runs the
step as the trainer does (loss weighted by the process's share of the batch); rank 0 saves the
averaged parameter gradients to the file named on the command line.
"""

import sys

import torch

import models
from implicit_snn import distributed
from implicit_snn.data import ArrayDataset, BatchLoader, DatasetInfo

SPECS = {"fc": ("32 (F32)", (1, 6, 6)), "conv": ("4C3 (F4C3)", (1, 6, 6))}


def build(kind: str) -> torch.nn.Module:
    """The test's model: no dropout (so a single process can redo each part's step), a tight backward."""
    spec, shape = SPECS[kind]
    torch.manual_seed(0)
    return models.from_spec(spec, shape, 3, dropout=0.0, producer="lif", producer_options=dict(time_steps=4),
                            b_max_iter=200, b_tol=1e-12).double()


def batch(kind: str, size: int = 9) -> ArrayDataset:
    """A fixed batch of ``size`` samples (an odd size gives the processes unequal parts)."""
    generator = torch.Generator().manual_seed(1)
    shape = SPECS[kind][1]
    return ArrayDataset(torch.randn(size, *shape, generator=generator) + 1.0,
                        torch.randint(0, 3, (size,), generator=generator), DatasetInfo("batch", shape, 3, "constant"))


def main(kind: str, out: str) -> None:
    context = distributed.init_process_group(torch.device("cpu"))
    data = batch(kind)
    model = build(kind)
    net = distributed.wrap_model(model, context, torch.device("cpu"))
    loader = BatchLoader(data, len(data), shuffle=False, shard=(context.rank, context.world_size))
    ((x, y),) = list(loader)
    loss = torch.nn.functional.cross_entropy(net(x.double()), y)
    (loss * distributed.loss_weight(y.shape[0], loader.global_batch_size(0), context)).backward()
    if context.is_main:
        torch.save({name: p.grad for name, p in model.named_parameters()}, out)
    distributed.shutdown(context)
    distributed.exit_worker(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
