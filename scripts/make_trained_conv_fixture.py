"""Write tests/data/trained-conv-step.pt: a trained two-layer conv network with batch norm and 32
Fashion-MNIST test images, so that tests can differentiate a real training step without the dataset.

    python scripts/make_trained_conv_fixture.py [RUN] [--samples 32]

RUN defaults to bench/results/bn-backward/batch-seed0 (``16C3s-32C3s (F16C3u)``, 3 epochs, LIF at
T = 5); its config, weights and the first test images (as the loader gives them) are saved.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from implicit_snn.app.commands import checkpoint_config, load_checkpoint, load_data
from implicit_snn.files import atomic_torch_save

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "trained-conv-step.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="bench/results/bn-backward/batch-seed0")
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    path, ckpt = load_checkpoint(args.run)
    config = checkpoint_config(ckpt, {})
    data = load_data(config, "test")
    x = torch.stack([data[i][0] for i in range(args.samples)])
    y = torch.tensor([int(data[i][1]) for i in range(args.samples)])
    atomic_torch_save({"config": config.to_dict(), "model": ckpt["model"], "x": x, "y": y,
                 "source": str(path), "num_classes": data.info.num_classes,
                 "in_shape": tuple(data.info.in_shape)}, OUT)
    print(f"{OUT}: {config.model} from {path}, {args.samples} test images")


if __name__ == "__main__":
    main()
