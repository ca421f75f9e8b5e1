"""The store across real processes: concurrent runs train once; a killed run resumes exactly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


@pytest.mark.slow  # tens of seconds on the 2-core CPU; `make test-all` runs it
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
        if list(store.glob("*/work/last.pt")):  # an epoch's checkpoint is written (it comes last)
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


@pytest.mark.slow
def test_every_damage_to_a_store_entry_stops_or_retrains_end_to_end(workdir: Path) -> None:
    """The corruption bar through the command line (the in-process version is fast, in
    test_store_integrity): every file kind of an entry, complete or killed mid-training, and
    every damage. The next run exits 2 with one line naming `reprlab cache rm <key>`, or
    completes on weights identical to an undamaged training; pickled code never runs."""
    from test_store_integrity import damage

    args = [*TRAIN, "model.train.epochs=2", "model.snapshot_epochs=[1,2]"]
    complete, unfinished = workdir / "complete", workdir / "unfinished"
    complete.mkdir()
    unfinished.mkdir()
    assert run_reprlab("run", *args, cwd=complete).returncode == 0
    (reference,) = [p for p in (complete / "outputs" / "store").iterdir() if p.is_dir()]
    expected = torch.load(reference / "artifact.pt", weights_only=True)
    process = start(args, unfinished)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if list((unfinished / "outputs" / "store").glob("*/work/last.pt")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    key = reference.name

    files = {
        "payload": (complete, "artifact.pt"),
        "snapshot": (complete, "snapshots/epoch_001.pt"),
        "metrics": (complete, "metrics.jsonl"),
        "meta": (complete, "meta.json"),
        "marker": (complete, "COMPLETE"),
        "checkpoint": (unfinished, "work/last.pt"),
        "unfinished snapshot": (unfinished, "snapshots/epoch_001.pt"),
    }
    outcomes = {}
    for kind, (template, name) in files.items():
        for how in ("truncate", "flip", "evil", "delete"):
            case = workdir / f"{kind}-{how}".replace(" ", "_")
            shutil.copytree(template / "outputs" / "store", case / "outputs" / "store")
            marker = case / "code-ran"
            damage(case / "outputs" / "store" / key / name, how, marker)
            result = run_reprlab("run", *args, cwd=case)
            assert "Traceback" not in result.stderr, (kind, how, result.stderr)
            assert not marker.exists(), (kind, how, "code in a pickle ran")
            if result.returncode == 2:
                line = result.stderr.strip().splitlines()[-1]
                assert f"`reprlab cache rm {key}`" in line, (kind, how, line)
                outcomes[kind, how] = "stopped"
                continue
            assert result.returncode == 0, (kind, how, result.stderr)
            (record,) = run_records(case)
            assert record["models"]["model"]["trained_now"], (kind, how, "used without retraining")
            actual = torch.load(case / "outputs" / "store" / key / "artifact.pt", weights_only=True)
            for tensor in expected:
                assert torch.equal(expected[tensor], actual[tensor]), (kind, how, tensor)
            outcomes[kind, how] = "retrained"
    print(outcomes)
