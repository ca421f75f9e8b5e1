"""Benchmark: each inversion optimisation costs <= 1.1x (steps x one forward-backward).

For every optimisation of :mod:`reprlab.methods.inversion` (inversion, the distance curve's ball-
constrained matching, feature visualisation, feature manipulation, interpolation), times
``steps`` iterations on a randomly initialised model (default resnet18 on 3x32x32, its
representation tap with fake_relu, as the analyses run) against ``steps`` times the cost of one
forward-backward pass of the same representation loss to the input: ``R(x)``, the relative
distance to a target, its gradient with respect to ``x`` only (``torch.autograd.grad``; no weight
gradients, as in the optimiser). The optimisation adds the L2-normalised step, the
projection, keep-best bookkeeping and one final forward; the ratio says what that costs.

Each candidate and the baseline are interleaved (the order rotates every repeat) and summarised
by the median of the repeats, so a noisy neighbour affects both alike. Feature manipulation is
timed on a coordinate it cannot make the largest in ``steps`` (it would otherwise stop early).

Run from the repository root with reprlab importable (``pip install -e .`` or PYTHONPATH=.)::

    python scripts/bench_inversion.py                        # resnet18, 3x32x32, batch 32, 20 steps
    python scripts/bench_inversion.py --device cuda --arch resnet50 --image-size 224 \\
        --batch-size 10 --steps 1000 --dtype bfloat16         # the issue's GPU measurement
"""

from __future__ import annotations

import argparse

import torch
from benchtools import interleaved_medians, random_model

from reprlab.core.representation import Representation, match_representation, relative_distance
from reprlab.methods import inversion
from reprlab.runtime import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-fake-relu", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = random_model(args.arch, args.image_size, device)
    represent = Representation(model, model.representation_tap, fake_relu=not args.no_fake_relu)
    n, size, steps = args.batch_size, args.image_size, args.steps
    shape = (n, 3, size, size)
    generator = torch.Generator().manual_seed(0)
    targets = torch.rand(shape, generator=generator).to(device)
    seeds = inversion.noise_seeds(shape, generator=generator, device=device)
    goal = represent.encode(targets)
    # A coordinate no image has largest: the least active one over the batch of targets.
    weakest = int(goal.mean(dim=0).argmin())
    coords = torch.full((n,), weakest, dtype=torch.int64)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bfloat16"
        else torch.autocast(device.type, enabled=False)
    )

    def forward_backward() -> None:  # the gradient to the input only, as the optimiser takes it
        x = seeds.detach().clone().requires_grad_(True)
        loss = relative_distance(represent(x), goal).sum()
        torch.autograd.grad(loss, [x])

    def baseline() -> None:
        for _ in range(steps):
            forward_backward()

    half = n // 2
    candidates = {
        "steps x forward-backward": baseline,
        "inversion": lambda: inversion.invert(
            represent, targets, seeds, steps=steps, step_size=1.0
        ),
        "distance curve (one ε)": lambda: match_representation(
            represent, goal, targets.flip(0), steps=steps, step_size=0.1, eps=2.0
        ),
        "feature visualisation": lambda: inversion.visualise_features(
            represent, coords, seeds, steps=steps, step_size=1.0
        ),
        "feature manipulation": lambda: inversion.manipulate_features(
            represent, targets, coords, steps=steps, step_size=1e-4
        ),
        "interpolation (λ: 2 points)": lambda: inversion.interpolate(
            represent, targets[:half], targets[half : 2 * half], [0.25, 0.75], steps=steps,
            step_size=0.3,
        ),
    }  # fmt: skip
    names = list(candidates)
    with autocast:
        for fn in candidates.values():  # warm-up: allocator, kernels, the probe
            fn()
        # CPU: process time, which other jobs on a shared machine barely disturb
        medians = interleaved_medians(candidates, args.repeats, device, clock="cpu")
    base = medians["steps x forward-backward"]
    print(
        f"{args.arch}, batch {n} of 3x{size}x{size}, {steps} steps, device {device}, "
        f"{args.dtype}, fake_relu={not args.no_fake_relu}, {torch.get_num_threads()} CPU threads, "
        f"median of {args.repeats}"
    )
    print(f"{'steps x forward-backward':30s} {base * 1e3:9.1f} ms")
    worst = 0.0
    for name in names[1:]:
        ratio = medians[name] / base
        worst = max(worst, ratio)
        print(f"{name:30s} {medians[name] * 1e3:9.1f} ms   ratio {ratio:.3f}")
    print(f"worst ratio = {worst:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
