"""The store across real processes: concurrent runs train once; a killed run resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import FAST, reprlab_env, run_reprlab

TRAIN = [*FAST, "analysis=train", "model=cnn_small_at", "model.adversary.steps=2"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reprlab", "run", *args],
        cwd=cwd,
        env=reprlab_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_records(root: Path) -> list[dict]:
    return [
        json.loads(p.read_text()) for p in sorted((root / "outputs" / "runs").rglob("run.json"))
    ]


def test_two_concurrent_runs_train_the_model_once(workdir: Path) -> None:
    args = [*TRAIN, "model.train.epochs=2"]
    processes = [start(args, workdir) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    records = run_records(workdir)
    assert len(records) == 2
    assert sorted(r["models"]["model"]["trained_now"] for r in records) == [False, True]
    assert len({r["models"]["model"]["key"] for r in records}) == 1


def test_killed_training_resumes_to_the_same_weights(workdir: Path) -> None:
    args = [*TRAIN, "model.train.epochs=4", "model.snapshot_epochs=[2,4]"]
    reference_dir, killed_dir = workdir / "reference", workdir / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    assert run_reprlab("run", *args, cwd=reference_dir).returncode == 0

    process = start(args, killed_dir)
    store = killed_dir / "outputs" / "store"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        metrics = list(store.glob("*/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= 1:
            process.send_signal(signal.SIGKILL)  # no chance to clean up
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (entry,) = [p for p in store.iterdir() if p.is_dir()]
    assert not (entry / "COMPLETE").exists() and (entry / "work" / "last.pt").exists()

    resumed = run_reprlab("run", *args, cwd=killed_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr + resumed.stdout
    (reference_entry,) = [p for p in (reference_dir / "outputs" / "store").iterdir() if p.is_dir()]
    assert entry.name == reference_entry.name
    for name in ("artifact.pt", "snapshots/epoch_002.pt", "snapshots/epoch_004.pt"):
        expected = torch.load(reference_entry / name, weights_only=True)
        actual = torch.load(entry / name, weights_only=True)
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}: {key}"
    history = [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
