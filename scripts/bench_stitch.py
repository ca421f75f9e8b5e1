"""Benchmark training every stitch point at once against training them one at a time.

The speed bar: training the stitches of all block taps of resnet18 × resnet18 (CIFAR
shape, 3×32×32; random images are fine, the cost does not depend on them) for one epoch with
:func:`reprlab.methods.stitching.train_stitches` (one front pass per batch for every point) must
cost at
most 0.8× training the points one at a time (one call per point: the front runs once per point).

Both ways train the same stitches from the same initialisation on the same batches (the results
are equal; tests/cli/test_stitching.py checks it). The two are interleaved ``--repeats``
times in one
process and the median ratio is printed, with the cost model counted exactly by
:class:`torch.utils.flop_counter.FlopCounterMode` over one batch of each way (forward and
backward FLOPs; the donors are frozen, so their backward is input gradients only).

Run from the repository root (PYTHONPATH=. or an editable install)::

    OMP_NUM_THREADS=2 python scripts/bench_stitch.py                # CPU, about 2-4 minutes
    OMP_NUM_THREADS=1 python scripts/bench_stitch.py --clock cpu    # a loaded CPU: process time
    python scripts/bench_stitch.py --device cuda --images 4096 --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from reprlab.core.fit import FitSettings
from reprlab.data import TensorLoader
from reprlab.methods import stitching as st
from reprlab.models import build_model


def make(seed: int, device: torch.device):
    torch.manual_seed(seed)
    model = build_model(
        "resnet18", num_classes=10, in_channels=3, image_size=32,
        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
    )  # fmt: skip
    return model.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frozen-bn", default="train", choices=["train", "eval"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"],
        help="cpu: this process's CPU time, which other jobs on a shared machine barely disturb "
        "(use it with one thread; on CUDA only wall time means anything)",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu measures host CPU time; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    front, end = make(0, device), make(1, device)
    points = [st.StitchPoint(t, t, t) for t in front.block_taps]
    shapes = {t.name: t.shape for t in front.probe().taps}
    initial = {
        p.name: st.make_stitch(shapes[p.name], shapes[p.name], seed=st.point_seed(0, p.name))
        for p in points
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (args.images,), generator=generator)
    loader = TensorLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=0, device=device)
    settings = FitSettings(epochs=1, optimizer="adam", lr=1e-3, weight_decay=1e-4)

    def joint(batches=loader) -> None:
        stitches = {n: copy.deepcopy(s).to(device) for n, s in initial.items()}
        st.train_stitches(
            front, end, points, stitches, batches, settings, device=device,
            frozen_bn=args.frozen_bn, progress=False,
        )  # fmt: skip

    def one_at_a_time(batches=loader) -> None:
        for p in points:
            stitch = {p.name: copy.deepcopy(initial[p.name]).to(device)}
            st.train_stitches(
                front, end, [p], stitch, batches, settings, device=device,
                frozen_bn=args.frozen_bn, progress=False,
            )  # fmt: skip

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    one_batch = TensorLoader(x[: args.batch_size], y[: args.batch_size], batch_size=args.batch_size,
                             shuffle=False, seed=0, device=device)  # fmt: skip
    flops = {}
    for name, fn in (("joint", joint), ("one at a time", one_at_a_time)):
        with FlopCounterMode(display=False) as counter:
            fn(one_batch)
        flops[name] = counter.get_total_flops()
    print(f"resnet18 x resnet18, {len(points)} stitch points: {', '.join(p.name for p in points)}")
    print(
        f"cost model per batch of {args.batch_size} (forward+backward FLOPs): joint "
        f"{flops['joint'] / 1e9:.2f} GFLOP, one at a time {flops['one at a time'] / 1e9:.2f} "
        f"GFLOP, ratio {flops['joint'] / flops['one at a time']:.3f}"
    )
    full = FlopCounterMode(display=False)
    with full, torch.no_grad():
        front(x[: args.batch_size].to(device))
    unit = full.get_total_flops()
    print(
        f"in full forward passes of resnet18: joint {flops['joint'] / unit:.2f}, one at a time "
        f"{flops['one at a time'] / unit:.2f}"
    )
    joint(one_batch)  # warm-up
    ratios = []
    for repeat in range(args.repeats):
        times = {}
        order = (("joint", joint), ("one at a time", one_at_a_time))
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            sync()
            start = clock()
            fn()
            sync()
            times[name] = clock() - start
        ratios.append(times["joint"] / times["one at a time"])
        print(
            f"repeat {repeat + 1}: joint {times['joint']:.2f} s, one at a time "
            f"{times['one at a time']:.2f} s, ratio {ratios[-1]:.3f}"
        )
    print(
        f"median ratio joint / one at a time over {args.repeats} repeats: "
        f"{statistics.median(ratios):.3f} (bar: <= 0.8); {args.images} images, batch "
        f"{args.batch_size}, donor BN {args.frozen_bn}, device {device}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock"
    )


if __name__ == "__main__":
    main()
