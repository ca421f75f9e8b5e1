"""Cost of a PGD-K adversarial training epoch relative to K+1 standard epochs (same run).

Bar: a PGD-K adversarial epoch costs <= 1.15 x (K+1) standard epochs. Standard and
adversarial epochs are timed alternately on the same model, data and batch size, and the median
of the repeats is compared, so machine noise affects both alike.

With ``--precision both`` on CUDA it also reports PGD-K training throughput in images/s for fp32
eager vs bf16 autocast + channels_last (the GPU bar: CIFAR-10-shaped ResNet-18, PGD-7).

    python scripts/bench_train.py                       # CPU default: cnn_small, MNIST-shaped
    python scripts/bench_train.py --arch resnet18 --channels 3 --image-size 32 --device cuda \
        --examples 10000 --batch-size 128 --steps 7 --precision both
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reprlab.core.attacks import PGD
from reprlab.core.training_methods import TrainSettings, train_classifier
from reprlab.data import TensorLoader
from reprlab.models import build_model
from reprlab.runtime import resolve_device


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn_small")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7, help="K, the PGD steps per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "both"],
        default="fp32",
        help="bf16 = autocast + channels_last (CUDA only); both = compare them",
    )
    return parser.parse_args()


def epoch_seconds(args, device, adversary, fast: bool) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model(
        args.arch,
        num_classes=10,
        in_channels=args.channels,
        image_size=args.image_size,
        mean=[0.5] * args.channels,
        std=[0.25] * args.channels,
    )
    images = torch.randint(
        0, 256, (args.examples, args.channels, args.image_size, args.image_size), dtype=torch.uint8
    )
    labels = torch.randint(0, 10, (args.examples,))
    loader = TensorLoader(
        images, labels, batch_size=args.batch_size, shuffle=True, device=device, drop_last=True
    )
    settings = TrainSettings(
        epochs=1, adversary=adversary, mixed_precision=fast, channels_last=fast
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_classifier(model, loader, settings, device=device, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, len(loader) * args.batch_size


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    # As recipes train: the last iterate (Madry et al.), no keep-best bookkeeping.
    adversary = PGD(norm="linf", eps=8 / 255, step_size=2 / 255, steps=args.steps, keep_best=False)
    print(
        f"device {device}, {args.arch} on {args.examples} images "
        f"{args.channels}x{args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"K={args.steps}, {torch.get_num_threads()} CPU threads"
    )
    epoch_seconds(args, device, None, fast=False)  # warm-up (allocator, cuDNN autotuning)
    standard, adversarial = [], []
    for _ in range(args.repeats):
        standard.append(epoch_seconds(args, device, None, fast=False)[0])
        adversarial.append(epoch_seconds(args, device, adversary, fast=False)[0])
    t_std, t_adv = statistics.median(standard), statistics.median(adversarial)
    ratio = t_adv / ((args.steps + 1) * t_std)
    print(f"standard epoch        {t_std:8.3f} s   (median of {args.repeats})")
    print(f"PGD-{args.steps} epoch          {t_adv:8.3f} s")
    print(
        f"PGD-{args.steps} / ({args.steps}+1) x standard = {ratio:.3f}   "
        f"(bar <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})"
    )

    if args.precision != "fp32":
        if device.type != "cuda":
            print("bf16 + channels_last applies on CUDA only; skipped")
            return
        rows = []
        for name, fast in (("fp32 eager", False), ("bf16 + channels_last", True)):
            if args.precision == "bf16" and not fast:
                continue
            epoch_seconds(args, device, adversary, fast=fast)
            seconds, images = min(
                epoch_seconds(args, device, adversary, fast=fast) for _ in range(args.repeats)
            )
            rows.append((name, images / seconds))
            print(f"PGD-{args.steps} training, {name:22s} {images / seconds:10.0f} img/s")
        if len(rows) == 2:
            print(f"speed-up bf16 + channels_last over fp32: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
