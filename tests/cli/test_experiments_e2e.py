"""Every experiment in conf/experiment and every model recipe in conf/model, run end to end through
``reprlab run`` (in-process, the same ``main`` as the console script) on data of its own shape at a
tiny budget: one epoch on a few dozen images, one or two attack/optimiser steps, a handful of
examples. Each run must finish (exit 0, run.json ``status: completed``) and write its analysis's
files.

Data: CIFAR-10/100 and (Restricted) ImageNet are written by :mod:`fake_data` in torchvision's
on-disk layout, so the real loaders read them; MNIST and Fashion-MNIST are the real files under
``$REPRLAB_DATA`` (tests needing them are skipped where they are absent). All but the cheapest
(``demo`` and recipe ``cnn_small``: seconds) are marked ``slow``: the CIFAR- and
ImageNet-scale ones take minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from fake_data import fake_cifar, fake_imagenet, skip_torchvision_md5

from reprlab.cli.app import main
from reprlab.cli.run import compose_config
from reprlab.run.config import config_dir, group_options, recipe

DATA = Path(os.environ.get("REPRLAB_DATA", "outputs/data")).resolve()
HAVE_MNIST = (DATA / "MNIST" / "raw").is_dir()
HAVE_FASHION = (DATA / "FashionMNIST" / "raw").is_dir()

COMMON = [
    "progress=false", "device=cpu", "num_workers=0", "dataset.train_limit=64",
    "monitor.examples=8", "monitor.batch_size=8", "monitor.attack_steps=1", "attack.steps=2",
]  # fmt: skip

# Tiny settings of each study's own parameters (the experiment file sets the rest).
EVALUATE = ["analysis.examples=16", "analysis.batch_size=16"]
CKA = ["analysis.examples=16", "analysis.batch_size=16"]
INVERSION = [
    "analysis.batch_size=4", "analysis.inversion.examples=4", "analysis.inversion.steps=2",
    "analysis.inversion.ood_examples=2", "analysis.inversion.show=2",
    "analysis.repr_distance.pairs=2", "analysis.repr_distance.steps=2",
    "analysis.repr_distance.show=2", "analysis.features.count=2", "analysis.features.pool=8",
    "analysis.feature_vis.steps=2", "analysis.feature_vis.from_test=1",
    "analysis.feature_vis.top_k=2", "analysis.feature_manip.images=2",
    "analysis.feature_manip.steps=2", "analysis.feature_manip.show=2",
    "analysis.interpolation.pairs=2", "analysis.interpolation.points=3",
    "analysis.interpolation.steps=2",
]  # fmt: skip
INVERSION_FILES = [
    "inversion.csv", "repr_distance.csv", "feature_vis.csv", "feature_manip.csv",
    "interpolation.csv", "inversion_summary.json",
]  # fmt: skip


def inversion(eps: str, show_eps: str) -> list[str]:
    """The tiny inversion study with the distance curve at radii ``eps`` (shown: ``show_eps``)."""
    return [
        *INVERSION,
        f"analysis.repr_distance.eps={eps}",
        f"analysis.repr_distance.show_eps={show_eps}",
    ]


STITCHING = [
    "analysis.epochs=1", "analysis.batch_size=16", "analysis.train_examples=32",
    "analysis.ls_examples=32", "analysis.examples=16", "analysis.eval_batch_size=16",
    "analysis.adversary.steps=1",
]  # fmt: skip
VULNERABILITY = [
    "analysis.repeats=1", "analysis.train_examples=32", "analysis.examples=16",
    "analysis.batch_size=16", "analysis.search_steps=1", "analysis.critic_epochs=1",
    "analysis.critic_units=16", "analysis.critic_channels=[4,8]", "analysis.head_epochs=1",
    "analysis.head_attack_steps=1",
]  # fmt: skip
STIR = ["analysis.examples=8", "analysis.steps=2", "analysis.repeats=1", "analysis.batch_size=8"]


def tiny_stir_models(*entries: str) -> str:
    """``analysis.models=[...]`` with each entry trained for one epoch (``entries``: recipe or
    ``recipe:seed:name``)."""
    tiny = "train:{epochs:1,batch_size:16},snapshot_epochs:[1],validation:null"
    out = []
    for entry in entries:
        name, _, rest = entry.partition(":")
        seed, _, label = rest.partition(":")
        extra = f",seed:{seed},name:{label}" if seed else ""
        out.append(f"{{recipe:{name}{extra},{tiny}}}")
    return f"analysis.models=[{','.join(out)}]"


# experiment -> (data it needs, extra overrides, files its run directory must hold, slow?)
EXPERIMENTS: dict[str, tuple[str, list[str], list[str], bool]] = {
    "demo": ("mnist", [*EVALUATE, "analysis.eps=[0.1]"], ["accuracy.csv"], False),
    "demo_cka": ("mnist", CKA, ["cka.json"], True),
    "inversion_demo": (
        "mnist",
        inversion("[1.0,2.0]", "[1.0]"),
        INVERSION_FILES,
        True,
    ),
    "repr_distance_fashion": (
        "fashion_mnist",
        inversion("[1.0,2.0]", "[2.0]"),
        ["repr_distance.csv"],
        True,
    ),
    "stir_demo": (
        "mnist",
        [*STIR, tiny_stir_models("cnn_small", "cnn_small:1:cnn_small_s1", "cnn_small_at")],
        ["stir.json", "stir_matrix.csv"],
        True,
    ),
    "stitching_demo": (
        "mnist+fashion_mnist",
        STITCHING,
        ["stitching.csv", "stitching.json"],
        True,
    ),
    "vulnerability_demo": (
        "mnist",
        VULNERABILITY,
        ["vulnerability.csv", "vulnerability.json"],
        True,
    ),
    "vulnerability_mnist": ("mnist", VULNERABILITY, ["vulnerability.csv"], True),
    # The paper-scale studies: CIFAR-10 ResNet-18/50s, Restricted ImageNet ResNet-50s.
    "stitching_cifar10": ("cifar10", STITCHING, ["stitching.csv", "stitching.json"], True),
    "stir_cifar_table1": (
        "cifar10",
        [
            *STIR,
            tiny_stir_models(
                "resnet18",
                "resnet18:1:resnet18_s1",
                "resnet18_at_l2",
                "resnet18_at_l2:1:resnet18_at_l2_s1",
            ),
        ],
        ["stir.json", "stir_matrix.csv"],
        True,
    ),
    "inversion_cifar10": (
        "cifar10+cifar100",
        inversion("[0.5,2.0]", "[0.5]"),
        INVERSION_FILES,
        True,
    ),
    "inversion_restricted_imagenet": (
        "restricted_imagenet",
        inversion("[4.0,16.0]", "[4.0]"),
        INVERSION_FILES,
        True,
    ),
    "vulnerability_cifar10": ("cifar10", VULNERABILITY, ["vulnerability.csv"], True),
}
SWEEPS = {"stitching_cifar10", "stitching_demo"}  # the file pins a sweep over pair=: run -m


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def data_root(tmp_path: Path, needs: str, monkeypatch) -> Path:
    """A data root holding what ``needs`` names ('+'-joined), fakes written, real MNIST linked."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    for name in needs.split("+"):
        if name in ("mnist", "fashion_mnist"):
            folder = "MNIST" if name == "mnist" else "FashionMNIST"
            if not (DATA / folder / "raw").is_dir():
                pytest.skip(f"{name} not on disk under REPRLAB_DATA={DATA}")
            if not (root / folder).exists():
                (root / folder).symlink_to(DATA / folder)
        elif name in ("cifar10", "cifar100"):
            skip_torchvision_md5(monkeypatch)
            fake_cifar(root, name)
        elif name in ("imagenet", "restricted_imagenet"):
            fake_imagenet(root, restricted=name == "restricted_imagenet")
    return root


