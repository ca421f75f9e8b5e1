"""Benchmark layer CKA against its floor (the forward passes) and torch-cka 0.21.

Both tools see the same two randomly initialised models (resnet18 on 3x32x32 when registered,
else the cnn_madry MNIST CNN), the same taps, the same images and the same batches, and compute
the same estimator: torch-cka 0.21 accumulates Song et al.'s unbiased HSIC of linear Grams of
flattened activations over minibatches (Nguyen et al. 2021), equal weight per batch, which is
``layer_cka(..., kernel="linear", unbiased=True, pool=False)``. It does so in the models' dtype
without centring, and recomputes the column Gram for every (row, column) pair.

The floor is what reprlab must do anyway: the forward passes of both models exactly as layer CKA
runs them (:func:`reprlab.methods.layerwise.tap_features`), with nothing computed from the
activations.

Prints, from one run, for each tap set asked for (``--taps declared layers`` does both), and
the load average, since the machine may be shared:
  * the floor and reprlab in ``--repeats`` rounds over all images, batch by batch: each batch's
    forward passes alone and layer_cka on that batch follow each other (order alternating), so
    both see about the same load; the per-round totals, reprlab / floor per round and per batch
    pair, and their medians (target <= 1.1);
  * torch-cka and a whole layer_cka run next to it, in ``--peer-repeats`` pairs (order
    alternating): seconds, the speed-up torch-cka / reprlab per pair and its median, and the
    speed-up on the CKA work alone (floor subtracted);
  * the max absolute difference of the matrices: against torch-cka as users run it (float32),
    and against torch-cka run in float64 on the first batches (like with like; target <= 1e-4);
  * our peak memory for N and 4N images at one batch size (first tap set), each measured in a
    fresh subprocess (CPU: peak RSS delta; CUDA: max_memory_allocated delta), and their ratio
    (target ~1).

``--taps declared`` uses the architecture's taps (resnet18: stem, 8 blocks, pool, logits);
``--taps layers`` uses the layer taps instead (every conv, BatchNorm, ReLU, pooling and linear
output, as Cianfarani et al. tap; modules called twice per pass are left out for torch-cka).

Run from the repository root with reprlab importable (``pip install -e .`` or PYTHONPATH=.)::

    python scripts/bench_cka.py --taps declared layers  # CPU, both tap sets, about 10 minutes
    python scripts/bench_cka.py --taps layers --n 256 --batch-size 64 --skip-memory
    python scripts/bench_cka.py --device cuda --n 10000 --batch-size 1024 --memory-n 2500
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from reprlab.methods.layerwise import layer_cka, tap_features
from reprlab.models import available_archs, build_model, select_taps
from reprlab.models.base import Classifier

INPUTS = {  # arch -> (channels, image size)
    "resnet18": (3, 32),
    "cnn_madry": (1, 28),
}


def bench_taps(model: Classifier, taps: str) -> tuple[str, ...]:
    """The taps both tools compare: block taps ("declared") or layer taps ("layers").

    torch-cka hooks modules by name and keeps every call, so taps of modules that run more than
    once per forward pass (torchvision's shared block ReLU) are left out.
    """
    probe = model.probe()
    where = {t.name: t.module for t in probe.taps}
    names = select_taps(model, "blocks" if taps == "declared" else "all")
    return tuple(name for name in names if len(probe.calls[where[name]]) == 1)


def tap_modules(model: Classifier, taps: tuple[str, ...]) -> list[str]:
    """``net.<path>`` of the module whose output each tap is (what torch-cka hooks)."""
    where = {t.name: t.module for t in model.probe().taps}
    return [f"net.{where[name]}" for name in taps]


def build_pair(
    arch: str, taps: str, device: torch.device
) -> tuple[Classifier, Classifier, tuple[str, ...]]:
    """Two differently seeded, randomly initialised models of ``arch`` in eval mode.

    ``taps``: "declared" (the architecture's own) or "layers" (every conv/BN/linear as well).
    """
    channels, size = INPUTS[arch]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(
            arch,
            num_classes=10,
            in_channels=channels,
            image_size=size,
            mean=[0.5] * channels,
            std=[0.25] * channels,
        )
        for module in model.modules():  # torch-cka keeps hook outputs without cloning them
            if isinstance(module, nn.ReLU):
                module.inplace = False
        models.append(model.to(device).eval())
    return models[0], models[1], bench_taps(models[0], taps)


def image_batches(
    arch: str, n: int, batch_size: int, device: torch.device, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Uniform [0, 1] images, generated batch by batch: the set itself is never held."""
    channels, size = INPUTS[arch]
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        yield torch.rand(count, channels, size, size, generator=generator).to(device)


def timed(fn: Callable[[], torch.Tensor | None], device: torch.device) -> tuple[float, object]:
    """Wall seconds of ``fn()`` (synchronising CUDA) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def run_ours(model_a, model_b, taps, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """reprlab's matrix [p, q] with torch-cka's estimator (linear, unbiased, flattened)."""
    batches = (x.to(device) for x in images.split(batch_size))
    result = layer_cka(
        model_a, batches, taps_a=taps, model_b=model_b, taps_b=taps, kernel="linear",
        unbiased=True, progress=False,
    )  # fmt: skip
    return result.matrix


def run_torch_cka(
    model_a, model_b, taps, images: torch.Tensor, batch_size: int, device
) -> torch.Tensor:
    """torch-cka 0.21's matrix for all taps of both models, in the dtype of models and images.

    torch-cka leaves its hooks on the models it is given, so it gets copies.
    """
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    model_a, model_b = copy.deepcopy(model_a), copy.deepcopy(model_b)
    loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=False)
    peer = CKA(
        model_a,
        model_b,
        model1_name="model_a",
        model2_name="model_b",
        model1_layers=tap_modules(model_a, taps),
        model2_layers=tap_modules(model_b, taps),
        device=str(device),
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(images.dtype)  # its helper vectors use the default dtype
    try:
        peer.compare(loader, loader)
    finally:
        torch.set_default_dtype(default_dtype)
    # torch-cka orders rows by firing order; taps are declared in forward order, so they agree.
    return peer.export()["CKA"].to(torch.float64)


def forward_only(model_a, model_b, taps, images: torch.Tensor, batch_size: int, device) -> None:
    """The floor: both models' forward passes on every batch, exactly as layer CKA runs them."""
    for x in images.split(batch_size):
        for model in (model_a, model_b):
            tap_features(model, x.to(device), taps)


def _median_line(label: str, values: list[float], unit: str = "s", show: bool = True) -> str:
    rounds = "  ".join(f"{value:.2f}" for value in values) if show else f"{len(values)} pairs"
    return f"{label:<36}{statistics.median(values):8.2f} {unit}  ({rounds})"


def paired_rounds(
    model_a, model_b, taps, images: torch.Tensor, args, device
) -> dict[str, list[float]]:
    """Floor vs reprlab, batch by batch: each batch's forward passes alone, then layer_cka on it.

    The two runs of a pair follow each other (order alternating), so on a shared machine both
    see about the same load; per round, the pairs add up to the full set of images. Returns the
    per-round totals ("floor", "reprlab") and the per-pair ratios ("pairs").
    """
    out: dict[str, list[float]] = {"floor": [], "reprlab": [], "pairs": []}
    batches = images.split(args.batch_size)
    for index in range(args.repeats):
        totals = {"floor": 0.0, "reprlab": 0.0}
        for position, x in enumerate(batches):
            runs = {
                "floor": lambda x=x: forward_only(model_a, model_b, taps, x, len(x), device),
                "reprlab": lambda x=x: run_ours(model_a, model_b, taps, x, len(x), device),
            }
            names = list(runs) if (index + position) % 2 == 0 else list(runs)[::-1]
            pair = {name: timed(runs[name], device)[0] for name in names}
            out["pairs"].append(pair["reprlab"] / pair["floor"])
            for name, value in pair.items():
                totals[name] += value
        for name, value in totals.items():
            out[name].append(value)
    return out


def compare_speed(args: argparse.Namespace, taps: str) -> None:
    """Time floor, reprlab and torch-cka interleaved on one tap set; check agreement."""
    device = torch.device(args.device)
    model_a, model_b, tap_set = build_pair(args.arch, taps, device)
    images = torch.cat(list(image_batches(args.arch, args.n, args.n, torch.device("cpu"))))
    p = q = len(tap_set)
    print(f"\n{args.arch}, {taps} taps ({p} x {q}), {args.n} images, batch {args.batch_size}")
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"load average at start: {_load_average()}")
    warmup = images[: args.batch_size]
    run_ours(model_a, model_b, tap_set, warmup, args.batch_size, device)
    rounds = paired_rounds(model_a, model_b, tap_set, images, args, device)
    ratios = [ours / floor for ours, floor in zip(rounds["reprlab"], rounds["floor"], strict=True)]
    print(_median_line("forward passes alone (both models):", rounds["floor"]))
    print(_median_line("reprlab layer_cka:", rounds["reprlab"]))
    print(_median_line("reprlab / forward passes alone:", ratios, "x"))
    print(_median_line("  the same, per batch pair:", rounds["pairs"], "x", show=False))
    print("  (target <= 1.1; medians over rounds, and over batch pairs)")
    if args.skip_peer:
        return
    # torch-cka against a whole layer_cka run right before or after it.
    peer: dict[str, list[float]] = {"reprlab": [], "torch-cka": [], "ratio": []}
    results: dict[str, torch.Tensor] = {}
    runs = {
        name: lambda run=run: run(model_a, model_b, tap_set, images, args.batch_size, device)
        for name, run in (("reprlab", run_ours), ("torch-cka", run_torch_cka))
    }
    for index in range(args.peer_repeats):
        names = list(runs) if index % 2 == 0 else list(runs)[::-1]
        for name in names:
            seconds, results[name] = timed(runs[name], device)
            peer[name].append(seconds)
        peer["ratio"].append(peer["torch-cka"][-1] / peer["reprlab"][-1])
    print(_median_line("torch-cka 0.21 (float32):", peer["torch-cka"]))
    print(_median_line("reprlab layer_cka, next to it:", peer["reprlab"]))
    print(_median_line("speed-up torch-cka / reprlab:", peer["ratio"], "x"))
    floor = statistics.median(rounds["floor"]) * statistics.median(peer["reprlab"])
    floor /= statistics.median(rounds["reprlab"])  # the floor scaled to the load of these runs
    ours_work = statistics.median(peer["reprlab"]) - floor
    if ours_work > 0:
        work = (statistics.median(peer["torch-cka"]) - floor) / ours_work
        print(f"  CKA work only (floor subtracted, scaled to these runs): {work:6.1f} x")
    ours_matrix, peer_matrix = results["reprlab"], results["torch-cka"]
    float32_error = (peer_matrix - ours_matrix).abs().max().item()
    print(f"max |torch-cka float32 - reprlab|:  {float32_error:9.2e}  (torch-cka's float32 error)")

    # Like with like in precision: torch-cka run in float64 on the first batches.
    subset = images[: args.check_batches * args.batch_size]
    reference = run_torch_cka(
        copy.deepcopy(model_a).double(),
        copy.deepcopy(model_b).double(),
        tap_set,
        subset.double(),
        args.batch_size,
        device,
    )
    ours_subset = run_ours(model_a, model_b, tap_set, subset, args.batch_size, device)
    difference = (reference - ours_subset).abs().max().item()
    print(
        f"max |torch-cka float64 - reprlab|:  {difference:9.2e}  (target <= 1e-4; "
        f"{len(subset)} images)"
    )


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine may be shared), or "unknown"."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _host_memory_mark() -> int:
    """Reset this process's peak resident set to the current one; return the current one.

    ru_maxrss is carried over from the parent process across exec, so a child launched by a
    large parent would report the parent's peak; VmHWM belongs to this process image only.
    """
    if not Path("/proc/self/status").exists():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM where permitted
    return _proc_status_bytes("VmRSS")


