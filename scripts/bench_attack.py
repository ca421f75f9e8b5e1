"""Benchmark: the cost of a PGD-K attack in units of input-gradient passes (target <= 1.1 x K).

An input-gradient pass is one forward and one backward with respect to the input, on the same
model and batch. PGD-K with keep-best (the default) needs K such passes plus one forward of the
final iterate, and some elementwise work per step (sign or normalisation, projection, clamp, the
keep-best bookkeeping); this script measures how close it comes to K passes.

Both are timed in the same run on a fixed, randomly initialised model and batch, interleaved
(the order alternates each repeat) and summarised by the median of several repeats, so slow
drift and noisy neighbours affect both alike. Also printed: the cost of one no-grad forward,
from which the expected ratio, 1 + forward / (K · pass), follows.

Run from the repository root with reprlab importable (``pip install -e .`` or PYTHONPATH=.)::

    python scripts/bench_attack.py                          # resnet18 on 3x32x32, batch 128, K=10
    python scripts/bench_attack.py --device cuda --batch-size 512 --autocast
    python scripts/bench_attack.py --model small_cnn --steps 7 --norm l2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.attacks import PGD
from reprlab.models import available_archs, build_model
from reprlab.models.base import Body, Classifier, sequential_stages
from reprlab.runtime import resolve_device

TARGET_RATIO = 1.1
NUM_CLASSES = 10
CHANNELS, IMAGE_SIZE = 3, 32  # CIFAR-shaped input


def small_cnn() -> Classifier:
    """A CIFAR-shaped conv net, for when no registered architecture is wanted or available."""
    net = nn.Sequential(
        nn.Conv2d(CHANNELS, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )
    stages = sequential_stages(net, {"pool": "8", "logits": "9"})
    body = Body(net=net, stages=stages, representation="pool")
    return Classifier(
        "small_cnn", body, mean=[0.5] * CHANNELS, std=[0.25] * CHANNELS, image_size=IMAGE_SIZE
    )


def make_model(name: str) -> Classifier:
    """A registered architecture by name, or the script's own ``small_cnn``."""
    if name == "small_cnn":
        return small_cnn()
    return build_model(
        name,
        num_classes=NUM_CLASSES,
        in_channels=CHANNELS,
        image_size=IMAGE_SIZE,
        mean=[0.5] * CHANNELS,
        std=[0.25] * CHANNELS,
    )


def input_gradient_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """K forward + backward passes with respect to the input (what PGD-K cannot do without)."""
    for _ in range(k):
        x_in = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_in).float(), y, reduction="none")
        torch.autograd.grad(loss.sum(), x_in)


def forward_only(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    default_model = "resnet18" if "resnet18" in available_archs() else "small_cnn"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--model", default=default_model, help="registered arch or small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="K, the number of PGD steps")
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median is kept)")
    parser.add_argument("--autocast", action="store_true", help="bfloat16 autocast (CUDA)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = make_model(args.model).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator)
    x, y = x.to(device), y.to(device)
    eps = 8 / 255 if args.norm == "linf" else 0.5
    attack = PGD(norm=args.norm, eps=eps, step_size=2.5 * eps / args.steps, steps=args.steps)
    k = args.steps

    def autocast() -> contextlib.AbstractContextManager:
        if not args.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    candidates = {
        "passes": lambda: input_gradient_passes(model, x, y, k),
        "pgd": lambda: attack(model, x, y),
        "forward": lambda: forward_only(model, x),
    }
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    with autocast():
        for fn in candidates.values():  # warm-up: allocator, kernel selection, lazy init
            fn()
        order = list(candidates)
        for _ in range(args.repeats):
            for name in order:
                timings[name].append(seconds(candidates[name], device))
            order.reverse()

    passes, pgd, forward = (
        statistics.median(timings[name]) for name in ("passes", "pgd", "forward")
    )
    ratio = pgd / passes
    expected = 1 + forward / passes
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(
        f"device {device}{f' ({threads} threads)' if threads else ''}, model {args.model}, "
        f"batch {args.batch_size}, {args.norm} PGD-{k} (keep_best, random start), "
        f"autocast {'bf16' if args.autocast else 'off'}, median of {args.repeats} repeats"
    )
    print(f"  {k} input-gradient passes: {passes:8.3f} s  ({passes / k * 1e3:.1f} ms each)")
    print(f"  PGD-{k} attack:            {pgd:8.3f} s")
    print(f"  one no-grad forward:      {forward:8.3f} s")
    print(f"  ratio PGD / passes: {ratio:.3f}  (expected from the final forward: {expected:.3f})")
    spread = (
        max(timings["pgd"]) / min(timings["pgd"]),
        max(timings["passes"]) / min(timings["passes"]),
    )
    print(f"  noise: max/min over repeats {spread[0]:.2f} (PGD), {spread[1]:.2f} (passes)")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"  {verdict} the target ratio <= {TARGET_RATIO}")


if __name__ == "__main__":
    main()
