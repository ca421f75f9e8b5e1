"""Robust training on real MNIST (slow): the recipes' adversarial training buys robustness, and
AutoAttack (the authors' code) is at least as strong as reprlab's PGD-20 on trained models.

The models are the demo's ``cnn_small`` recipes (the same architecture, optimiser, adversary and
β/λ), trained for one epoch on a seeded 12,000-image subset so the module runs in minutes on a
2-core CPU; the full-budget numbers are in the README.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from reprlab.cli.run import compose_config
from reprlab.core.attacks import PGD, correct_under
from reprlab.core.autoattack import AutoAttack
from reprlab.core.training_methods import train_classifier
from reprlab.data import (
    TensorLoader,
    check_available,
    dataset_info,
    default_data_root,
    load_tensors,
)
from reprlab.errors import ReprlabError
from reprlab.run.config import recipe
from reprlab.run.recipes import build_for, train_settings

pytestmark = pytest.mark.slow

TRAIN_IMAGES, TEST_IMAGES, EPS = 12_000, 500, 0.2
RECIPES = ("cnn_small", "cnn_small_at", "cnn_small_trades", "cnn_small_mart")


@pytest.fixture(scope="module")
def mnist() -> dict[str, torch.Tensor]:
    root = default_data_root()
    try:
        check_available("mnist", root)
    except ReprlabError as err:
        pytest.skip(f"MNIST not on disk: {err}")
    x, y = load_tensors("mnist", root, "train", limit=TRAIN_IMAGES, seed=0)
    x_test, y_test = load_tensors("mnist", root, "test", limit=TEST_IMAGES, seed=1)
    return {"x": x, "y": y, "x_test": x_test.float() / 255, "y_test": y_test}


@pytest.fixture(scope="module")
def trained(mnist) -> dict[str, torch.nn.Module]:
    """The four demo recipes, each trained for one epoch on the same images in the same order."""
    models = {}
    for name in RECIPES:
        spec = recipe(compose_config([f"model={name}"]).model)
        model = build_for(spec, dataset_info("mnist"))
        settings = replace(train_settings(spec), epochs=1)
        loader = TensorLoader(mnist["x"], mnist["y"], batch_size=spec.train.batch_size,
                              shuffle=True, seed=0)  # fmt: skip
        train_classifier(model, loader, settings, device=torch.device("cpu"), progress=False)
        models[name] = model.eval()
    return models


def _accuracy(model, mnist, attack, seed: int = 0) -> float:
    batches = [(mnist["x_test"], mnist["y_test"])]
    generator = torch.Generator().manual_seed(seed)
    correct = correct_under(model, batches, attack, generator=generator, progress=False)
    return correct.float().mean().item()


def _pgd20(eps: float) -> PGD:  # reprlab's evaluation default (conf/attack/pgd_linf.yaml)
    return PGD(eps=eps, step_size=2.5 * eps / 20, steps=20, random_start=True, keep_best=True,
               clean_first=True)  # fmt: skip


def test_adversarial_recipes_buy_robustness(trained, mnist) -> None:
    clean = {name: _accuracy(model, mnist, None) for name, model in trained.items()}
    robust = {name: _accuracy(model, mnist, _pgd20(EPS)) for name, model in trained.items()}
    print(f"clean {clean}\nPGD-20 at eps={EPS}: {robust}")
    # measured (one epoch, 12,000 images): clean .954 / .884 / .930 / .780, PGD-20 .116 / .442 /
    # .550 / .430 for standard / PGD-AT / TRADES / MART
    assert robust["cnn_small"] < 0.2  # the standard model breaks
    for name in ("cnn_small_at", "cnn_small_trades", "cnn_small_mart"):
        assert clean[name] > 0.7, name
        assert robust[name] > robust["cnn_small"] + 0.25, name
    # TRADES trades robustness against clean accuracy through β: its robust accuracy is a
    # larger share of its clean accuracy than the standard model's
    assert robust["cnn_small_trades"] / clean["cnn_small_trades"] > 0.4


@pytest.mark.parametrize(("name", "eps"), [("cnn_small", 0.1), ("cnn_small_at", EPS)])
def test_autoattack_is_at_least_as_strong_as_pgd(trained, mnist, name, eps) -> None:
    model = trained[name]
    pgd = _accuracy(model, mnist, _pgd20(eps))
    x, y = mnist["x_test"][:200], mnist["y_test"][:200]
    pgd_same = (
        correct_under(model, [(x, y)], _pgd20(eps), generator=torch.Generator().manual_seed(0),
                      progress=False).float().mean().item()
    )  # fmt: skip
    result = AutoAttack(eps=eps, seed=0, progress=False).run(model, x, y, progress=False)
    auto = result.correct.float().mean().item()
    apgd_ce = result.stages["apgd-ce"]
    print(f"{name} eps={eps}: PGD-20 {pgd:.3f} (500), {pgd_same:.3f} (200); AutoAttack {auto:.3f}, "
          f"stages {result.stages}")  # fmt: skip
    assert auto <= pgd_same
    assert apgd_ce <= pgd_same + 0.01  # APGD-CE alone is about as strong as PGD-20, or stronger
    stages = list(result.stages.values())
    assert stages == sorted(stages, reverse=True)
    assert not result.warnings
