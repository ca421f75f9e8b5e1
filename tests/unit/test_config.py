"""Composition of every option of every config group, the ref group, and value validation."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from reprlab.analyses import RUNNERS, get_analysis
from reprlab.cli.run import compose_config
from reprlab.data import available_datasets
from reprlab.errors import ReprlabError
from reprlab.io.store import store_key
from reprlab.models import available_archs
from reprlab.run.config import (
    GROUPS,
    attack_spec,
    dataset_spec,
    group_options,
    recipe,
)
from reprlab.run.recipes import model_identity

NEEDS_REF = {"cka_panels", "stir", "stitching"}


def options():
    for group in GROUPS:
        if group == "ref":
            continue
        for option in group_options(group):
            yield group, option


@pytest.mark.parametrize(("group", "option"), list(options()))
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "analysis" and option in NEEDS_REF:
        overrides.append("ref=cnn_small")
    if group == "analysis" and option == "cka_epochs":  # needs an epoch before the final one
        overrides.append("model.train.epochs=2")
    cfg = compose_config(overrides)
    spec = recipe(cfg.model)
    assert spec.arch in available_archs()
    assert dataset_spec(cfg.dataset).name in available_datasets()
    attack = attack_spec(cfg.attack)
    assert attack.eps >= 0
    assert cfg.analysis.name in RUNNERS
    get_analysis(cfg.analysis.name).settings(cfg)


def test_option_files_use_their_own_name() -> None:
    for option in group_options("model"):
        assert compose_config([f"model={option}"]).model.name == option
    for option in group_options("dataset"):  # or a fixed subset of one (fashion_mnist_12k)
        node = compose_config([f"dataset={option}"]).dataset
        assert node.name == option or (option.startswith(f"{node.name}_") and node.train_limit)


def test_ref_group_offers_exactly_the_model_recipes() -> None:
    assert group_options("ref") == group_options("model")
    for option in ("cnn_small_at", "resnet18_at_l2"):
        cfg = compose_config([f"ref={option}"])
        model = compose_config([f"model={option}"]).model
        assert OmegaConf.to_container(cfg.ref) == OmegaConf.to_container(model)


def test_attack_radius_follows_the_dataset_unless_set() -> None:
    assert attack_spec(compose_config(["dataset=mnist"]).attack).eps == pytest.approx(0.3)
    assert attack_spec(compose_config(["dataset=cifar10"]).attack).eps == pytest.approx(8 / 255)
    cfg = compose_config(["dataset=cifar10", "attack=pgd_l2"])
    assert attack_spec(cfg.attack).eps == pytest.approx(0.5)
    assert attack_spec(compose_config(["attack.eps=0.1"]).attack).eps == pytest.approx(0.1)


def test_recipes_follow_the_reference_hyperparameters() -> None:
    madry = recipe(compose_config(["model=cnn_at"]).model)
    assert madry.adversary is not None
    assert (madry.adversary.eps, madry.adversary.step_size, madry.adversary.steps) == (
        0.3,
        0.01,
        40,
    )
    rice = recipe(compose_config(["model=resnet18_at"]).model)
    assert rice.adversary.eps == pytest.approx(8 / 255)
    assert rice.adversary.step_size == pytest.approx(2 / 255)
    assert (rice.train.lr, rice.train.momentum, rice.train.weight_decay) == (0.1, 0.9, 5e-4)
    l2 = recipe(compose_config(["model=resnet18_at_l2"]).model)
    assert (l2.adversary.norm, l2.adversary.eps) == ("l2", 0.5)


def test_store_key_covers_exactly_what_changes_the_weights() -> None:
    def key(*overrides: str) -> str:
        cfg = compose_config(list(overrides))
        return store_key(model_identity(recipe(cfg.model), dataset_spec(cfg.dataset)))

    base = key("model=cnn_small")
    # Not part of the weights: paths, device, logging, evaluation, snapshots, the recipe's name.
    assert (
        key("model=cnn_small", "paths.outputs=/elsewhere", "device=cpu", "progress=false") == base
    )
    assert key("model=cnn_small", "monitor.examples=10", "attack.eps=0.1") == base
    assert key("model=cnn_small", "model.snapshot_epochs=[1]", "model.name=renamed") == base
    # Part of the weights: architecture, dataset, recipe, adversary, seed.
    changed = {
        key("model=cnn_small_at"),
        key("model=cnn_small", "dataset=fashion_mnist"),
        key("model=cnn_small", "dataset.train_limit=1000"),
        key("model=cnn_small", "model.seed=1"),
        key("model=cnn_small", "model.train.lr=0.01"),
        key("model=cnn_small", "model.arch=cnn_madry"),
    }
    assert base not in changed and len(changed) == 6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attack.eps=-1", "attack.eps=-1.0 is invalid: it must be >= 0"),
        ("attack.norm=l3", "attack.norm='l3' is invalid: choose one of linf, l2"),
        ("model.train.epochs=0", "model.train.epochs=0 is invalid: it must be > 0"),
        ("model.train.epochs=abc", "model.train.epochs"),
        ("model.train.schedule=linear", "model.train.schedule='linear' is invalid"),
        ("model.snapshot_epochs=[5]", "model.snapshot_epochs has [5] outside 1..1"),
        ("model.arch=resnet19", "model.arch='resnet19' is invalid"),
        ("analysis.examples=0", "analysis.examples=0 is invalid"),
    ],
)
def test_bad_values_raise_one_clear_line(override: str, message: str) -> None:
    from reprlab.analyses import validate_run

    cfg = compose_config([override, "dataset=synthetic"])
    with pytest.raises(ReprlabError) as caught:
        validate_run(cfg)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
