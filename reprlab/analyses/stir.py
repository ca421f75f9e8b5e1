"""``analysis=stir``: shared invariance between networks (STIR, Nanda et al., ICML 2022).

Three forms, one computation (:mod:`reprlab.methods.stir`):

- a pair, ``model=<m1> ref=<m2>``: STIR(ref | model), STIR(model | ref) and CKA(model, ref) on
  the same inputs, each as mean ± std over ``analysis.repeats`` draws of the seed images, with the
  diagnostics (relative distance the search reached, STIR on the raw seeds, STIR(m | m));
- a model set, ``analysis.models=[r1, r2, ...]``: the STIR matrix (rows: the reference whose IRIs
  are used, columns: the measured model) and the CKA matrix beside it, as in the paper's figure;
- per layer, ``analysis.layers=blocks`` (or a list) with a pair: STIR both ways and CKA along the
  layers both models have (IRIs matched and STIR measured at the same layer).

The IRIs of each reference model are a store artifact keyed by the model's store key, the tap,
the seed kind and seed, the input sample and the search settings: computed once, reused by every
run and every other measured model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab.analyses import inputs, settings_once
from reprlab.analyses.tap_settings import tap_in, taps_in
from reprlab.core.representation import PRECISIONS, Representation
from reprlab.core.stats import mean_std
from reprlab.core.taps import last_relu
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.io.tables import print_table
from reprlab.methods import stir as compute
from reprlab.models import Classifier
from reprlab.run.config import (
    check_choice,
    check_non_negative,
    check_positive,
    check_recipe_for,
    dataset_spec,
    recipe,
    recipe_named,
    typed,
)
from reprlab.run.context import LoadedModel, RunContext
from reprlab.run.recipes import build_for, describe_adversary
from reprlab.runtime import seeded_generator

log = logging.getLogger("reprlab")

SPLITS = ("train", "test")
MIN_EXAMPLES = 4  # CKA's estimators need at least 4 inputs
IRI_VERSION = 1  # bump when the IRI search's maths changes (invalidates stored IRIs)


@dataclass
class Settings:
    """The ``analysis.*`` keys of ``analysis=stir`` (conf/analysis/stir.yaml documents them)."""

    name: str
    examples: int
    split: str
    repeats: int
    seed_kind: str
    steps: int
    step_size: float
    batch_size: int
    estimator: str
    cka_batch_size: int
    precision: str
    fake_relu: Any  # auto (the authors' rule) | True | False
    tap: str | None
    ref_tap: str | None
    layers: Any  # None, "blocks", "all" or a list of taps both models have
    models: Any  # None, or a list of recipe names / {recipe: name, <recipe field>: value, ...}
    grid_images: int


@dataclass
class Member:
    """One model in a STIR computation: its label, the loaded model and the tap used."""

    label: str
    loaded: LoadedModel
    tap: str

    @property
    def model(self) -> Classifier:
        return self.loaded.model


# --- settings -----------------------------------------------------------------------------------


@settings_once
def settings(cfg: DictConfig) -> Settings:
    """Typed, range-checked settings; taps checked on untrained builds of the models."""
    s: Settings = typed(cfg.analysis, Settings, "analysis")
    if s.examples < MIN_EXAMPLES:
        raise ReprlabError(
            f"analysis.examples={s.examples} is invalid: STIR's CKA needs >= {MIN_EXAMPLES} inputs"
        )
    check_choice("analysis.split", s.split, SPLITS)
    if s.repeats < 1:
        raise ReprlabError(f"analysis.repeats={s.repeats} is invalid: it must be >= 1")
    check_choice("analysis.seed_kind", s.seed_kind, compute.SEED_KINDS)
    check_positive("analysis.steps", s.steps)  # 0 steps: the seeds themselves, not IRIs
    check_positive("analysis.step_size", s.step_size)
    check_positive("analysis.batch_size", s.batch_size)
    check_choice("analysis.estimator", s.estimator, compute.ESTIMATORS)
    if s.cka_batch_size < MIN_EXAMPLES:
        raise ReprlabError(
            f"analysis.cka_batch_size={s.cka_batch_size} is invalid: the unbiased estimator "
            f"needs >= {MIN_EXAMPLES} inputs per batch"
        )
    check_choice("analysis.precision", s.precision, PRECISIONS)
    if not (s.fake_relu == "auto" or isinstance(s.fake_relu, bool)):
        raise ReprlabError(
            f"analysis.fake_relu={s.fake_relu!r} is invalid: use auto (the authors' rule), "
            "true or false"
        )
    check_non_negative("analysis.grid_images", s.grid_images)
    info = dataset_info(cfg.dataset.name)
    if s.models is not None:
        if s.layers is not None:
            raise ReprlabError(
                "analysis.layers compares the layers of a pair (model, ref); "
                "leave analysis.models empty for it"
            )
        dataset = dataset_spec(cfg.dataset)
        specs = []
        for name, changes, where in entries(s):
            spec = recipe_named(name, changes, where)
            check_recipe_for(spec, where, dataset)
            specs.append(spec)
        labels = [spec.name for spec in specs]
        if len(specs) < 2:
            raise ReprlabError("analysis.models needs at least two recipes for a STIR matrix")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ReprlabError(
                f"analysis.models lists {', '.join(repeated)} more than once; give each entry "
                "its own name, e.g. {recipe: cnn_small, seed: 1, name: cnn_small_s1}"
            )
        for spec, (_, _, where) in zip(specs, entries(s), strict=True):
            model = build_for(spec, info)
            check_fake_relu(s, model, tap_of(model, s.tap, where), where)
        return s
    if cfg.get("ref") is None:
        raise ReprlabError(
            "analysis=stir compares two models: add ref=<recipe> "
            "(or list several with analysis.models=[...])"
        )
    first = build_for(recipe(cfg.model, "model"), info)
    second = build_for(recipe(cfg.ref, "ref"), info)
    if s.layers is not None:
        for tap in layer_taps(s.layers, first, second):
            check_fake_relu(s, first, tap, "model")
            check_fake_relu(s, second, tap, "ref")
    else:
        check_fake_relu(s, first, tap_of(first, s.tap, "model"), "model")
        ref_tap = s.ref_tap if s.ref_tap is not None else s.tap
        check_fake_relu(s, second, tap_of(second, ref_tap, "ref"), "ref")
    return s


def fake_relu_of(s: Settings, model: Classifier) -> bool:
    """Whether ``model``'s IRIs are searched with fake_relu: ``analysis.fake_relu``, where
    ``auto`` is the authors' rule (all architectures but VGG and Inception)."""
    if s.fake_relu == "auto":
        return compute.authors_fake_relu(model.arch)
    return bool(s.fake_relu)


