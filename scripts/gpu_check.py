"""One prepared check of reprlab on a CUDA machine: every GPU figure in one JSON, within 8 minutes.

``make gpu-check`` (or ``python scripts/gpu_check.py --out gpu_check.json``) runs, each step in its
own process with its own time limit, so one failure or hang never hides the others:

1. ``setup``: hydra-core, omegaconf and antlr4 (and pytest) installed from the wheels carried in
   ``outputs/wheels`` (``make wheels`` on a machine with PyPI) where the GPU machine lacks them;
2. ``gpu_tests``: ``pytest -m gpu`` (the tests that need CUDA);
3. ``bench_train_gpu``: PGD-AT images/s of ResNet-18 in fp32, bf16 + channels_last and compiled,
   the PGD/standard epoch ratio, the ``robustness``-style baseline, and CKA of two ResNet-18s over
   all layer taps on 10,000 images (scripts/bench_train_gpu.py; its JSON is embedded);
4. ``stir_bf16``: STIR of two ResNet-18s, 1,000 images x 1,000 steps, fp32 and bf16
   (scripts/bench_stir.py --stir);
5. ``inversion_bf16``: every inversion optimisation at ImageNet shape in bf16
   (scripts/bench_inversion.py --dtype bfloat16);
6. ``experiment``: ``experiment=stir_cifar_table1`` through ``reprlab run`` at reduced scale (the
   four ResNet-18s trained for one epoch each) on synthetic CIFAR-10-shaped files in torchvision's
   layout.

The JSON holds, per step, its exit code, seconds and figures (parsed JSON where the step writes
it, else the last lines it printed), plus the device, torch version and total time. Exit code: 0
when every step passed. ``--dry`` runs the same steps on the CPU at tiny sizes (seconds; the test
tests/cli/test_gpu_check.py), skipping the wheel installation when the packages import.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / "outputs" / "wheels"
NEEDED = ("hydra", "omegaconf", "antlr4", "pytest")  # import names the GPU machine may lack
PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pytest")

# Each step: (name, command, time limit in seconds) at full size and --dry size.
FULL_LIMITS = {
    "gpu_tests": 60,
    "bench_train_gpu": 120,
    "stir_bf16": 90,
    "inversion_bf16": 45,
    "experiment": 75,
}  # together with setup and start-up within 8 minutes (tests/cli/test_gpu_check.py)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def steps(dry: bool, work: Path) -> list[tuple[str, list[str], float]]:
    """The checks in order: (name, command, limit in s)."""
    figures = work / "bench_train_gpu.json"
    if dry:
        return [
            ("gpu_tests", python("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                 "tests/unit/test_gpu.py"), 120),
            ("bench_train_gpu", python(
                "scripts/bench_train_gpu.py", "--device", "cpu", "--arch", "cnn_small",
                "--channels", "1", "--image-size", "28", "--examples", "64", "--batch-size", "32",
                "--steps", "2", "--repeats", "1", "--cka-examples", "32", "--cka-batch-size",
                "16", "--compile", "off", "--out", str(figures)), 120),
            ("stir_bf16", python("scripts/bench_stir.py", "--device", "cpu", "--batch-size", "4",
                                 "--steps", "2", "--repeats", "1"), 120),
            # cnn_small, not resnet18: bf16 on a CPU without bf16 units is emulated, and resnet18's
            # dry run took 137 s alone on one thread (cnn_small: 3 s), past the step's limit.
            ("inversion_bf16", python(
                "scripts/bench_inversion.py", "--device", "cpu", "--arch", "cnn_small",
                "--image-size", "28", "--batch-size", "4", "--steps", "2", "--repeats", "1",
                "--dtype", "bfloat16"), 120),
            ("experiment", python("scripts/gpu_check.py", "--experiment-only", "--dry",
                                  "--work", str(work)), 300),
        ]  # fmt: skip
    return [
        ("gpu_tests", python("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                             "tests/"), FULL_LIMITS["gpu_tests"]),
        ("bench_train_gpu", python("scripts/bench_train_gpu.py", "--device", "cuda",
                                   "--examples", "5000", "--repeats", "2", "--out",
                                   str(figures)),
         FULL_LIMITS["bench_train_gpu"]),
        ("stir_bf16", python("scripts/bench_stir.py", "--device", "cuda", "--batch-size", "500",
                             "--steps", "50", "--repeats", "3", "--stir"),
         FULL_LIMITS["stir_bf16"]),
        ("inversion_bf16", python("scripts/bench_inversion.py", "--device", "cuda", "--arch",
                                  "resnet50", "--image-size", "224", "--batch-size", "10",
                                  "--steps", "100", "--repeats", "3", "--dtype", "bfloat16"),
         FULL_LIMITS["inversion_bf16"]),
        ("experiment", python("scripts/gpu_check.py", "--experiment-only", "--work", str(work)),
         FULL_LIMITS["experiment"]),
    ]  # fmt: skip


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def setup() -> dict[str, Any]:
    """Install what is missing from the carried wheels (no network needed)."""
    missing = missing_packages()
    if not missing:
        return {"rc": 0, "note": "hydra, omegaconf, antlr4 and pytest already import"}
    if not WHEELS.is_dir():
        return {"rc": 1, "note": f"{', '.join(missing)} missing and no {WHEELS}: run `make wheels`"}
    done = subprocess.run(
        python("-m", "pip", "install", "--no-index", "--find-links", str(WHEELS), *PACKAGES),
        capture_output=True,
        text=True,
    )
    return {"rc": done.returncode, "note": f"installed from {WHEELS}", "tail": tail(done)}


def tail(done: subprocess.CompletedProcess, lines: int = 25) -> list[str]:
    text = (done.stdout or "") + (done.stderr or "")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def run_step(name: str, command: list[str], limit: float, work: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'scripts'}", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        return {
            "rc": None,
            "timed_out_after_s": limit,
            "seconds": round(time.perf_counter() - start, 1),
            "tail": out.splitlines()[-25:],
        }
    result: dict[str, Any] = {
        "rc": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": tail(done),
    }
    figures = work / f"{name}.json"
    if figures.exists():
        result["figures"] = json.loads(figures.read_text())
    return result


def experiment(dry: bool, work: Path) -> int:
    """``experiment=stir_cifar_table1`` at reduced scale on synthetic CIFAR-10 files; writes
    ``<work>/experiment.json`` with the run's STIR summary."""
    sys.path.insert(0, str(REPO / "tests"))
    import torchvision
    from fake_data import fake_cifar

    # Fake files cannot match torchvision's md5s: check existence only.
    torchvision.datasets.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    from reprlab.cli.app import main

    data = fake_cifar(work / "data", train=64 if dry else 5000, test=32 if dry else 1000)
    outputs = work / "outputs"
    batch = 16 if dry else 128
    tiny = f"train:{{epochs:1,batch_size:{batch}}},snapshot_epochs:[1],validation:null"
    models = ",".join(
        f"{{recipe:{recipe}{extra},{tiny}}}"
        for recipe, extra in (
            ("resnet18", ""),
            ("resnet18", ",seed:1,name:resnet18_s1"),
            ("resnet18_at_l2", ""),
            ("resnet18_at_l2", ",seed:1,name:resnet18_at_l2_s1"),
        )
    )
    size = ["analysis.examples=8", "analysis.steps=2", "analysis.batch_size=8"] if dry else [
        "analysis.examples=500", "analysis.steps=200", "analysis.batch_size=500",
        "analysis.precision=bf16",
    ]  # fmt: skip
    start = time.perf_counter()
    code = main(
        ["run", "experiment=stir_cifar_table1", "dataset=cifar10", f"paths.outputs={outputs}",
         f"paths.data={data}", "progress=false", f"device={'cpu' if dry else 'cuda'}",
         "num_workers=0", "analysis.repeats=1", "monitor.examples=8", "monitor.attack_steps=1",
         f"analysis.models=[{models}]", *size]
    )  # fmt: skip
    seconds = time.perf_counter() - start
    summaries = sorted((outputs / "runs").rglob("stir.json"))
    result = {
        "rc": code,
        "seconds": round(seconds, 1),
        "stir": json.loads(summaries[-1].read_text()) if summaries else None,
    }
    (work / "experiment.json").write_text(json.dumps(result, indent=2, default=str))
    return code


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes (a test)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check.json")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--experiment-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.experiment_only:
        return experiment(args.dry, args.work)
    start = time.perf_counter()
    report: dict[str, Any] = {"dry": args.dry, "setup": setup()}
    report.update(device_info())
    if not args.dry and report["device"] == "cpu":
        report["error"] = "no CUDA device: run with --dry on a CPU"
    else:
        report["steps"] = {}
        for name, command, limit in steps(args.dry, args.work):
            report["steps"][name] = run_step(name, command, limit, args.work)
            state = report["steps"][name]
            print(f"gpu_check: {name}: rc {state['rc']} in {state['seconds']} s", flush=True)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"gpu_check: {report['total_seconds']} s in all; figures in {args.out}")
    failed = [n for n, s in report.get("steps", {}).items() if s["rc"] not in (0, 5)]
    return 1 if failed or "error" in report or report["setup"]["rc"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
