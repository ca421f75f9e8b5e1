"""What every analysis prints: at most 120 columns, with its key numbers (the demo's commands,
on synthetic data with tiny settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAST, run_reprlab

# (overrides, what the output must name): each of the demo's analyses, reduced.
COMMANDS = [
    (["analysis=train", "model=cnn_small_at"], ["train batches", "clean", "robust"]),
    (["analysis=evaluate", "analysis.examples=50", "analysis.eps=[0.05]", "attack.steps=2"],
     ["PGD-", "0.05"]),
    (["analysis=cka", "analysis.examples=40", "analysis.batch_size=40"],
     ["mean off-diagonal", "median"]),
    (["analysis=cka_panels", "ref=cnn_small_at", "analysis.examples=40", "analysis.batch_size=40"],
     ["mean same-layer", "vs"]),
    (["analysis=stitching", "ref=cnn_small_at", "analysis.epochs=1", "analysis.train_examples=64",
      "analysis.batch_size=32",
      "analysis.ls_examples=64", "analysis.examples=40", "attack.steps=2"],
     ["clean_acc", "robust_acc"]),
    (["analysis=stir", "ref=cnn_small_at", "analysis.examples=20", "analysis.steps=5",
      "analysis.repeats=1"], ["STIR(", "CKA("]),
]  # fmt: skip


@pytest.mark.slow
def test_every_analysis_prints_its_numbers_in_120_columns(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for overrides, expected in COMMANDS:
        done = run_reprlab(
            "run", *FAST, *overrides, f"paths.outputs={tmp_path}", cwd=tmp_path,
            env={"REPRLAB_STORE": str(store)}, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        # Everything on the terminal: the analysis's tables and the log lines (epoch lines
        # included; run paths are shown relative to the working directory).
        widest = max(done.stdout.splitlines(), key=len)
        assert len(widest) <= 120, f"{overrides[0]}: {len(widest)} columns: {widest}"
        for text in expected:
            assert text in done.stdout, f"{overrides[0]} does not print {text!r}"
