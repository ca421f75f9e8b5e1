"""GPU throughput of reprlab's training and CKA, against the bound and a `robustness`-style loop.

One command for a lent GPU (the defaults are the bars' sizes)::

    python scripts/bench_train_gpu.py --out bench_gpu.json

Measures, in one run, on synthetic CIFAR-shaped data (3x32x32, 10 classes, GPU-resident):

1. PGD-K adversarial training images/s of resnet18 (L∞ 8/255, K steps of 2/255, last iterate,
   as recipes train) through reprlab's fit loop in fp32, in bf16 autocast + channels_last, and
   with ``torch.compile`` on top (each: one warm-up epoch, then the median of ``--repeats``);
2. the ratio of a PGD-K epoch to K+1 standard epochs in the fastest setting (the bound: a PGD
   step costs one forward and one backward, like a training step; bar <= 1.15), standard and
   adversarial epochs interleaved;
3. a baseline loop written the way the `robustness` library trains (fp32, contiguous memory,
   images from a CPU DataLoader copied per batch, attack with the model in eval mode), and the
   speed-up of reprlab's fastest setting over it;
4. CKA of resnet18 x resnet18 (two independently initialised models) over all layer taps on
   ``--cka-examples`` images, in seconds (goal <= 10 s on an H100).

A setting that cannot run on the device (bf16/channels_last without CUDA, compile without its
toolchain) is reported as skipped with the reason. ``--out`` writes every figure as JSON. On the
CPU with tiny sizes it runs in seconds (tests/cli/test_bench_scripts.py)::

    python scripts/bench_train_gpu.py --device cpu --arch cnn_small --channels 1 \
        --image-size 28 --examples 64 --batch-size 32 --steps 2 --repeats 1 \
        --cka-examples 32 --cka-batch-size 16 --compile off
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reprlab.core.attacks import PGD
from reprlab.core.training_methods import TrainSettings, train_classifier
from reprlab.data import TensorLoader
from reprlab.methods.layerwise import layer_cka
from reprlab.models import build_model
from reprlab.runtime import compile_problem, resolve_device

EPS, STEP = 8 / 255, 2 / 255


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=10_000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=7, help="K, PGD steps per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per setting")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--cka-examples", type=int, default=10_000)
    parser.add_argument("--cka-batch-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    return parser.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_model(args: argparse.Namespace, device: torch.device, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = build_model(
        args.arch,
        num_classes=10,
        in_channels=args.channels,
        image_size=args.image_size,
        mean=[0.5] * args.channels,
        std=[0.25] * args.channels,
    )
    return model.to(device)


def synthetic(args: argparse.Namespace, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (n, args.channels, args.image_size, args.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def adversary(steps: int) -> PGD:
    """The recipes' training adversary: last iterate, random start, model in eval mode."""
    return PGD(norm="linf", eps=EPS, step_size=STEP, steps=steps, random_start=True,
               keep_best=False, model_mode="eval")  # fmt: skip


def timed(run_epoch: Callable[[], int], device: torch.device, repeats: int) -> dict[str, Any]:
    """One warm-up epoch, then ``repeats`` timed ones: median seconds and images/s."""
    run_epoch()
    seconds, images = [], 0
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        images = run_epoch()
        sync(device)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"seconds": median, "images_per_second": images / median, "images": images}


def reprlab_epoch(args, device, loader, settings: TrainSettings) -> Callable[[], int]:
    model = make_model(args, device)

    def run() -> int:
        train_classifier(model, loader, settings, device=device, progress=False)
        return len(loader) * args.batch_size

    return run


