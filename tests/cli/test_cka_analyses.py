"""The CKA analyses end to end on tiny models and synthetic data: the files, and the numbers
recomputed from the stored weights and the seeded sample by an independent float64 CKA
(tests/reference_cka.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, run_reprlab
from reference_cka import cka_matrix

from reprlab.data import TensorLoader, dataset_info, load_tensors
from reprlab.io.store import load_weights
from reprlab.models import build_model

CKA = ["analysis.examples=120", "analysis.batch_size=40"]
RECIPE = [*FAST, "model.train.epochs=3", "model.snapshot_epochs=[1,2]"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory per module, so the store trains each tiny model once."""
    return tmp_path_factory.mktemp("cka")


def latest_run(workdir: Path, analysis: str) -> Path:
    return sorted((workdir / "outputs" / "runs" / analysis).glob("*/*"))[-1]


def stored_model(workdir: Path, run_dir: Path, role: str = "model", weights: str = "artifact.pt"):
    record = json.loads((run_dir / "run.json").read_text())
    key = record["models"][role]["key"]
    info = dataset_info("synthetic")
    meta = json.loads((workdir / "outputs" / "store" / key / "meta.json").read_text())
    model = build_model(
        meta["recipe"]["arch"],
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )
    model.load_state_dict(load_weights(workdir / "outputs" / "store" / key / weights))
    return model.eval()


def sample_batches(examples: int = 120, batch_size: int = 40) -> list[torch.Tensor]:
    """The run's evaluation sample: the seeded test subset, in the same batches."""
    images, labels = load_tensors("synthetic", "unused", "test", limit=examples, seed=0)
    loader = TensorLoader(images, labels, batch_size=batch_size, shuffle=False)
    return [x for x, _ in loader.epoch(0)]


def read_matrix(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0)


def activations(model, batches: list[torch.Tensor], taps="blocks") -> dict[str, list[np.ndarray]]:
    """Per tap, the list of per-batch activations (float64 NumPy) of ``model`` in eval mode."""
    per_tap: dict[str, list[np.ndarray]] = {}
    for x in batches:
        with torch.no_grad():
            acts = model.eval().features(x, taps)
        for tap, value in acts.items():
            per_tap.setdefault(tap, []).append(value.double().numpy())
    return per_tap


def reference(model_a, model_b=None, batches=None, taps="blocks") -> np.ndarray:
    """Independent minibatch unbiased CKA of every tap of model_a against every tap of model_b."""
    batches = sample_batches() if batches is None else batches
    rows = activations(model_a, batches, taps)
    cols = rows if model_b is None else activations(model_b, batches, taps)
    return cka_matrix(rows, cols)


def test_within_model_heatmap_matches_the_estimator(workdir: Path) -> None:
    result = run_reprlab("run", *RECIPE, *CKA, "analysis=cka", cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = latest_run(workdir, "cka")
    assert (run_dir / "cka_cnn_small.png").stat().st_size > 10_000
    table = read_matrix(run_dir / "cka_cnn_small.csv")
    assert list(table.index) == list(table.columns) == ["conv1", "conv2", "fc1", "logits"]
    expected = reference(stored_model(workdir, run_dir))
    np.testing.assert_allclose(table.to_numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(np.diag(table.to_numpy()), 1.0)
    summary = json.loads((run_dir / "cka.json").read_text())
    assert summary["examples"] == 120 and summary["batches"] == 3


def test_all_layer_taps(workdir: Path) -> None:
    result = run_reprlab("run", *RECIPE, *CKA, "analysis=cka", "analysis.taps=all", cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = latest_run(workdir, "cka")
    table = read_matrix(run_dir / "cka_cnn_small.csv")
    model = stored_model(workdir, run_dir)
    assert list(table.index) == list(model.layer_taps)
    assert list(table.index)[:3] == ["conv1.0", "conv1.1", "conv1.2"]  # conv, ReLU, max-pool
    np.testing.assert_allclose(table.to_numpy(), reference(model, taps="all"), atol=1e-10)


def test_cross_model_heatmap_and_same_layer_curve(workdir: Path) -> None:
    result = run_reprlab(
        "run",
        *RECIPE,
        *CKA,
        "analysis=cka",
        "ref=cnn_small",
        "ref.train.epochs=3",
        "ref.seed=1",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    run_dir = latest_run(workdir, "cka")
    name = "cka_cnn_small_vs_cnn_small"
    for suffix in (".csv", ".png", "_same_layer.csv", "_same_layer.png"):
        assert (run_dir / f"{name}{suffix}").exists(), suffix
    table = read_matrix(run_dir / f"{name}.csv")
    model, ref = stored_model(workdir, run_dir), stored_model(workdir, run_dir, "ref")
    np.testing.assert_allclose(table.to_numpy(), reference(model, ref), atol=1e-10)
    same = pd.read_csv(run_dir / f"{name}_same_layer.csv")
    np.testing.assert_allclose(same.cka.to_numpy(), np.diag(table.to_numpy()), atol=1e-12)
    assert not np.allclose(np.diag(table.to_numpy()), 1.0), "two seeds are not the same network"


def test_panels_reuse_one_estimate_for_all_three_blocks(workdir: Path) -> None:
    result = run_reprlab(
        "run",
        *RECIPE,
        *CKA,
        "analysis=cka_panels",
        "ref=cnn_small",
        "ref.train.epochs=3",
        "ref.seed=1",
        "analysis.inputs=adversarial",
        "attack.eps=0.05",
        "attack.steps=3",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    run_dir = latest_run(workdir, "cka_panels")
    assert (run_dir / "cka_panels.png").exists() and (run_dir / "same_layer.png").exists()
    # model and ref share a recipe name here, so the files carry the plain name for both roles
    cross = read_matrix(run_dir / "cka_cnn_small_vs_cnn_small.csv")
    model, ref = stored_model(workdir, run_dir), stored_model(workdir, run_dir, "ref")
    assert np.abs(cross.to_numpy() - reference(ref, model)).max() > 1e-3, "inputs were attacked"
    summary = json.loads((run_dir / "run.json").read_text())["summary"]
    assert "PGD-3" in summary["inputs"] and 0 <= summary["mean_cross"] <= 1


def test_across_training_compares_every_snapshot_with_the_final_weights(workdir: Path) -> None:
    result = run_reprlab("run", *RECIPE, *CKA, "analysis=cka_epochs", cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = latest_run(workdir, "cka_epochs")
    for epoch in (1, 2, 3):
        assert (run_dir / f"cka_epoch_{epoch:03d}.png").exists()
    to_final = pd.read_csv(run_dir / "cka_to_final.csv", index_col=0)
    assert list(to_final.index) == ["epoch 1", "epoch 2"]
    first = stored_model(workdir, run_dir, weights="snapshots/epoch_001.pt")
    final = stored_model(workdir, run_dir)
    np.testing.assert_allclose(
        to_final.loc["epoch 1"].to_numpy(), np.diag(reference(first, final)), atol=1e-10
    )
    within = read_matrix(run_dir / "cka_epoch_001.csv")
    np.testing.assert_allclose(within.to_numpy(), reference(first), atol=1e-10)

    missing = run_reprlab(
        "run", *RECIPE, *CKA, "analysis=cka_epochs", "analysis.epochs=[5]", cwd=workdir
    )
    assert missing.returncode == 2 and "snapshot_epochs does not keep" in missing.stderr
