"""The public API: what a notebook calls gives what the command line gives, on the same inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, reprlab_env, run_reprlab

import reprlab
from reprlab import api
from reprlab.core.attacks import PGD, robust_accuracy
from reprlab.errors import ReprlabError
from reprlab.models import build_model

# One epoch of the small CNN on the synthetic dataset: the models every test here shares.
TINY = ["model.train.epochs=1", "model.snapshot_epochs=[1]", "monitor.examples=100",
        "monitor.attack_steps=2"]  # fmt: skip


@pytest.fixture(scope="module")
def cli_cka(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``reprlab run analysis=cka model=cnn_small ref=cnn_small_at`` on synthetic data."""
    root = tmp_path_factory.mktemp("api")
    out = root / "out"
    args = [
        "run", "analysis=cka", "dataset=synthetic", "model=cnn_small", "ref=cnn_small_at",
        *TINY, "ref.train.epochs=1", "ref.snapshot_epochs=[1]", "progress=false",
        "analysis.examples=96", "analysis.batch_size=32", f"paths.outputs={out}",
    ]  # fmt: skip
    result = run_reprlab(*args, cwd=root)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p.parent for p in (out / "runs").rglob("run.json")]
    return {"root": root, "store": out / "store", "run": run_dir}


def test_import_is_light_and_lists_the_api() -> None:
    """``import reprlab`` does not import torch (the CLI's --help stays fast); the API functions
    are attributes of the package, loaded on first use."""
    code = "import sys, reprlab; print('torch' in sys.modules); print(callable(reprlab.cka))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=reprlab_env(),
        cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert set(api.__all__) == set(dir(reprlab)) - {"ReprlabError", "__version__"}


def test_cka_of_two_stored_recipes_equals_the_cli_csv(cli_cka: dict) -> None:
    """Five lines from a fresh session give the CLI's matrix to 1e-12."""
    store = cli_cka["store"]
    x, _ = reprlab.images("synthetic", examples=96, seed=0)
    a = reprlab.load_model("cnn_small", "synthetic", store=store, overrides=TINY)
    b = reprlab.load_model("cnn_small_at", "synthetic", store=store, overrides=TINY)
    matrix = reprlab.cka(a, b, x, batch_size=32)
    (csv,) = [p for p in cli_cka["run"].glob("cka_*.csv") if "same_layer" not in p.name]
    expected = pd.read_csv(csv, index_col=0)
    assert list(matrix.index) == list(expected.index)
    assert list(matrix.columns) == list(expected.columns)
    assert np.abs(matrix.to_numpy() - expected.to_numpy()).max() <= 1e-12
    assert matrix.attrs["examples"] == 96 and "unbiased HSIC" in matrix.attrs["estimator"]


def test_load_model_never_trains_unless_asked(cli_cka: dict, tmp_path: Path) -> None:
    with pytest.raises(ReprlabError) as err:
        reprlab.load_model("cnn_small", "synthetic", store=tmp_path / "empty", overrides=TINY)
    message = str(err.value)
    assert "\n" not in message and "train=True" in message and "not in the store" in message
    assert not (tmp_path / "empty").exists()
    # Another seed is another recipe: not in the shared store either.
    with pytest.raises(ReprlabError, match="not in the store"):
        reprlab.load_model(
            "cnn_small", "synthetic", store=cli_cka["store"], overrides=[*TINY, "model.seed=7"]
        )


def test_list_models_and_open_run(cli_cka: dict) -> None:
    models = reprlab.list_models(cli_cka["store"])
    assert set(models["name"]) >= {"cnn_small", "cnn_small_at"}
    assert (models.loc[models["name"] == "cnn_small", "adversary"] == "standard").all()
    run = reprlab.open_run(cli_cka["run"])
    assert run.status == "completed"
    assert run.config["analysis"]["name"] == "cka"
    assert any(name.startswith("cka_") for name in run.tables)
    assert run.figures


def test_evaluate_attacks_at_the_radii_asked(cli_cka: dict) -> None:
    """Clean and PGD accuracy per radius; the numbers are robust_accuracy's own."""
    model = reprlab.load_model("cnn_small", "synthetic", store=cli_cka["store"], overrides=TINY)
    x, y = reprlab.images("synthetic", examples=64, seed=1)
    table = reprlab.evaluate(model, (x, y), eps=[0.05, 0.1], steps=5, seed=3)
    assert list(table["eps"]) == [0.0, 0.05, 0.1]
    robust = table["robust_acc"].to_numpy()
    assert robust[0] >= robust[1] >= robust[2]  # a real attack lowers accuracy
    assert robust[2] < robust[0]
    generator = torch.Generator().manual_seed(3)
    direct = robust_accuracy(
        model, [(x, y)], PGD(norm="linf", eps=0.1, step_size=0.05, steps=5), generator=generator,
        progress=False,
    )  # fmt: skip
    assert robust[2] == pytest.approx(direct)


def test_data_forms_give_the_same_cka() -> None:
    """A tensor, an (x, y) pair, a Dataset and a DataLoader are the same data."""
    torch.manual_seed(0)
    model = build_model(
        "cnn_small", num_classes=10, in_channels=1, image_size=16, mean=[0.5], std=[0.25]
    )
    x = torch.rand(40, 1, 16, 16)
    y = torch.randint(0, 10, (40,))
    dataset = torch.utils.data.TensorDataset(x, y)
    forms = [x, (x, y), dataset, torch.utils.data.DataLoader(dataset, batch_size=20)]
    results = [api.cka(model, None, data, batch_size=20).to_numpy() for data in forms]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-12)
    assert np.allclose(np.diag(results[0]), 1.0)
    with pytest.raises(ReprlabError, match="tensor"):
        api.cka(model, None, torch.rand(3, 16, 16))
