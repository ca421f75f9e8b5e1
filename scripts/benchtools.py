"""Timing helpers the ``bench_*.py`` scripts share (imported as ``benchtools``: a script's own
directory is first on ``sys.path`` when it runs as ``python scripts/bench_x.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from reprlab.models import Classifier, build_model


def random_model(arch: str, image_size: int, device: torch.device) -> Classifier:
    """A randomly initialised ``arch`` (seed 0) for 3×``image_size``² inputs, 10 classes, in eval
    mode on ``device``: what a speed ratio needs (the cost does not depend on the weights)."""
    torch.manual_seed(0)
    model = build_model(
        arch,
        num_classes=10,
        in_channels=3,
        image_size=image_size,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    return model.to(device).eval()


def timed(fn: Callable[[], object], device: torch.device, *, clock: str = "wall") -> float:
    """Seconds of ``fn()``. On CUDA: wall time, synchronised before and after. On the CPU:
    wall time (``clock="wall"``) or this process's CPU time (``clock="cpu"``), which other
    processes on a shared machine disturb far less (run with one thread, OMP_NUM_THREADS=1, for
    the two to agree on a quiet machine)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"unknown clock '{clock}'; use wall or cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    fn()
    return now() - start


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    *,
    clock: str = "wall",
) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` rounds, order rotating every round."""
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(candidates[name], device, clock=clock))
    return {name: statistics.median(values) for name, values in times.items()}
