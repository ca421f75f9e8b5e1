"""The `reprlab` command as a user runs it: error paths, help, runs, sweeps, report, cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import FAST, run_reprlab

EVALUATE_FAST = [
    *FAST,
    "analysis=evaluate",
    "analysis.examples=100",
    "analysis.eps=[0.1]",
    "attack.steps=3",
]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reprlab: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["model=resnet19"], ["unknown model 'resnet19'", "cnn_small", "resnet18_at"]),
        (["ref=resnet19"], ["unknown ref 'resnet19'"]),
        (["analysis=ckaa"], ["unknown analysis 'ckaa'", "evaluate"]),
        (["attack.eps=-1"], ["attack.eps=-1.0 is invalid"]),
        (["attack.norm=l3"], ["attack.norm='l3'", "linf, l2"]),
        (["model.train.epochs=0"], ["model.train.epochs=0 is invalid"]),
        (["model.train.epochz=3"], ["model.train.epochz"]),
        (["dataset=cifar10"], ["cifar10", "reprlab download cifar10"]),
        (["-m", "dataset=synthetic", "attack.eps=0.1,-1"], ["sweep job", "attack.eps=-1.0"]),
        (["model=cnn_small,resnet19", "-m"], ["unknown model 'resnet19'"]),
        pytest.param(
            ["device=cuda"],
            ["CUDA is not available"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        (["analysis=cka", "analysis.taps=[conv1,conv9]"], ["analysis.taps", "conv9"]),
    ],
)
def test_user_errors_print_one_line_and_write_nothing(workdir: Path, args, fragments) -> None:
    result = run_reprlab("run", *args, cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result, *fragments)
    assert not (workdir / "outputs" / "runs").exists()
    assert not (workdir / "outputs" / "store").exists()


def test_taps_lists_every_tap_with_shapes_and_marks(workdir: Path) -> None:
    result = run_reprlab("taps", "model=resnet18", "dataset=cifar10", cwd=workdir)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert rows["stem"] == ["block", "64x32x32", "split"]
    assert rows["layer1.0.relu2"] == ["layer", "64x32x32"]
    assert rows["layer2.0.shortcut.1"] == ["layer", "128x16x16"]
    assert rows["pool"] == ["block", "512", "split", "representation"]
    assert rows["logits"] == ["block", "10", "split"]
    assert "11 block taps, 59 layer taps" in result.stdout
    assert list(workdir.iterdir()) == []  # nothing written, no dataset files needed


def test_taps_with_an_unknown_model_prints_one_line(workdir: Path) -> None:
    result = run_reprlab("taps", "model=resnet19", cwd=workdir)
    assert result.returncode == 2
    assert_one_line_error(result, "unknown model 'resnet19'", "resnet18_at")


def test_help_and_cfg_pass_through_to_hydra(workdir: Path) -> None:
    top = run_reprlab("--help", cwd=workdir)
    assert top.returncode == 0 and "run" in top.stdout and "cache" in top.stdout
    helped = run_reprlab("run", "--help", cwd=workdir)
    assert helped.returncode == 0
    assert "cnn_small_at" in helped.stdout and "(any model option)" in helped.stdout
    shown = run_reprlab("run", "model=resnet18_at", "dataset=cifar10", "--cfg", "job", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "name: resnet18_at" in shown.stdout and "name: cifar10" in shown.stdout
    assert not (workdir / "outputs").exists()


def test_evaluate_run_writes_a_versioned_run_and_reuses_the_store(workdir: Path) -> None:
    first = run_reprlab("run", *EVALUATE_FAST, cwd=workdir)
    assert first.returncode == 0, first.stderr
    runs = sorted((workdir / "outputs" / "runs" / "evaluate").glob("*/*"))
    assert len(runs) == 1
    run_dir = runs[0]
    for name in ("run.json", "accuracy.csv", "accuracy_vs_eps.png", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["models"]["model"]["trained_now"] is True
    assert record["seeds"]["torch"] == 0 and record["device"] == "cpu"
    assert set(record["git"]) == {"sha", "dirty"} and record["versions"]["torch"]
    table = pd.read_csv(run_dir / "accuracy.csv")
    assert list(table.eps) == [0.0, 0.1]
    assert record["summary"]["clean_acc"] == pytest.approx(table.accuracy[0])

    second = run_reprlab("run", *EVALUATE_FAST, cwd=workdir)
    assert second.returncode == 0, second.stderr
    runs = sorted((workdir / "outputs" / "runs" / "evaluate").glob("*/*"))
    assert len(runs) == 2, "a second run must get its own directory"
    again = json.loads((runs[1] / "run.json").read_text())
    assert again["models"]["model"]["trained_now"] is False
    assert again["models"]["model"]["key"] == record["models"]["model"]["key"]
    assert again["summary"] == record["summary"], "same seed, same store entry, same numbers"

    listed = run_reprlab("cache", "ls", cwd=workdir)
    assert listed.returncode == 0 and "cnn_small" in listed.stdout and "complete" in listed.stdout


def test_sweep_writes_one_directory_per_job_and_a_summary(workdir: Path) -> None:
    result = run_reprlab("run", "-m", *EVALUATE_FAST, "model.seed=0,1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    sweeps = list((workdir / "outputs" / "runs" / "evaluate").glob("*/*_sweep"))
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert (sweep / "0" / "run.json").exists() and (sweep / "1" / "run.json").exists()
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 2 and set(summary.status) == {"completed"}
    assert "clean_acc" in summary.columns and "robust_acc" in summary.columns
    assert (sweep / "accuracy_vs_eps.png").exists(), "one figure with every job's curve"

    report = run_reprlab("report", str(sweep), cwd=workdir)
    assert report.returncode == 0, report.stderr
    assert "clean_acc" in report.stdout and not (sweep / "report.csv").exists()  # no copy
    assert (sweep / "report" / "index.html").exists(), "every sweep ends with its HTML report"
    missing = run_reprlab("report", str(workdir / "nowhere"), cwd=workdir)
    assert_one_line_error(missing, "does not exist")


def test_cache_rm_and_gc(workdir: Path) -> None:
    store = workdir / "outputs" / "store"
    (store / "0123456789abcdef").mkdir(parents=True)  # an entry a killed run left incomplete
    listed = run_reprlab("cache", "ls", cwd=workdir)
    assert "incomplete" in listed.stdout
    collected = run_reprlab("cache", "gc", cwd=workdir)
    assert collected.returncode == 0 and "0123456789abcdef" in collected.stdout
    assert not (store / "0123456789abcdef").exists()
    missing = run_reprlab("cache", "rm", "nothing-like-this", cwd=workdir)
    assert_one_line_error(missing, "no store entry matches")