def _host_memory_peak() -> int:
    if not Path("/proc/self/status").exists():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return _proc_status_bytes("VmHWM")


def peak_memory_worker(args: argparse.Namespace) -> None:
    """Run layer_cka on ``args.n`` streamed images; print our peak memory delta as JSON."""
    device = torch.device(args.device)
    model_a, model_b, taps = build_pair(args.arch, args.taps[0], device)
    options = {"taps_a": taps, "model_b": model_b, "taps_b": taps, "progress": False}
    warmup = next(image_batches(args.arch, 4, 4, device))
    layer_cka(model_a, [warmup], **options)  # allocator and lazy init
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _host_memory_mark()
    batches = image_batches(args.arch, args.n, args.batch_size, device, seed=1)
    layer_cka(model_a, batches, **options)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _host_memory_peak() - before
    print(json.dumps({"n": args.n, "peak_bytes": peak}))


def measure_peak(args: argparse.Namespace, n: int) -> int:
    """Peak memory delta of layer_cka on ``n`` images, in a fresh Python process."""
    command = [
        sys.executable,
        __file__,
        "--memory-worker",
        f"--arch={args.arch}",
        f"--taps={args.taps[0]}",
        f"--n={n}",
        f"--batch-size={args.batch_size}",
        f"--device={args.device}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed:\n{done.stderr}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def compare_memory(args: argparse.Namespace) -> None:
    """Our peak memory for N and 4N images at one batch size, each in a fresh process."""
    small, large = args.memory_n, 4 * args.memory_n
    peaks = {n: measure_peak(args, n) for n in (small, large)}
    kind = "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (VmHWM)"
    print(f"reprlab peak memory ({kind} delta), {args.taps[0]} taps, batch {args.batch_size}:")
    for n in (small, large):
        print(f"  {n:6d} images: {peaks[n] / 2**20:9.1f} MiB")
    print(f"  ratio 4N / N:  {peaks[large] / max(peaks[small], 1):9.2f}  (target ~1)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_arch = "resnet18" if "resnet18" in available_archs() else "cnn_madry"
    parser.add_argument("--arch", choices=sorted(INPUTS), default=default_arch)
    parser.add_argument(
        "--taps",
        choices=["declared", "layers"],
        nargs="+",
        default=["declared"],
        help="the architecture's taps, or every conv/BN/linear output as well (Cianfarani); "
        "give both to measure both in one run",
    )
    parser.add_argument("--n", type=int, default=384, help="images for the speed comparison")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--check-batches", type=int, default=2, help="batches for the fp64 check")
    parser.add_argument("--memory-n", type=int, default=128, help="N of the N/4N memory test")
    parser.add_argument("--repeats", type=int, default=5, help="paired rounds: floor, reprlab")
    parser.add_argument("--peer-repeats", type=int, default=1, help="torch-cka, reprlab pairs")
    parser.add_argument("--skip-peer", action="store_true", help="no torch-cka comparison")
    parser.add_argument("--skip-memory", action="store_true", help="no memory measurement")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return args


def main() -> None:
    args = parse_args()
    if args.memory_worker:
        peak_memory_worker(args)
        return
    if not args.skip_peer and importlib.util.find_spec("torch_cka") is None:
        sys.exit("torch-cka is not installed; install it with: pip install torch-cka==0.21")
    for taps in args.taps:
        compare_speed(args, taps)
    if not args.skip_memory:
        compare_memory(args)


if __name__ == "__main__":
    main()
