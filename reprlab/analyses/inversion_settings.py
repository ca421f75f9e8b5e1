"""The inversion analyses' typed settings and their checks (Engstrom et al. 2019).

Not an analysis itself: :mod:`reprlab.analyses.inversion_study` is the runner,
:mod:`reprlab.analyses.inversion_parts` computes the parts. Every key is documented in
conf/analysis/inversion_study.yaml, which the five single-part analyses (``inversion``,
``repr_distance``, ``feature_vis``, ``feature_manip``, ``interpolation``) extend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig

from reprlab.analyses.tap_settings import tap_in
from reprlab.core.representation import Representation
from reprlab.core.taps import last_relu
from reprlab.data import available_datasets, check_available, dataset_info
from reprlab.errors import ReprlabError
from reprlab.models import Classifier
from reprlab.run.config import check_choice, check_non_negative, check_positive, recipe, typed
from reprlab.run.recipes import build_for

PARTS = ("inversion", "repr_distance", "feature_vis", "feature_manip", "interpolation")
"""The five analyses, in the paper's order; ``inversion_study`` runs any of them together."""
STUDY = "inversion_study"
SEED_KINDS = ("noise", "test")
OOD_NEGATED = "negated"


@dataclass
class Steps:
    """Steps and L2 step size (pixel units) of one optimisation, per dataset."""

    steps: int
    step_size: float


@dataclass
class DatasetDefaults:
    """Per-dataset defaults for the parts whose ``steps``/``step_size`` are null."""

    inversion: Steps
    interpolation: Steps
    feature_manip: Steps


@dataclass
class InversionPart:
    examples: int
    seeds: str
    seed_mean: float
    seed_std: float
    steps: int | None
    step_size: float | None
    ood: str | None
    ood_examples: int
    show: int


@dataclass
class DistancePart:
    pairs: int
    eps: list[float]
    steps: int
    step_fraction: float
    show_eps: list[float]
    show: int


@dataclass
class FeaturePart:
    coordinates: list[int] | None
    count: int
    pool: int


@dataclass
class VisPart:
    steps: int
    step_size: float
    from_test: int
    top_k: int
    regularise: bool
    jitter: int
    rotation: float


@dataclass
class ManipPart:
    images: int
    steps: int | None
    step_size: float | None
    show: int


@dataclass
class InterpPart:
    pairs: int
    points: int
    steps: int | None
    step_size: float | None


@dataclass
class Settings:
    """The ``analysis.*`` keys of the inversion analyses (see inversion_study.yaml)."""

    name: str
    parts: list[str]
    tap: str | None
    fake_relu: bool
    batch_size: int
    inversion: InversionPart
    repr_distance: DistancePart
    features: FeaturePart
    feature_vis: VisPart
    feature_manip: ManipPart
    interpolation: InterpPart
    per_dataset: dict[str, DatasetDefaults] = field(default_factory=dict)


def settings(cfg: DictConfig) -> Settings:
    """Typed, range-checked settings; builds untrained models to check taps and coordinates."""
    s: Settings = typed(cfg.analysis, Settings, "analysis")
    for part in s.parts:
        check_choice("analysis.parts", part, PARTS)
    if s.name == STUDY and not s.parts:
        raise ReprlabError(f"analysis.parts=[] runs nothing; list some of {', '.join(PARTS)}")
    check_positive("analysis.batch_size", s.batch_size)
    _check_inversion(s, cfg)
    _check_distance(s.repr_distance)
    f = s.features
    if f.coordinates is not None and not f.coordinates:
        raise ReprlabError(
            "analysis.features.coordinates=[] names no coordinate; list some, or null for the "
            "most variable ones"
        )
    check_positive("analysis.features.count", f.count)
    check_positive("analysis.features.pool", f.pool)
    v = s.feature_vis
    check_positive("analysis.feature_vis.steps", v.steps)
    check_positive("analysis.feature_vis.step_size", v.step_size)
    check_non_negative("analysis.feature_vis.from_test", v.from_test)
    check_positive("analysis.feature_vis.top_k", v.top_k)
    check_non_negative("analysis.feature_vis.jitter", v.jitter)
    check_non_negative("analysis.feature_vis.rotation", v.rotation)
    m = s.feature_manip
    check_positive("analysis.feature_manip.images", m.images)
    check_positive("analysis.feature_manip.show", m.show)
    i = s.interpolation
    for key, count in (
        ("analysis.repr_distance.pairs", s.repr_distance.pairs),
        ("analysis.interpolation.pairs", i.pairs),
    ):
        if count < 2:
            raise ReprlabError(
                f"{key}={count} is invalid: pairs of different classes are drawn from a sample "
                "of this many test images; use >= 2"
            )
    if i.points < 2:
        raise ReprlabError(f"analysis.interpolation.points={i.points} is invalid: use >= 2")
    for key, value in (
        ("inversion", steps_of(s, cfg, "inversion")),
        ("interpolation", steps_of(s, cfg, "interpolation")),
        ("feature_manip", steps_of(s, cfg, "feature_manip")),
    ):
        check_positive(f"analysis.{key}.steps", value.steps)
        check_positive(f"analysis.{key}.step_size", value.step_size)
    info = dataset_info(cfg.dataset.name)
    for where in ("model", "ref"):
        if cfg.get(where) is not None:
            model = build_for(recipe(cfg[where], where), info)
            represent = representation_of(s, model)
            if s.features.coordinates is not None:
                bad = [c for c in s.features.coordinates if not 0 <= c < represent.dim]
                if bad:
                    raise ReprlabError(
                        f"analysis.features.coordinates has {bad} outside the {represent.dim} "
                        f"coordinates of {where}'s tap '{represent.tap}'; "
                        f"use 0..{represent.dim - 1}"
                    )
    return s


