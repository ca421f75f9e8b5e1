"""Benchmark: ``features`` at an early tap runs only the stages it needs (target ratio <= 0.3).

Times ``model.features(x, [tap])`` (default: the first block tap, ``stem``) against a full
forward pass ``model(x)`` on the same randomly initialised model and batch, in eval mode under
``no_grad``. The two are interleaved (the order alternates each repeat) and summarised by the
median of several repeats, so drift and noisy neighbours affect both alike. Also printed: the
same ratio for a layer tap of the first stage, which adds one forward hook and one clone.

Run from the repository root with reprlab importable (``pip install -e .`` or PYTHONPATH=.)::

    python scripts/bench_features.py                      # resnet18 on 3x32x32, batch 128
    python scripts/bench_features.py --device cuda --batch-size 512
    python scripts/bench_features.py --tap layer2.0      # a deeper cut
"""

from __future__ import annotations

import argparse

import torch
from benchtools import interleaved_medians, random_model

from reprlab.runtime import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--tap", default=None, help="block tap to stop at (default: the first)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = random_model(args.arch, args.image_size, device)
    tap = args.tap or model.block_taps[0]
    layer = next(t.name for t in model.probe().taps if t.kind == "layer")
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    candidates = {
        "forward": lambda: model(x),
        tap: lambda: model.features(x, [tap]),
        layer: lambda: model.features(x, [layer]),
    }
    with torch.no_grad():
        for fn in candidates.values():  # warm-up: allocator, kernels, the probe
            fn()
        medians = interleaved_medians(candidates, args.repeats, device)
    print(
        f"{args.arch}, batch {args.batch_size} of 3x{args.image_size}x{args.image_size}, "
        f"device {device}, {torch.get_num_threads()} CPU threads, median of {args.repeats}"
    )
    full = medians["forward"]
    print(f"full forward:                  {full * 1e3:9.2f} ms")
    for name in (tap, layer):
        ratio = medians[name] / full
        print(f"features([{name}]):{' ' * max(1, 12 - len(name))}{medians[name] * 1e3:9.2f} ms"
              f"   ratio {ratio:.3f}")  # fmt: skip
    print(f"ratio features([{tap}]) / forward = {medians[tap] / full:.3f}  (target <= 0.3)")


if __name__ == "__main__":
    main()