def check_fake_relu(s: Settings, model: Classifier, tap: str, where: str) -> None:
    """Refuse fake_relu for a model without a ReLU module before ``tap`` (before any work)."""
    if fake_relu_of(s, model):
        try:
            last_relu(model, tap)
        except ReprlabError as err:
            raise ReprlabError(f"analysis.fake_relu for {where}: {err}") from None


def entries(s: Settings) -> list[tuple[str, dict[str, Any] | None, str]]:
    """``analysis.models`` as (recipe name, changes to it, where for errors)."""
    models = s.models
    if isinstance(models, (str, Mapping)) or not isinstance(models, Sequence):
        raise ReprlabError(
            "analysis.models must be a list of recipes, e.g. analysis.models=[resnet18,vgg16_at]"
        )
    found = []
    for index, entry in enumerate(models):
        where = f"analysis.models[{index}]"
        if isinstance(entry, str):
            found.append((entry, None, where))
        elif isinstance(entry, Mapping) and isinstance(entry.get("recipe"), str):
            changes = {k: v for k, v in entry.items() if k != "recipe"}
            found.append((entry["recipe"], changes, where))
        else:
            raise ReprlabError(
                f"{where}={entry!r} is invalid: give a recipe name or "
                "{recipe: <name>, <field>: <value>, ...}"
            )
    return found


def tap_of(model: Classifier, tap: str | None, where: str) -> str:
    """The tap of ``model`` to use: ``tap`` checked, or its representation tap for None."""
    return tap_in(model, "analysis.tap", tap, where=where)


def layer_taps(spec: Any, first: Classifier, second: Classifier) -> tuple[str, ...]:
    """The taps of the per-layer mode: ``spec`` selected in both models (they must agree)."""
    a = taps_in(first, "analysis.layers", spec)
    b = taps_in(second, "analysis.layers", spec, where="ref")
    if a != b:
        missing = sorted(set(a) ^ set(b))
        raise ReprlabError(
            f"analysis.layers: the two models' taps differ ({', '.join(missing)}); "
            "list taps both have"
        )
    return a


