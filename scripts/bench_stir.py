"""Benchmark: the IRI search of STIR costs <= 1.1x (steps x one forward-backward of m1).

Part 1 (any device; the bar): on ResNet-18 at CIFAR shape (3x32x32, randomly initialised, eval
mode), times :func:`reprlab.methods.stir.find_iris` (IRIs at the representation tap ``pool``)
against
``steps`` forward-backward passes of the whole model (``model(x)`` to the logits, then the
gradient of their sum with respect to the input, parameters frozen as in the search). Both run on
the same batch, interleaved (the order alternates each repeat); medians of the repeats. The
search also runs a fixed three extra forwards (the target, the seed distance and the keep-best
check of the last iterate), so the script reports the ratio at ``--steps`` and at two step counts
(``--steps`` and half of it) the *per-step* ratio with the fixed part removed, and extrapolates
both to the paper's 1,000 steps, the regime the bar is about.

Part 2 (``--device cuda``): STIR of two ResNet-18s on ``--examples`` (1,000) images, both
directions with 1,000 steps, in fp32 and bf16; with ``--peer``, the same on the authors'
``stir-invariance`` package (``pip install stir-invariance``; CUDA only) for comparison.

Run from the repository root with reprlab importable (``pip install -e .`` or PYTHONPATH=.)::

    python scripts/bench_stir.py                          # part 1 on the CPU, batch 32, 20 steps
    python scripts/bench_stir.py --device cuda --batch-size 500 --steps 50 --stir --peer
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from benchtools import interleaved_medians

from reprlab.methods import stir
from reprlab.models import Classifier, build_model
from reprlab.runtime import resolve_device

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def resnet18(seed: int, device: torch.device) -> Classifier:
    torch.manual_seed(seed)
    model = build_model(
        "resnet18", num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    return model.to(device).eval()


def forward_backward(model: Classifier, x: torch.Tensor, steps: int) -> None:
    """``steps`` forward passes to the logits, each with the gradient w.r.t. the input."""
    frozen = [p.requires_grad_(False) for p in model.parameters()]
    try:
        for _ in range(steps):
            inputs = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(model(inputs).sum(), inputs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    del gradient


def part_one(args: argparse.Namespace, device: torch.device) -> None:
    model = resnet18(0, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=generator).to(device)
    seeds = stir.seed_images(x, "normal", generator)
    half = max(1, args.steps // 2)

    def search(steps: int) -> Callable[[], object]:
        return lambda: stir.find_iris(
            model, "pool", x, seeds, steps=steps, batch_size=args.batch_size
        )

    candidates = {
        f"fwd-bwd x {args.steps}": lambda: forward_backward(model, x, args.steps),
        f"search {args.steps} steps": search(args.steps),
        f"search {half} steps": search(half),
    }
    for fn in candidates.values():  # warm-up: allocator, kernels
        fn()
    medians = interleaved_medians(candidates, args.repeats, device)
    print(
        f"resnet18, batch {args.batch_size} of 3x32x32, device {device}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats} interleaved repeats"
    )
    for name, seconds in medians.items():
        print(f"  {name:<22} {seconds:9.3f} s")
    one = medians[f"fwd-bwd x {args.steps}"] / args.steps
    full = medians[f"search {args.steps} steps"]
    per_step = (full - medians[f"search {half} steps"]) / (args.steps - half)
    fixed = full - per_step * args.steps
    print(f"one forward-backward of m1:   {one * 1e3:9.2f} ms")
    print(f"search per step:              {per_step * 1e3:9.2f} ms  (fixed part {fixed:.3f} s)")
    print(f"ratio at {args.steps} steps:  {full / (args.steps * one):.3f}")
    print(f"per-step ratio:               {per_step / one:.3f}")
    at_1000 = (fixed + 1000 * per_step) / (1000 * one)
    print(f"ratio at 1000 steps (extrapolated): {at_1000:.3f}  (target <= 1.1)")


def part_two(args: argparse.Namespace, device: torch.device) -> None:
    m1, m2 = resnet18(0, device), resnet18(1, device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.examples, 3, 32, 32, generator=generator).to(device)
    seeds = stir.seed_images(x, "normal", generator)
    for precision in ("fp32", "bf16"):

        def both(precision: str = precision) -> tuple[float, float]:
            values = []
            for reference, measured in ((m1, m2), (m2, m1)):
                found = stir.find_iris(
                    reference,
                    "pool",
                    x,
                    seeds,
                    steps=1000,
                    batch_size=args.examples,
                    precision=precision,
                )
                values.append(stir.stir(measured, "pool", x, found.x_prime, precision=precision))
            return values[0], values[1]

        start = time.perf_counter()
        values = both()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        print(
            f"reprlab STIR both ways, {args.examples} images, 1000 steps, {precision}: "
            f"{seconds:.1f} s  (STIR(m2|m1)={values[0]:.3f}, STIR(m1|m2)={values[1]:.3f})"
        )
    if args.peer:
        peer(args, m1, m2, x)


def peer(args: argparse.Namespace, m1: Classifier, m2: Classifier, x: torch.Tensor) -> None:
    """The authors' package on the same models and images (one batch: whole-set CKA)."""
    try:
        import stir as peer_stir  # the stir-invariance package (shadows nothing of reprlab)
    except ImportError as err:
        print(f"stir-invariance not importable ({err}); peer comparison not measured")
        return

    class Adapter(torch.nn.Module):
        """The interface the package's AttackerModel calls: (logits, latent) on request."""

        def __init__(self, model: Classifier) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, with_latent=False, layer_num=None, **_):
            tap = self.inner.representation_tap
            latent = self.inner.features(x, [tap], detach=False)[tap]
            logits = self.inner.back(latent, tap)
            return (logits, latent) if with_latent else logits

    identity = torch.nn.Identity()
    start = time.perf_counter()
    result = peer_stir.STIR(Adapter(m1), Adapter(m2), identity, identity, x, devices=[0])
    torch.cuda.synchronize()
    print(
        f"stir-invariance STIR both ways, {args.examples} images, 1000 steps: "
        f"{time.perf_counter() - start:.1f} s  (m1|m2 {result.m1m2:.3f}, m2|m1 {result.m2m1:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stir", action="store_true", help="part 2: STIR of two resnet18s")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--peer", action="store_true", help="part 2 on stir-invariance too")
    args = parser.parse_args()
    device = resolve_device(args.device)
    part_one(args, device)
    if args.stir:
        part_two(args, device)


if __name__ == "__main__":
    main()
