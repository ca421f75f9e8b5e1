"""CKA between a stored reprlab recipe and a torchvision ResNet-18, from Python.

    python examples/cka_torchvision.py                                  # resnet18_at vs torchvision
    python examples/cka_torchvision.py --recipe cnn_small --dataset mnist --examples 500

The torchvision network enters every study through ``reprlab.wrap``: its named taps are found by
torchvision's feature extraction; here its residual stages are compared with the recipe's block
taps. Its weights are random unless you load your own (``--weights``): with random weights the
matrix is the baseline a trained network's similarity must beat.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn

import reprlab
from reprlab.io import plots


def torchvision_resnet18(channels: int, classes: int, weights: str | None) -> nn.Module:
    net = torchvision.models.resnet18(num_classes=classes)
    if channels != 3:  # adapt the stem to the data
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="resnet18_at")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--weights", help="a state_dict for torchvision's resnet18")
    parser.add_argument("--train", action="store_true", help="train the recipe if not stored")
    parser.add_argument("--out", default="cka_torchvision.png")
    parser.add_argument("overrides", nargs="*", help="config overrides for the recipe")
    args = parser.parse_args()

    x, y = reprlab.images(args.dataset, examples=args.examples)
    ours = reprlab.load_model(args.recipe, args.dataset, train=args.train, overrides=args.overrides)
    classes = int(y.max()) + 1
    net = torchvision_resnet18(x.shape[1], classes, args.weights)
    theirs = reprlab.wrap(net, input_shape=tuple(x.shape[1:]), name="torchvision resnet18")
    stages = [t for t in theirs.block_taps if t.startswith("layer")] or "blocks"
    matrix = reprlab.cka(ours, theirs, x, taps="blocks", taps_b=stages, batch_size=250)
    print(f"CKA, {args.recipe} (rows) vs torchvision resnet18 (columns), N={len(x)}:")
    print(matrix.round(3).to_string())
    figure = plots.cka_heatmap(
        matrix.to_numpy(), list(matrix.index), list(matrix.columns),
        title=f"CKA · {args.recipe} vs torchvision resnet18 · {args.dataset} · N={len(x)}",
        row_model=args.recipe, col_model="torchvision resnet18",
    )  # fmt: skip
    figure.savefig(Path(args.out), dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
