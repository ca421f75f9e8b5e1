"""The scripts in examples/ run as a user would run them (tiny sizes, synthetic data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, reprlab_env

TINY = ["model.train.epochs=1", "model.snapshot_epochs=[1]", "monitor.examples=50",
        "monitor.attack_steps=1", "progress=false"]  # fmt: skip


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**reprlab_env(), "REPRLAB_STORE": str(cwd / "store"), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_cka_against_a_torchvision_model(tmp_path: Path) -> None:
    result = run_example(
        "cka_torchvision.py", "--recipe", "cnn_small", "--dataset", "synthetic",
        "--examples", "40", "--train", "--out", "cka.png", *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vs torchvision resnet18" in result.stdout
    assert (tmp_path / "cka.png").stat().st_size > 0


@pytest.mark.slow
def test_stitching_curve(tmp_path: Path) -> None:
    result = run_example(
        "stitching_curve.py", "--dataset", "synthetic", "--train-examples", "256",
        "--examples", "64", "--epochs", "1", "--eps", "0.1", "--attack-steps", "2", "--train",
        "--out", "curve.png", *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("robust_acc" in line for line in lines)
    assert (tmp_path / "curve.png").stat().st_size > 0