# --- the computation over a set of members -------------------------------------------------------


@dataclass
class Measurement:
    """STIR of every (reference, measured) pair of members, over the repeats.

    ``stir[r, i, j]``: STIR(members[j] | members[i]) in repeat r (IRIs of i, measured on j);
    ``seed_stir[r, j]``: CKA of j on X and on repeat r's raw seeds; ``cka[i, j]``: CKA of i and
    j on X; ``distance``/``seed_distance`` [r, i, N]: relative distances reached / at the seeds;
    ``grid``: first images of X, the seeds and each reference's IRIs (repeat 0); ``iris``: store
    keys of the IRI artifacts [r][i].
    """

    labels: list[str]
    taps: list[str]
    stir: np.ndarray
    seed_stir: np.ndarray
    cka: np.ndarray
    distance: np.ndarray
    seed_distance: np.ndarray
    grid: dict[str, np.ndarray]
    iris: list[list[str]]
    seeds: list[int | None]
    fake_relu: list[bool]

    @property
    def n(self) -> int:
        """Number of inputs N."""
        return int(self.distance.shape[-1])


def seeds_of(ctx: RunContext, s: Settings) -> list[int | None]:
    """The seed of the seed images of each repeat (None: the kind draws nothing)."""
    if s.seed_kind == "reversed":
        return [None] * s.repeats
    return [ctx.seed + repeat for repeat in range(s.repeats)]


def draw_seeds(x: torch.Tensor, s: Settings, seed: int | None) -> torch.Tensor:
    generator = None if seed is None else seeded_generator(seed, "cpu")
    return compute.seed_images(x, s.seed_kind, generator)


def sample_identity(ctx: RunContext, s: Settings, x: torch.Tensor) -> dict[str, Any]:
    """What determines the inputs X: the dataset sample and a digest of its pixels."""
    digest = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return {
        "dataset": ctx.dataset.name,
        "train_limit": ctx.dataset.train_limit,
        "split": s.split,
        "examples": int(x.shape[0]),
        "seed": ctx.seed,
        "sha256": digest,
    }