def robustness_epoch(args, device, images, labels) -> Callable[[], int]:
    """A training epoch the way the `robustness` library writes it: CPU DataLoader, fp32,
    contiguous, the attack in eval mode with sign steps and projection, then an SGD step."""
    model = make_model(args, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dataset = torch.utils.data.TensorDataset(images.float() / 255, labels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
        pin_memory=device.type == "cuda",
    )  # fmt: skip

    def run() -> int:
        seen = 0
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            model.eval()
            delta = (torch.rand_like(x) * 2 - 1) * EPS
            x_adv = (x + delta).clamp(0, 1)
            for _ in range(args.steps):
                x_adv = x_adv.detach().requires_grad_(True)
                loss = F.cross_entropy(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, [x_adv])
                x_adv = x_adv + STEP * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(x_adv.detach()), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    return run


def bench_training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    images, labels = synthetic(args, args.examples)
    loader = TensorLoader(images, labels, batch_size=args.batch_size, shuffle=True,
                          device=device, drop_last=True)  # fmt: skip
    attack = adversary(args.steps)
    problem = compile_problem(device)
    use_compile = args.compile == "on" or (args.compile == "auto" and cuda and problem is None)
    rows: dict[str, Any] = {}
    settings = {
        "fp32": (False, False, False),
        "bf16+channels_last": (True, True, False),
        "bf16+channels_last+compile": (True, True, True),
    }
    best = "fp32"
    for name, (bf16, channels_last, compiled) in settings.items():
        if (bf16 or channels_last) and not cuda:
            rows[name] = {"skipped": "bf16 autocast and channels_last apply on CUDA only"}
            continue
        if compiled and not use_compile:
            reason = problem or f"--compile {args.compile}"
            rows[name] = {"skipped": f"torch.compile not used: {reason}"}
            continue
        config = TrainSettings(epochs=1, adversary=attack, mixed_precision=bf16,
                               channels_last=channels_last, compile=compiled)  # fmt: skip
        rows[name] = timed(reprlab_epoch(args, device, loader, config), device, args.repeats)
        print(f"PGD-{args.steps} AT {args.arch}, {name:28s} "
              f"{rows[name]['images_per_second']:10.1f} img/s")  # fmt: skip
        if rows[name]["images_per_second"] >= rows[best]["images_per_second"]:
            best = name
    rows["robustness-style baseline"] = timed(
        robustness_epoch(args, device, images, labels), device, args.repeats
    )
    base = rows["robustness-style baseline"]["images_per_second"]
    print(f"PGD-{args.steps} AT {args.arch}, {'robustness-style baseline':28s} {base:10.1f} img/s")

    bf16, channels_last, compiled = settings[best]
    fast = {"mixed_precision": bf16, "channels_last": channels_last, "compile": compiled}
    standard_run = reprlab_epoch(args, device, loader, TrainSettings(epochs=1, **fast))
    adversarial_run = reprlab_epoch(
        args, device, loader, TrainSettings(epochs=1, adversary=attack, **fast)
    )
    standard_run(), adversarial_run()  # warm-up (and compile) both
    std, adv = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        std.append(timed_once(standard_run, device))
        adv.append(timed_once(adversarial_run, device))
    t_std, t_adv = statistics.median(std), statistics.median(adv)
    ratio = t_adv / ((args.steps + 1) * t_std)
    print(f"PGD-{args.steps} epoch / {args.steps + 1} standard epochs ({best}): {ratio:.3f} "
          f"(bar <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")  # fmt: skip
    speedup = rows[best]["images_per_second"] / base
    print(f"reprlab ({best}) over the robustness-style loop: {speedup:.2f}x")
    return {
        "pgd_training": rows,
        "fastest": best,
        "standard_epoch_seconds": t_std,
        "pgd_epoch_seconds": t_adv,
        "pgd_over_k_plus_1_standard": ratio,
        "speedup_over_robustness_style": speedup,
    }


def timed_once(run_epoch: Callable[[], int], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    run_epoch()
    sync(device)
    return time.perf_counter() - started


def bench_cka(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model_a = make_model(args, device, seed=0).eval()
    model_b = make_model(args, device, seed=1).eval()
    taps = model_a.layer_taps
    images, _ = synthetic(args, args.cka_examples)
    batches = [
        images[i : i + args.cka_batch_size].to(device).float() / 255
        for i in range(0, args.cka_examples, args.cka_batch_size)
    ]
    sync(device)
    started = time.perf_counter()
    result = layer_cka(model_a, batches, taps_a=taps, model_b=model_b, taps_b=taps,
                       progress=False)  # fmt: skip
    matrix = result.matrix
    sync(device)
    seconds = time.perf_counter() - started
    finite = bool(torch.isfinite(matrix).all())
    print(f"CKA {args.arch} x {args.arch}, {len(taps)} x {len(taps)} layer taps, "
          f"{args.cka_examples} images: {seconds:.2f} s")  # fmt: skip
    return {"taps": len(taps), "examples": args.cka_examples, "seconds": seconds,
            "finite": finite}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {args.arch} "
          f"{args.channels}x{args.image_size}x{args.image_size}, {args.examples} images, "
          f"batch {args.batch_size}, K={args.steps}")  # fmt: skip
    figures = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": bench_training(args, device),
        "cka": bench_cka(args, device),
    }
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))
        print(f"figures -> {args.out}")
    return figures


if __name__ == "__main__":
    main()