def tiny_models(overrides: list[str]) -> list[str]:
    """One epoch, no validation split, one adversary step for the run's model and ref."""
    cfg = compose_config(overrides)
    out = []
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        out += [
            f"{where}.train.epochs=1", f"{where}.train.batch_size=16",
            f"{where}.snapshot_epochs=[1]", f"{where}.validation=null",
        ]  # fmt: skip
        if spec.adversary is not None:
            out.append(f"{where}.adversary.steps=1")
    return out


def run_dirs(outputs: Path) -> list[Path]:
    return sorted(path.parent for path in (outputs / "runs").rglob("run.json"))


def check_run(run: Path, files: list[str]) -> None:
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed", record.get("status")
    for name in files:
        assert list(run.rglob(name)), f"{run} has no {name}: {sorted(run.iterdir())}"


# The findings study's experiment files run end to end, all of them in order, in
# tests/cli/test_findings_pipeline.py (slow): each needs the models the one before trained.
FINDINGS_PIPELINE = {name for name in group_options("experiment") if name.startswith("findings_")}


def experiment_params() -> list:
    listed = set(EXPERIMENTS) | FINDINGS_PIPELINE
    assert listed == set(group_options("experiment")), "add the new experiment here"
    return [
        pytest.param(name, marks=pytest.mark.slow) if slow else name
        for name, (_, _, _, slow) in EXPERIMENTS.items()
    ]