def _check_inversion(s: Settings, cfg: DictConfig) -> None:
    p = s.inversion
    check_positive("analysis.inversion.examples", p.examples)
    if p.seeds not in SEED_KINDS:
        raise ReprlabError(
            f"analysis.inversion.seeds='{p.seeds}' is an unknown seed kind; use one of: "
            f"{', '.join(SEED_KINDS)}"
        )
    check_non_negative("analysis.inversion.seed_std", p.seed_std)
    if not 0 <= p.seed_mean <= 1:
        raise ReprlabError(
            f"analysis.inversion.seed_mean={p.seed_mean} is invalid: pixels are in [0, 1]"
        )
    check_positive("analysis.inversion.show", p.show)
    check_positive("analysis.inversion.ood_examples", p.ood_examples)
    if p.ood is None or p.ood == OOD_NEGATED:
        return
    if p.ood not in available_datasets():
        raise ReprlabError(
            f"analysis.inversion.ood='{p.ood}' is invalid: use null, {OOD_NEGATED} or a dataset "
            f"of the same image shape ({', '.join(available_datasets())})"
        )
    mine, other = dataset_info(cfg.dataset.name), dataset_info(p.ood)
    if (mine.channels, mine.image_size) != (other.channels, other.image_size):
        raise ReprlabError(
            f"analysis.inversion.ood={p.ood} has {other.channels}x{other.image_size}px images, "
            f"{cfg.dataset.name} {mine.channels}x{mine.image_size}px; pick a dataset of the "
            "same shape or ood=negated"
        )


def _check_distance(p: DistancePart) -> None:
    check_positive("analysis.repr_distance.pairs", p.pairs)
    check_positive("analysis.repr_distance.steps", p.steps)
    check_positive("analysis.repr_distance.step_fraction", p.step_fraction)
    check_positive("analysis.repr_distance.show", p.show)
    if not p.eps:
        raise ReprlabError("analysis.repr_distance.eps=[] is empty; give radii > 0")
    bad = [e for e in p.eps if not (e > 0 and math.isfinite(e))]
    if bad:
        raise ReprlabError(
            f"analysis.repr_distance.eps has {bad}: every radius must be > 0 and finite "
            "(ε = 0 is the source itself, always reported)"
        )
    for key, values in (("eps", p.eps), ("show_eps", p.show_eps)):
        if len(set(values)) != len(values):
            raise ReprlabError(f"analysis.repr_distance.{key}={values} repeats a radius")
    missing = [e for e in p.show_eps if e not in p.eps]
    if missing:
        raise ReprlabError(
            f"analysis.repr_distance.show_eps has {missing}, not in analysis.repr_distance.eps"
        )


def parts_of(s: Settings) -> list[str]:
    """The parts this run computes: the analysis's own, or ``parts`` for inversion_study."""
    if s.name == STUDY:
        return [p for p in PARTS if p in s.parts]
    if s.name not in PARTS:
        raise ReprlabError(f"unknown inversion analysis '{s.name}'; use {STUDY} or {PARTS}")
    return [s.name]


def steps_of(s: Settings, cfg: DictConfig, part: str) -> Steps:
    """The part's steps and step size: its own keys, or the dataset's row of ``per_dataset``."""
    own = getattr(s, part)
    dataset = cfg.dataset.name
    row = s.per_dataset.get(dataset)
    if (own.steps is None or own.step_size is None) and row is None:
        raise ReprlabError(
            f"analysis.{part}.steps/step_size are null and analysis.per_dataset has no "
            f"'{dataset}' row; set analysis.{part}.steps and analysis.{part}.step_size"
        )
    default = getattr(row, part) if row is not None else None
    return Steps(
        steps=own.steps if own.steps is not None else default.steps,
        step_size=float(own.step_size if own.step_size is not None else default.step_size),
    )


def tap_of(s: Settings, model: Classifier) -> str:
    """The tap to invert: ``analysis.tap`` or the model's representation tap (checked)."""
    return tap_in(model, "analysis.tap", s.tap)


def representation_of(s: Settings, model: Classifier) -> Representation:
    """R for ``model``: its tap, with fake_relu as configured (refused without a ReLU)."""
    tap = tap_of(s, model)
    if s.fake_relu:
        last_relu(model, tap)  # one-line ReprlabError where no ReLU precedes the tap
    return Representation(model, tap, fake_relu=s.fake_relu)


def check_ood_data(s: Settings, cfg: DictConfig) -> None:
    """The out-of-distribution dataset's test files are on disk (when inversion runs)."""
    ood = s.inversion.ood
    if ood not in (None, OOD_NEGATED, cfg.dataset.name) and "inversion" in parts_of(s):
        check_available(ood, cfg.dataset.root, split="test")
