"""What a recipe means: the fields that identify a trained model, and config → plain settings.

Glue between the typed config (:mod:`reprlab.config`) and computation: a model recipe's store
identity, its training settings and adversary, and the attack an analysis uses, as the plain
objects the computation modules take.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from reprlab.attacks import PGD
from reprlab.config import AdversarySpec, AttackSpec, DatasetSpec, ModelRecipe
from reprlab.data import DatasetInfo
from reprlab.models import Classifier, build_model
from reprlab.train import TrainSettings


def model_identity(spec: ModelRecipe, dataset: DatasetSpec) -> dict[str, Any]:
    """The fields that determine a model's weights: its store key is a hash of exactly these."""
    return {
        "kind": "model",
        "arch": spec.arch,
        "seed": spec.seed,
        "dataset": {"name": dataset.name, "train_limit": dataset.train_limit},
        "train": asdict(spec.train),
        "adversary": asdict(spec.adversary) if spec.adversary is not None else None,
    }


def describe_adversary(spec: ModelRecipe) -> str:
    """Short text for a recipe's training adversary, e.g. ``linf 0.0314 x10`` or ``standard``."""
    a = spec.adversary
    return "standard" if a is None else f"{a.norm} {a.eps:.4g} x{a.steps}"


def build_for(spec: ModelRecipe, info: DatasetInfo) -> Classifier:
    """A freshly initialised model of ``spec``'s architecture for dataset ``info``.

    The initialisation is drawn with ``spec.seed`` without touching the global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_model(
            spec.arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
            mean=info.mean,
            std=info.std,
        )


def make_attack(spec: AttackSpec) -> PGD:
    """The attack an analysis uses; a missing step size is 2.5·ε/steps (Madry et al.)."""
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
    )


def make_adversary(spec: AdversarySpec) -> PGD:
    """A recipe's training adversary: as Madry et al. train, the last iterate, in eval mode."""
    return PGD(
        norm=spec.norm,
        eps=spec.eps,
        step_size=spec.step_size,
        steps=spec.steps,
        random_start=spec.random_start,
        keep_best=False,
        model_mode="eval",
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
        seed=spec.seed,
    )