@pytest.mark.parametrize("experiment", experiment_params())
def test_experiment_runs_end_to_end(experiment, tmp_path: Path, monkeypatch) -> None:
    needs, extra, files, _ = EXPERIMENTS[experiment]
    data = data_root(tmp_path, needs, monkeypatch)
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    base = [f"experiment={experiment}", f"paths.outputs={outputs}", f"paths.data={data}", *COMMON]
    dataset = needs.split("+")[0]
    if dataset not in ("mnist",):
        base.append(f"dataset={dataset}")  # explicit, whatever the recipes default to
    sweep = experiment in SWEEPS
    models = [] if sweep else tiny_models(base)
    if sweep:  # the pairs differ in their recipes; shrink every recipe a pair can name
        models = [
            f"{where}.{key}" for where in ("model", "ref")
            for key in ("train.epochs=1", "train.batch_size=16", "snapshot_epochs=[1]",
                        "validation=null")
        ]  # fmt: skip
    code = main(["run", *(["-m"] if sweep else []), *base, *models, *extra])
    assert code == 0
    runs = run_dirs(outputs)
    expected_runs = len(compose_config([f"experiment={experiment}"], with_hydra=True).hydra
                        .sweeper.params.pair.split(",")) if sweep else 1  # fmt: skip
    assert len(runs) == expected_runs
    for run in runs:
        check_run(run, files)


# --- every model recipe ------------------------------------------------------------------------

# The dataset each recipe is meant for (its prefix), and whether a tiny training is seconds (fast)
# or minutes (slow) on 2 CPU cores. RobustBench recipes (rb_*) are imported, never trained: their
# import is tested in test_zoo_import.py.
RECIPE_DATA = {"cnn": "mnist", "imagenet": "imagenet"}
FAST_RECIPES = {"cnn_small"}


def recipe_params() -> list:
    params = []
    for name in group_options("model"):
        if name.startswith("rb_"):
            continue
        marks = () if name in FAST_RECIPES else (pytest.mark.slow,)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def recipe_dataset(name: str) -> str:
    spec = recipe(compose_config([f"model={name}"]).model)
    if spec.dataset is not None:
        return spec.dataset
    return next((d for prefix, d in RECIPE_DATA.items() if name.startswith(prefix)), "cifar10")


@pytest.mark.parametrize("name", recipe_params())
def test_recipe_trains_end_to_end(name, tmp_path: Path, monkeypatch) -> None:
    """``analysis=train`` for one epoch on its own dataset's shape: the model lands in the
    store with its weights, metrics and snapshot, and the run records it."""
    dataset = recipe_dataset(name)
    data = data_root(tmp_path, dataset, monkeypatch)
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    base = [
        "analysis=train", f"model={name}", f"dataset={dataset}", f"paths.outputs={outputs}",
        f"paths.data={data}", *COMMON,
    ]  # fmt: skip
    assert main(["run", *base, *tiny_models(base)]) == 0
    (run,) = run_dirs(outputs)
    check_run(run, [])
    record = json.loads((run / "run.json").read_text())
    assert record["models"]["model"]["trained_now"] is True
    (entry,) = [p for p in (outputs / "store").iterdir() if (p / "COMPLETE").exists()]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["dataset"] == dataset and meta["epochs_trained"] == 1


def test_the_recipe_and_experiment_lists_are_complete() -> None:
    """A new experiment file or recipe gets a test here (or fails this one)."""
    assert set(EXPERIMENTS) | FINDINGS_PIPELINE == set(group_options("experiment"))
    files = {p.stem for p in (config_dir() / "model").glob("*.yaml")}
    assert files == set(group_options("model"))
