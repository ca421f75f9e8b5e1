"""Recipes know their dataset: a run without ``dataset=`` uses the model's; recipes meant for
different datasets ask for ``dataset=``; an explicit choice is recorded; missing data: one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, reprlab_env, run_reprlab

from reprlab.cli.run import compose_config
from reprlab.data import available_datasets
from reprlab.errors import ReprlabError
from reprlab.run.config import (
    check_recipe_for,
    dataset_choice,
    dataset_spec,
    group_options,
    recipe,
    recipe_home_dataset,
)

FAMILIES = {"cnn": "mnist", "resnet": "cifar10", "preact": "cifar10", "vgg": "cifar10",
            "wrn": "cifar10", "imagenet_": "imagenet", "findings_std_mnist": "mnist",
            "findings": "fashion_mnist", "rb_": "cifar10"}  # fmt: skip


def choice_of(*overrides: str):
    cfg = compose_config(list(overrides), with_hydra=True)
    return cfg, dataset_choice(cfg, cfg.hydra.runtime.choices, list(overrides))


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("reprlab: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize("name", group_options("model"))
def test_every_recipe_names_a_dataset_it_can_train_on(name: str) -> None:
    home = recipe_home_dataset(name)
    assert home in available_datasets()
    expected = "fashion_mnist" if name == "cnn_small_fashion" else None
    expected = "cifar100" if name.startswith("rb_") and "cifar100" in name else expected
    expected = expected or next(v for k, v in FAMILIES.items() if name.startswith(k))
    assert home == expected
    cfg, choice = choice_of(f"model={name}")
    assert cfg.dataset.name == home and choice.source == "recipe"
    # the recipe validates on its own dataset (architecture, radii, batch within the split)
    check_recipe_for(recipe(cfg.model), "model", dataset_spec(cfg.dataset))


def test_a_run_without_dataset_uses_the_models_and_an_explicit_one_is_kept() -> None:
    cfg, choice = choice_of("analysis=cka", "model=resnet18_at")
    assert cfg.dataset.name == "cifar10" and cfg.dataset.eps_linf == pytest.approx(8 / 255)
    assert choice.describe().startswith("dataset: cifar10 (the dataset of model=resnet18_at")
    cfg, choice = choice_of("model=resnet18", "dataset=mnist")
    assert cfg.dataset.name == "mnist" and choice.source == "command line"
    assert choice.record() == {
        "name": "mnist",
        "chosen_by": "command line",
        "recipes_meant_for": {"model=resnet18": "cifar10"},
    }
    assert "model=resnet18 is meant for cifar10" in choice.describe()


@pytest.mark.parametrize(
    "overrides",
    [
        ("analysis=cka_panels", "ref=resnet18"),
        ("analysis=stitching", "ref=resnet18"),
        ("model=resnet18_at", "ref=cnn_small"),
        ("pair=demo_fashion_rob",),
    ],
)
def test_recipes_meant_for_different_datasets_ask_for_one(overrides: tuple[str, ...]) -> None:
    with pytest.raises(ReprlabError, match="meant for different datasets") as err:
        choice_of(*overrides)
    assert str(err.value).count("dataset=") == 2
    _, choice = choice_of(*overrides, "dataset=mnist")  # an explicit choice settles it
    assert choice.source == "command line"


@pytest.mark.parametrize("name", group_options("experiment"))
def test_every_experiment_pins_its_dataset(name: str) -> None:
    path = REPO / "conf" / "experiment" / f"{name}.yaml"
    assert "override /dataset:" in path.read_text()
    _, choice = choice_of(f"experiment={name}")
    assert choice.source == f"experiment {name}"


def test_disagreeing_recipes_on_the_command_line_write_nothing(tmp_path: Path) -> None:
    result = run_reprlab("run", "analysis=cka_panels", "ref=resnet18", cwd=tmp_path)
    one_line_error(result, "model=cnn_small is meant for mnist", "dataset=cifar10")
    assert list(tmp_path.iterdir()) == []


def test_headline_command_without_cifar10_names_the_download(tmp_path: Path) -> None:
    """The README's first command, literally, in an empty directory (no REPRLAB_* set)."""
    result = run_reprlab("run", "analysis=cka", "model=resnet18_at", cwd=tmp_path)
    one_line_error(result, "dataset 'cifar10' not found", "`reprlab download cifar10`")
    assert list(tmp_path.iterdir()) == []


# --- the headline command on synthetic CIFAR-shaped data --------------------------------------


def write_cifar10(root: Path, train: int, test: int) -> None:
    """Random images in torchvision's CIFAR-10 layout (cifar-10-batches-py, pickled batches)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = {**{f"data_batch_{i}": train // 5 for i in range(1, 6)}, "test_batch": test}
    for name, n in sizes.items():
        batch = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


# torchvision checks the official files' md5s; the synthetic files only need to exist.
WITHOUT_MD5 = (
    "import os, sys, torchvision.datasets.cifar as c; "
    "c.check_integrity = lambda path, md5=None: os.path.isfile(path); "
    "from reprlab.cli.app import main; sys.argv[0] = 'reprlab'; sys.exit(main())"
)


@pytest.mark.slow
def test_headline_command_on_synthetic_cifar_names_the_dataset_and_its_cost(
    tmp_path: Path,
) -> None:
    """``reprlab run analysis=cka model=resnet18_at`` with CIFAR-shaped data in place: the first
    line names the dataset, the cost estimate comes within 30 s of training's start. The run is
    stopped there (its 200 epochs are the point of the estimate)."""
    data = tmp_path / "data"
    write_cifar10(data, train=1280, test=200)
    env = {**reprlab_env(), "REPRLAB_DATA": str(data), "REPRLAB_STORE": str(tmp_path / "store")}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_MD5, "run", "analysis=cka", "model=resnet18_at",
         "progress=false"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[tuple[float, str]] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip()))
            if "resnet18_at: about" in line or time.monotonic() - started > 300:
                break
    finally:
        process.terminate()
        process.wait(timeout=60)
    text = "\n".join(f"{t:6.1f}s {line}" for t, line in lines)
    print(f"\n{text}")
    assert lines[0][1].startswith("dataset: cifar10 (the dataset of model=resnet18_at"), text
    training = next(t for t, line in lines if "training resnet18_at (" in line)
    estimate = next(t for t, line in lines if "resnet18_at: about" in line)
    # 1,280 images less the 1,000 of the validation split, in whole batches of 128
    assert "on cifar10: 256 images x 200 epochs, 1 + 10 adversary passes a batch" in text
    print(f"training line -> estimate: {estimate - training:.1f} s")
    assert estimate - training < 30, text
    run_json = next((tmp_path / "outputs" / "runs" / "cka").glob("*/*/run.json"))
    record = json.loads(run_json.read_text())
    assert record["dataset"] == "cifar10"
    assert record["dataset_choice"]["chosen_by"] == "recipe"
    assert os.path.isdir(tmp_path / "store")
