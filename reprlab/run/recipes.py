"""What a recipe means: the fields that identify a trained model, and config → plain settings.

Glue between the typed config (:mod:`reprlab.run.config`) and computation: a model recipe's store
identity, its training settings and adversary, and the attack an analysis uses, as the plain
objects the computation modules take.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from reprlab.core.attacks import PGD, Attack
from reprlab.core.autoattack import AutoAttack
from reprlab.core.training_methods import TrainSettings
from reprlab.data import DatasetInfo, dataset_info
from reprlab.models import Classifier, architecture_version, build_model
from reprlab.run.config import AdversarySpec, AttackSpec, AutoAttackSpec, DatasetSpec, ModelRecipe


def model_identity(spec: ModelRecipe, dataset: DatasetSpec) -> dict[str, Any]:
    """The fields that determine a model's weights: its store key is a hash of exactly these.

    ``arch_version`` is :func:`reprlab.models.architecture_version` of the architecture as built
    for this dataset: a change to the architecture's layers gives a new key, so weights trained
    for the old definition are never loaded into the new one.
    """
    info = dataset_info(dataset.name)
    if spec.pretrained is not None:  # imported weights: the zoo's name is what identifies them
        return pretrained_identity(spec, dataset, info)
    return {
        "kind": "model",
        "arch": spec.arch,
        "arch_version": architecture_version(
            spec.arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
        ),
        "seed": spec.seed,
        "dataset": {"name": dataset.name, "train_limit": dataset.train_limit},
        "train": asdict(spec.train),
        "adversary": asdict(spec.adversary) if spec.adversary is not None else None,
        "validation": asdict(spec.validation) if spec.validation is not None else None,
    }


def pretrained_identity(spec: ModelRecipe, dataset: DatasetSpec, info: Any) -> dict[str, Any]:
    """The store identity of an imported zoo model: the zoo's name, dataset and threat, the
    normalisation and the reprlab architecture (with its version) it is loaded into."""
    from reprlab.models import architecture_version

    assert spec.pretrained is not None
    return {
        "kind": "model",
        "arch": spec.arch,
        "arch_version": architecture_version(
            spec.arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
        ),
        "dataset": {"name": dataset.name, "train_limit": None},
        "pretrained": asdict(spec.pretrained),
    }


def describe_adversary(spec: ModelRecipe) -> str:
    """Short text for a recipe's training method and adversary, e.g. ``linf 0.0314 x10`` (PGD-AT),
    ``TRADES β=6 linf 0.3 x40`` or ``standard``."""
    a = spec.adversary
    if a is None:
        return "standard"
    threat = f"{a.norm} {a.eps:.4g} x{a.steps}"
    if a.method == "trades":
        return f"TRADES β={a.beta:g} {threat}"
    if a.method == "mart":
        return f"MART λ={a.beta:g} {threat}"
    return threat


def build_arch(arch: str, info: DatasetInfo) -> Classifier:
    """A model of architecture ``arch`` for dataset ``info`` (its classes, input shape and
    normaliser), initialised from the global RNG."""
    return build_model(
        arch,
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )


def build_for(spec: ModelRecipe, info: DatasetInfo) -> Classifier:
    """A freshly initialised model of ``spec``'s architecture for dataset ``info``.

    The initialisation is drawn with ``spec.seed`` without touching the global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_arch(spec.arch, info)


def make_attack(
    spec: AttackSpec | AutoAttackSpec,
    *,
    seed: int = 0,
    progress: bool = True,
    num_classes: int | None = None,
) -> Attack:
    """The attack an analysis uses: :class:`~reprlab.core.attacks.PGD` (a missing step size is
    2.5·ε/steps, Madry et al.) or :class:`~reprlab.core.autoattack.AutoAttack` (its ``seed`` null:
    ``seed``, the run's; its target classes null: min(9, ``num_classes`` − 1) when given). Both
    follow the :class:`~reprlab.core.attacks.Attack` protocol."""
    if isinstance(spec, AutoAttackSpec):
        targets = spec.target_classes
        if targets is None and num_classes is not None:
            targets = min(9, num_classes - 1)
        return AutoAttack(
            norm=spec.norm,
            eps=spec.eps,
            version=spec.version,
            attacks=tuple(spec.attacks) if spec.attacks else None,
            seed=seed if spec.seed is None else spec.seed,
            batch_size=spec.batch_size,
            target_classes=targets,
            apgd_iterations=spec.apgd_iterations,
            apgd_restarts=spec.apgd_restarts,
            model_mode=spec.model_mode,
            progress=progress,
        )
    step_size = spec.step_size
    if step_size is None:
        step_size = 2.5 * spec.eps / spec.steps if spec.eps > 0 and spec.steps > 0 else 1.0
    return PGD(
        norm=spec.norm,
        eps=spec.eps,
        step_size=step_size,
        steps=spec.steps,
        random_start=spec.random_start,
        restarts=spec.restarts,
        targeted=spec.targeted,
        keep_best=spec.keep_best,
        model_mode=spec.model_mode,
        clean_first=spec.clean_first,
        loss=spec.loss,
    )


def monitor_attack(spec: ModelRecipe, dataset: DatasetSpec, steps: int) -> PGD:
    """The attack of the held-out training monitor of recipe ``spec``: a property of the model
    recipe, never of a run's ``attack`` group (the entry's metrics must not depend on which run
    happened to train it).

    The recipe's own threat: its adversary's norm and ε (standard recipes: L∞ at the dataset's
    customary ``eps_linf``), ``steps`` steps of 2.5·ε/steps (Madry et al.) from a random start,
    keeping each example's best iterate, model in eval mode.
    """
    if spec.adversary is None:
        norm, eps = "linf", dataset.eps_linf
    else:
        norm, eps = spec.adversary.norm, spec.adversary.eps
    return PGD(
        norm=norm,
        eps=eps,
        step_size=2.5 * eps / steps if eps > 0 and steps > 0 else 1.0,
        steps=steps,
        random_start=True,
        keep_best=True,
        model_mode="eval",
    )


def make_adversary(spec: AdversarySpec) -> PGD:
    """A recipe's training adversary (the inner maximiser of PGD-AT, TRADES or MART): its
    iterate (``keep_best``: the strongest, else the last, as Madry et al.) and BatchNorm mode
    (``bn_mode``) are recipe fields."""
    return PGD(
        norm=spec.norm,
        eps=spec.eps,
        step_size=spec.step_size,
        steps=spec.steps,
        random_start=spec.random_start,
        keep_best=spec.keep_best,
        model_mode=spec.bn_mode,
    )


def train_settings(spec: ModelRecipe) -> TrainSettings:
    """The optimisation settings of recipe ``spec`` (its adversary included)."""
    train = spec.train
    return TrainSettings(
        epochs=train.epochs,
        optimizer=train.optimizer,
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov,
        weight_decay=train.weight_decay,
        schedule=train.schedule,
        milestones=tuple(train.milestones),
        gamma=train.gamma,
        adversary=make_adversary(spec.adversary) if spec.adversary is not None else None,
        method=spec.adversary.method if spec.adversary is not None else "standard",
        beta=spec.adversary.beta if spec.adversary is not None else 0.0,
        seed=spec.seed,
    )