def iris(
    ctx: RunContext, s: Settings, member: Member, x: torch.Tensor, seed: int | None, sample: dict
) -> tuple[dict[str, torch.Tensor], str]:
    """The IRIs of ``member`` for X from the seeds of ``seed`` (store artifact): payload, key."""
    fake_relu = fake_relu_of(s, member.model)
    identity = {
        "model": member.loaded.key,
        "tap": member.tap,
        "seeds": {"kind": s.seed_kind, "seed": seed},
        "sample": sample,
        "search": {
            "loss": "relative_l2",
            "step": "l2",
            "steps": s.steps,
            "step_size": s.step_size,
            "constraint": "box",
            "keep_best": True,
            "fake_relu": fake_relu,
        },
        "precision": s.precision,
        "version": IRI_VERSION,
    }

    def produce(files: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        log.info(
            "IRIs of %s at %s (%s seeds, seed %s): %d images, %d steps, %s",
            member.label, member.tap, s.seed_kind, seed, x.shape[0], s.steps,
            "fake_relu" if fake_relu else "true ReLU gradient",
        )  # fmt: skip
        started = time.perf_counter()
        found = compute.find_iris(
            member.model,
            member.tap,
            x,
            draw_seeds(x, s, seed),
            steps=s.steps,
            step_size=s.step_size,
            batch_size=s.batch_size,
            precision=s.precision,
            fake_relu=fake_relu,
            progress=ctx.progress,
        )
        payload = {
            "x": x,
            "x_prime": found.x_prime,
            "distance": found.distance,
            "seed_distance": found.seed_distance,
        }
        summary = {
            "median_distance": float(found.distance.median()),
            "p95_distance": float(found.distance.quantile(0.95)),
            "seconds": round(time.perf_counter() - started, 2),
        }
        log.info(
            "IRIs of %s: relative distance median %.4f, p95 %.4f (%.1f s)",
            member.label, summary["median_distance"], summary["p95_distance"], summary["seconds"],
        )  # fmt: skip
        return payload, summary

    label = f"iris_{member.label}_{member.tap}_seed{seed}"
    entry, _ = ctx.artifact("iris", identity, produce, label=label)
    payload = entry.load(map_location=ctx.device)
    if not torch.equal(payload["x"], x):
        raise entry.damaged("its inputs X differ from the run's sample")
    return payload, entry.key


def measure(
    ctx: RunContext, s: Settings, members: Sequence[Member], x: torch.Tensor
) -> Measurement:
    """IRIs of every member (per repeat), then STIR of every pair, seed baselines and CKA."""
    k, repeats = len(members), s.repeats
    represent = [Representation(m.model, m.tap, precision=s.precision) for m in members]
    features = [r.encode_all(x, s.cka_batch_size) for r in represent]
    cka = np.array(
        [[_cka(s, features[i], features[j]) for j in range(k)] for i in range(k)], dtype=float
    )
    sample = sample_identity(ctx, s, x)
    seeds = seeds_of(ctx, s)
    ctx.run.update(seeds={"stir_seed_images": seeds})
    stir = np.zeros((repeats, k, k))
    seed_stir = np.zeros((repeats, k))
    distance = np.zeros((repeats, k, x.shape[0]))
    seed_distance = np.zeros_like(distance)
    keys: list[list[str]] = []
    g = min(s.grid_images, x.shape[0])
    grid = {"X (inputs)": x[:g].cpu().numpy()}
    for r, seed in enumerate(seeds):
        starts = draw_seeds(x, s, seed)
        if r == 0:
            grid["seeds"] = starts[:g].cpu().numpy()
        for j in range(k):
            seed_features = represent[j].encode_all(starts, s.cka_batch_size)
            seed_stir[r, j] = _cka(s, features[j], seed_features)
        keys.append([])
        for i, reference in enumerate(members):
            payload, key = iris(ctx, s, reference, x, seed, sample)
            keys[r].append(key)
            distance[r, i] = payload["distance"].cpu().numpy()
            seed_distance[r, i] = payload["seed_distance"].cpu().numpy()
            if r == 0:
                grid[f"X′ of {reference.label}"] = payload["x_prime"][:g].cpu().numpy()
            for j in range(k):
                prime = represent[j].encode_all(payload["x_prime"], s.cka_batch_size)
                stir[r, i, j] = _cka(s, features[j], prime)
    return Measurement(
        labels=[m.label for m in members],
        taps=[m.tap for m in members],
        stir=stir,
        seed_stir=seed_stir,
        cka=cka,
        distance=distance,
        seed_distance=seed_distance,
        grid=grid,
        iris=keys,
        seeds=seeds,
        fake_relu=[fake_relu_of(s, m.model) for m in members],
    )


def _cka(s: Settings, a: torch.Tensor, b: torch.Tensor) -> float:
    """CKA with the configured estimator; NaN (logged) when a side is constant over the set
    (e.g. the raw seeds of ``seed_kind=shared``)."""
    try:
        return compute.linear_cka(a, b, estimator=s.estimator, batch_size=s.cka_batch_size)
    except ReprlabError as err:
        log.warning("CKA undefined: %s", err)
        return float("nan")


# --- tables --------------------------------------------------------------------------------------


def rows(result: Measurement) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows with mean and std over repeats, one row per repeat and value).

    Quantities: ``stir`` (reference, measured), ``cka`` (model, model; no spread: X is fixed),
    ``seed_stir`` (measured; CKA on the raw seeds), ``distance_median``/``distance_p95``
    (relative distance the reference's search reached) and ``seed_distance_median``.
    """
    labels, k = result.labels, len(result.labels)
    values: list[dict[str, Any]] = []

    def add(quantity: str, reference: str, measured: str, per_repeat: Sequence[float]) -> None:
        for r, v in enumerate(per_repeat):
            values.append(
                {
                    "quantity": quantity,
                    "reference": reference,
                    "measured": measured,
                    "repeat": r,
                    "value": float(v),
                }
            )

    for i in range(k):
        for j in range(k):
            add("stir", labels[i], labels[j], result.stir[:, i, j])
    for i in range(k):
        for j in range(k):
            add("cka", labels[i], labels[j], [result.cka[i, j]])
    for j in range(k):
        add("seed_stir", "", labels[j], result.seed_stir[:, j])
    for i in range(k):
        add("distance_median", labels[i], "", np.median(result.distance[:, i], axis=1))
        add("distance_p95", labels[i], "", np.quantile(result.distance[:, i], 0.95, axis=1))
        add("seed_distance_median", labels[i], "", np.median(result.seed_distance[:, i], axis=1))
    frame = pd.DataFrame(values)
    summary = []
    for (quantity, reference, measured), group in frame.groupby(
        ["quantity", "reference", "measured"], sort=False
    ):
        mean, std = (float(v) for v in mean_std(group.value))
        summary.append(
            {
                "quantity": quantity,
                "reference": reference,
                "measured": measured,
                "mean": mean,
                "std": std,
                "repeats": len(group),
            }
        )
    return summary, values


def spread_of(summary: Sequence[Mapping[str, Any]], quantity: str, reference: str, measured: str):
    for row in summary:
        if (row["quantity"], row["reference"], row["measured"]) == (quantity, reference, measured):
            return {"mean": row["mean"], "std": row["std"]}
    raise KeyError((quantity, reference, measured))


def settings_line(ctx: RunContext, s: Settings, n: int) -> str:
    """Settings for figure titles: dataset, N, seeds, search, estimator, repeats."""
    return (
        f"{ctx.dataset.name} {s.split} · N={n} · seeds {s.seed_kind} · {s.steps} L2 steps of "
        f"{s.step_size:g} ({_gradient(s)}) · {s.estimator} linear CKA · mean ± std over "
        f"{s.repeats} repeats"
    )


def _searched(result: Measurement) -> str:
    """Which gradient each reference's IRI search used, for the printed tables."""
    kinds = {"fake_relu" if f else "true ReLU gradient" for f in result.fake_relu}
    if len(kinds) == 1:
        return kinds.pop()
    return ", ".join(
        f"{label} {'fake_relu' if f else 'true gradient'}"
        for label, f in zip(result.labels, result.fake_relu, strict=True)
    )


def _gradient(s: Settings) -> str:
    if s.fake_relu == "auto":
        return "fake_relu: authors' rule"
    return "fake_relu" if s.fake_relu else "true ReLU gradient"


def write_common(
    ctx: RunContext, s: Settings, result: Measurement, name: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``<name>.csv`` (mean ± std), ``<name>_values.csv`` (per repeat), the IRI image grid."""
    summary, values = rows(result)
    ctx.run.write_csv(name, pd.DataFrame(summary))
    ctx.run.write_csv(f"{name}_values", pd.DataFrame(values))
    if result.grid and s.grid_images > 0:
        figure = plots.image_grid(
            list(result.grid.items()),
            title=f"inputs, seeds and IRIs (repeat 0) · {settings_line(ctx, s, result.n)}",
        )
        ctx.run.save_figure(f"{name}_iris", figure)
    diagnostics = {
        label: {
            "distance_median": spread_of(summary, "distance_median", label, ""),
            "distance_p95": spread_of(summary, "distance_p95", label, ""),
            "seed_distance_median": spread_of(summary, "seed_distance_median", label, ""),
            "self_stir": spread_of(summary, "stir", label, label),
            "seed_stir": spread_of(summary, "seed_stir", "", label),
        }
        for label in result.labels
    }
    return summary, diagnostics


def base_summary(s: Settings, result: Measurement) -> dict[str, Any]:
    return {
        "examples": result.n,
        "split": s.split,
        "repeats": s.repeats,
        "seed_kind": s.seed_kind,
        "seed_images_seeds": result.seeds,
        "steps": s.steps,
        "step_size": s.step_size,
        "estimator": s.estimator,
        "precision": s.precision,
        "taps": dict(zip(result.labels, result.taps, strict=True)),
        "fake_relu": dict(zip(result.labels, result.fake_relu, strict=True)),
        "iris": result.iris,
    }


# --- the three forms -----------------------------------------------------------------------------


def pair_labels(first: LoadedModel, second: LoadedModel) -> tuple[str, str]:
    """Distinct labels for the two models (recipe names; the seed or role added if equal)."""
    a, b = first.label, second.label
    if a != b:
        return a, b
    if first.recipe.seed != second.recipe.seed:
        return f"{a} seed {first.recipe.seed}", f"{b} seed {second.recipe.seed}"
    return f"{a} (model)", f"{b} (ref)"


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    source = inputs.sample(
        ctx, examples=s.examples, batch_size=s.batch_size, split=s.split, with_attack=False
    )
    x = torch.cat([xb for xb, _ in source.batches])
    if s.models is not None:
        return run_matrix(ctx, s, x)
    first, second = ctx.model("model"), ctx.model("ref")
    label_a, label_b = pair_labels(first, second)
    if s.layers is not None:
        return run_layers(ctx, s, x, (label_a, first), (label_b, second))
    tap_a = tap_of(first.model, s.tap, "model")
    tap_b = tap_of(second.model, s.ref_tap if s.ref_tap is not None else s.tap, "ref")
    members = [Member(label_a, first, tap_a), Member(label_b, second, tap_b)]
    return run_pair(ctx, s, x, members)


def run_pair(ctx: RunContext, s: Settings, x: torch.Tensor, members: list[Member]) -> dict:
    result = measure(ctx, s, members, x)
    summary, diagnostics = write_common(ctx, s, result, "stir")
    a, b = result.labels
    values = {
        f"STIR({b} | {a})": spread_of(summary, "stir", a, b),
        f"STIR({a} | {b})": spread_of(summary, "stir", b, a),
        f"CKA({a}, {b})": spread_of(summary, "cka", a, b),
        f"STIR({a} | {a})": spread_of(summary, "stir", a, a),
        f"STIR({b} | {b})": spread_of(summary, "stir", b, b),
        f"CKA on raw seeds ({a})": spread_of(summary, "seed_stir", "", a),
        f"CKA on raw seeds ({b})": spread_of(summary, "seed_stir", "", b),
    }
    figure = plots.bars_with_errors(
        [(name, v["mean"], v["std"]) for name, v in values.items()],
        title=f"STIR and CKA · {a} (model) vs {b} (ref)\n{settings_line(ctx, s, result.n)}",
        ylabel="linear CKA",
    )
    ctx.run.save_figure("stir", figure)
    out = {
        **base_summary(s, result),
        "model": a,
        "ref": b,
        "adversaries": {m.label: describe_adversary(m.loaded.recipe) for m in members},
        "stir_ref_given_model": values[f"STIR({b} | {a})"],
        "stir_model_given_ref": values[f"STIR({a} | {b})"],
        "cka": values[f"CKA({a}, {b})"],
        "diagnostics": diagnostics,
    }
    ctx.run.write_json("stir", out)
    print_table(
        [{"measure": name, "mean": v["mean"], "std": v["std"]} for name, v in values.items()],
        title=(
            f"STIR on {result.n} {s.split} images of {ctx.dataset.name} ({s.repeats} repeats; "
            f"IRI search: {_searched(result)}):"
        ),
    )
    print_table(
        [
            {
                "IRIs of": label,
                "rel. distance median": d["distance_median"]["mean"],
                "p95": d["distance_p95"]["mean"],
                "seeds' median": d["seed_distance_median"]["mean"],
            }
            for label, d in diagnostics.items()
        ],
        title="IRI search (relative representation distance reached):",
        common=False,
    )
    return out


def run_matrix(ctx: RunContext, s: Settings, x: torch.Tensor) -> dict[str, Any]:
    members = []
    for name, changes, _ in entries(s):
        loaded = ctx.model_named(name, changes)
        members.append(Member(loaded.label, loaded, tap_of(loaded.model, s.tap, name)))
    result = measure(ctx, s, members, x)
    summary, diagnostics = write_common(ctx, s, result, "stir")
    labels, k = result.labels, len(result.labels)
    mean = result.stir.mean(axis=0)
    std = result.stir.std(axis=0, ddof=1) if s.repeats > 1 else np.zeros_like(mean)
    frame = lambda m: pd.DataFrame(m, index=labels, columns=labels)  # noqa: E731
    ctx.run.write_csv("stir_matrix", frame(mean), index=True)
    ctx.run.write_csv("stir_matrix_std", frame(std), index=True)
    ctx.run.write_csv("cka_matrix", frame(result.cka), index=True)
    figure = plots.similarity_matrices(
        [
            (mean, std, "STIR(column | row): IRIs of the row model, measured on the column"),
            (result.cka, None, "CKA(row, column) on X"),
        ],
        labels,
        title=f"STIR and CKA across models · {settings_line(ctx, s, result.n)}",
        row_label="reference model (IRIs)",
        col_label="measured model",
    )
    ctx.run.save_figure("stir_matrix", figure)
    pairs = {
        f"STIR({b} | {a})": {
            **spread_of(summary, "stir", a, b),
            "cka": float(result.cka[i, j]),
        }
        for i, a in enumerate(labels)
        for j, b in enumerate(labels)
        if i != j
    }
    out = {
        **base_summary(s, result),
        "models": labels,
        "adversaries": {m.label: describe_adversary(m.loaded.recipe) for m in members},
        "stir_matrix": mean.tolist(),
        "stir_matrix_std": std.tolist(),
        "cka_matrix": result.cka.tolist(),
        "pairs": pairs,
        "diagnostics": diagnostics,
    }
    ctx.run.write_json("stir", out)
    cells = [[f"{mean[i, j]:.3f}±{std[i, j]:.3f}" for j in range(k)] for i in range(k)]
    print_table(
        pd.DataFrame(cells, index=labels, columns=labels).rename_axis("row").reset_index(),
        title=(
            f"STIR(column | row) on {result.n} {s.split} images ({s.repeats} repeats; "
            f"IRI search: {_searched(result)}):"
        ),
        common=False,
    )
    print_table(
        frame(result.cka).rename_axis("row").reset_index(), title="CKA(row, column):", common=False
    )
    return out


def run_layers(
    ctx: RunContext,
    s: Settings,
    x: torch.Tensor,
    first: tuple[str, LoadedModel],
    second: tuple[str, LoadedModel],
) -> dict[str, Any]:
    (a, model_a), (b, model_b) = first, second
    taps = layer_taps(s.layers, model_a.model, model_b.model)
    table, curves = [], {f"STIR({b} | {a})": [], f"STIR({a} | {b})": [], f"CKA({a}, {b})": []}
    diagnostics = {}
    for tap in taps:
        members = [Member(a, model_a, tap), Member(b, model_b, tap)]
        result = measure(ctx, s, members, x)
        summary, _ = rows(result)
        measured = {
            f"STIR({b} | {a})": spread_of(summary, "stir", a, b),
            f"STIR({a} | {b})": spread_of(summary, "stir", b, a),
            f"CKA({a}, {b})": spread_of(summary, "cka", a, b),
            f"STIR({a} | {a})": spread_of(summary, "stir", a, a),
            f"STIR({b} | {b})": spread_of(summary, "stir", b, b),
            f"CKA on raw seeds ({a})": spread_of(summary, "seed_stir", "", a),
            f"CKA on raw seeds ({b})": spread_of(summary, "seed_stir", "", b),
        }
        for name, v in measured.items():
            table.append({"tap": tap, "quantity": name, **v})
            if name in curves:
                curves[name].append((v["mean"], v["std"]))
        diagnostics[tap] = {
            label: {
                "distance_median": spread_of(summary, "distance_median", label, ""),
                "distance_p95": spread_of(summary, "distance_p95", label, ""),
            }
            for label in (a, b)
        }
    ctx.run.write_csv("stir_layers", pd.DataFrame(table))
    figure = plots.layer_curves(
        {name: [m for m, _ in points] for name, points in curves.items()},
        list(taps),
        title=f"STIR and CKA along the layers · {a} vs {b}\n{settings_line(ctx, s, x.shape[0])}",
        ylabel="linear CKA",
        errors={name: [d for _, d in points] for name, points in curves.items()},
    )
    ctx.run.save_figure("stir_layers", figure)
    out = {
        "examples": int(x.shape[0]),
        "split": s.split,
        "repeats": s.repeats,
        "seed_kind": s.seed_kind,
        "steps": s.steps,
        "step_size": s.step_size,
        "estimator": s.estimator,
        "model": a,
        "ref": b,
        "taps": list(taps),
        "layers": {
            name: {tap: {"mean": m, "std": d} for tap, (m, d) in zip(taps, points, strict=True)}
            for name, points in curves.items()
        },
        "diagnostics": diagnostics,
    }
    ctx.run.write_json("stir_layers", out)
    print_table(
        pd.DataFrame(table),
        title=f"STIR and CKA along the layers ({x.shape[0]} images, {s.repeats} repeats):",
        common=False,
    )
    return out
