"""``analysis=stitching``: model stitching between ``model`` (front) and ``ref`` (end) at every
stitch point (Balogh & Jelasity, ICML 2023).

At each point, the front of ``model`` up to a block tap feeds a stitch (1×1 conv with bias, or
BN–conv–BN) into the back of ``ref`` after a block tap; only the stitch trains. Per point: the
stitched model's clean and robust accuracy (the run's ``attack``), relative accuracy and penalty
against the end model, agreement with the end model's predictions, the CKA with the end model's
activations at the layer after the stitch, and the same for the untrained least-squares stitch
(direct matching). Every stitch (and every least-squares solution) is a store artifact of its
own, keyed by both models' keys, the taps and the settings; the missing ones are produced
together (one front pass per batch for all points,
:func:`reprlab.methods.stitching.train_stitches`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab.analyses import inputs, settings_once
from reprlab.analyses.tap_settings import taps_in
from reprlab.core.attacks import PGD, robust_accuracy
from reprlab.core.fit import FROZEN_BN_MODES, OPTIMIZERS, SCHEDULES, FitSettings
from reprlab.core.optimize import NORMS
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.io.tables import print_table
from reprlab.methods.stitching import (
    INITS,
    STITCH_KINDS,
    StitchedModel,
    StitchPoint,
    compare_with_end,
    incompatibility,
    least_squares,
    make_stitch,
    next_tap,
    point_seed,
    predictions,
    train_stitches,
    with_buffers,
)
from reprlab.models import Classifier
from reprlab.run.config import (
    AdversarySpec,
    check_choice,
    check_non_negative,
    check_positive,
    check_radius,
    dataset_spec,
    recipe,
    recipe_dataset,
    typed,
)
from reprlab.run.context import LoadedModel, RunContext
from reprlab.run.recipes import build_for, describe_adversary, make_adversary

log = logging.getLogger("reprlab")

PAIRINGS = ("same", "matrix")
VERSION = 1  # bump when the stitch's training or the least-squares maths changes


@dataclass
class Settings:
    """The ``analysis.*`` keys (conf/analysis/stitching.yaml documents them)."""

    name: str
    taps: Any  # "blocks" or a list of block taps
    pairs: Any  # "same", "matrix" or a list of [front tap, end tap]
    stitch: str
    init: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    milestones: list[float]
    gamma: float
    train_examples: int | None
    augment: bool
    frozen_bn: str
    alpha: float
    adversary: AdversarySpec
    ls_examples: int
    ridge: float
    examples: int | None
    eval_batch_size: int


@settings_once
def settings(cfg: DictConfig) -> Settings:
    """Typed, range-checked settings; also resolves the stitch points on untrained copies of the
    two architectures, so a bad tap, pair or init stops the run before anything is written."""
    s: Settings = typed(cfg.analysis, Settings, "analysis")
    check_choice("analysis.stitch", s.stitch, STITCH_KINDS)
    check_choice("analysis.init", s.init, INITS)
    check_non_negative("analysis.epochs", s.epochs)
    check_positive("analysis.batch_size", s.batch_size)
    check_choice("analysis.optimizer", s.optimizer, OPTIMIZERS)
    check_positive("analysis.lr", s.lr)
    check_non_negative("analysis.weight_decay", s.weight_decay)
    check_non_negative("analysis.momentum", s.momentum)
    check_positive("analysis.gamma", s.gamma)
    check_choice("analysis.schedule", s.schedule, SCHEDULES)
    if not all(0 < m < 1 for m in s.milestones):
        raise ReprlabError(
            f"analysis.milestones={s.milestones} is invalid: use fractions of training in (0, 1)"
        )
    if s.train_examples is not None:
        check_positive("analysis.train_examples", s.train_examples)
        if s.epochs > 0 and s.train_examples < s.batch_size:
            raise ReprlabError(
                f"analysis.train_examples={s.train_examples} is under analysis.batch_size="
                f"{s.batch_size}: no full training batch; raise it or lower the batch size"
            )
    check_choice("analysis.frozen_bn", s.frozen_bn, FROZEN_BN_MODES)
    if not 0.0 <= s.alpha <= 1.0:
        raise ReprlabError(
            f"analysis.alpha={s.alpha} is invalid: the fraction of each batch replaced by "
            "adversarial examples must be in [0, 1]"
        )
    check_choice("analysis.adversary.norm", s.adversary.norm, NORMS)
    check_radius(
        "analysis.adversary.eps", s.adversary.eps, s.adversary.norm, dataset_info(cfg.dataset.name)
    )
    check_positive("analysis.adversary.step_size", s.adversary.step_size)
    check_positive("analysis.adversary.steps", s.adversary.steps)
    check_positive("analysis.ls_examples", s.ls_examples)
    check_non_negative("analysis.ridge", s.ridge)
    if s.examples is not None:
        check_positive("analysis.examples", s.examples)
    check_positive("analysis.eval_batch_size", s.eval_batch_size)
    if cfg.get("ref") is None:
        raise ReprlabError(
            "stitching connects the front of model to the back of ref: add ref=<recipe>, e.g. "
            "model=resnet18 ref=resnet18_at"
        )
    run_dataset = dataset_spec(cfg.dataset)
    end_spec = recipe(cfg.ref, "ref")
    if recipe_dataset(end_spec, run_dataset) is not run_dataset:
        raise ReprlabError(
            f"ref.dataset={end_spec.dataset} but the stitch trains and is evaluated on the end "
            f"model's task: run with dataset={end_spec.dataset} (the front may come from "
            "another task: model.dataset=...)"
        )
    front_spec = recipe(cfg.model, "model")
    front = build_for(front_spec, dataset_info(recipe_dataset(front_spec, run_dataset).name))
    end = build_for(end_spec, dataset_info(run_dataset.name))
    stitch_points(s, front, end)
    return s


# --- stitch points -----------------------------------------------------------------------------


def _tap_list(s: Settings, where: str, model: Classifier) -> list[str]:
    return list(
        taps_in(model, "analysis.taps", s.taps, keywords=("blocks",), cut=True, where=where)
    )


def _block_taps(
    where: str, model: Classifier, names: list[str], key: str = "analysis.pairs"
) -> list[str]:
    return list(taps_in(model, key, names, keywords=(), cut=True, where=where))


def point_name(front_tap: str, end_tap: str) -> str:
    """``tap`` when both taps are named alike, else ``front->end``."""
    return front_tap if front_tap == end_tap else f"{front_tap}->{end_tap}"


def stitch_points(s: Settings, front: Classifier, end: Classifier) -> list[StitchPoint]:
    """The (front tap, end tap) pairs to stitch, in forward order; ReprlabError on a tap that
    cannot be cut, an incompatible explicit pair, or identity init across different widths."""
    shapes_front = {t.name: t.shape for t in front.probe().taps}
    shapes_end = {t.name: t.shape for t in end.probe().taps}
    pairs: list[tuple[str, str]]
    if not isinstance(s.pairs, (str, list, tuple)):
        raise ReprlabError(
            f"analysis.pairs={s.pairs} is invalid: use same, matrix or [[front tap, end tap], ...]"
        )
    if isinstance(s.pairs, str):
        check_choice("analysis.pairs", s.pairs, PAIRINGS)
        front_taps = _tap_list(s, "model", front)
        if s.pairs == "same":
            if not isinstance(s.taps, str):
                _block_taps("ref", end, front_taps, key="analysis.taps")
            pairs = [(t, t) for t in front_taps if t in end.block_taps]
            missing = [t for t in front_taps if t not in end.block_taps]
            if missing and not isinstance(s.taps, str):
                raise ReprlabError(f"analysis: ref ({end.arch}) has no tap {missing[0]}")
        else:
            end_taps = _tap_list(s, "ref", end)
            pairs = [
                (a, b)
                for a in front_taps
                for b in end_taps
                if incompatibility(shapes_front[a], shapes_end[b]) is None
            ]
    else:
        pairs = []
        for pair in s.pairs:
            items = [str(t) for t in pair] if isinstance(pair, (list, tuple)) else [str(pair)]
            if len(items) != 2:
                raise ReprlabError(
                    f"analysis.pairs entry {items} is invalid: give [front tap, end tap] pairs"
                )
            _block_taps("model", front, items[:1])
            _block_taps("ref", end, items[1:])
            pairs.append((items[0], items[1]))
    if not pairs:
        raise ReprlabError("analysis: no stitch point; check analysis.taps and analysis.pairs")
    points = []
    for a, b in pairs:
        reason = incompatibility(shapes_front[a], shapes_end[b])
        if reason is not None:
            raise ReprlabError(f"analysis.pairs: cannot stitch model's {a} to ref's {b}: {reason}")
        if s.init == "identity" and shapes_front[a][0] != shapes_end[b][0]:
            raise ReprlabError(
                f"analysis.init=identity needs equal widths, but model's {a} has "
                f"{shapes_front[a][0]} channels and ref's {b} has {shapes_end[b][0]}; use "
                "init=least_squares or init=random"
            )
        points.append(StitchPoint(point_name(a, b), a, b))
    if len({p.name for p in points}) != len(points):
        raise ReprlabError("analysis.pairs lists a pair more than once; list each once")
    return points


# --- artifacts ---------------------------------------------------------------------------------


def _least_squares_identities(
    s: Settings, ctx: RunContext, front: LoadedModel, end: LoadedModel, points: list[StitchPoint]
) -> dict[str, dict[str, Any]]:
    return {
        p.name: {
            "front": front.key,
            "end": end.key,
            "front_tap": p.front_tap,
            "end_tap": p.end_tap,
            "data": {
                "dataset": ctx.dataset.name,
                "split": "train",
                "examples": s.ls_examples,
                "seed": ctx.seed,
            },
            "ridge": s.ridge,
            "version": VERSION,
        }
        for p in points
    }


def _fit_settings(s: Settings, seed: int) -> FitSettings:
    return FitSettings(
        epochs=s.epochs,
        optimizer=s.optimizer,
        lr=s.lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
        schedule=s.schedule,
        milestones=tuple(s.milestones),
        gamma=s.gamma,
        seed=seed,
    )


def _training_identity(s: Settings, ctx: RunContext) -> dict[str, Any]:
    fit = asdict(_fit_settings(s, ctx.seed))
    fit.pop("mixed_precision")  # how, not what (as for models)
    robust = None
    if s.alpha > 0:
        robust = {"alpha": s.alpha, "adversary": asdict(s.adversary)}
    return {
        "stitch": s.stitch,
        "init": s.init,
        "fit": fit,
        "data": {
            "dataset": ctx.dataset.name,
            "split": "train",
            "examples": s.train_examples,
            "batch_size": s.batch_size,
            "augment": s.augment,
        },
        "frozen_bn": s.frozen_bn,
        "robust": robust,
        "version": VERSION,
    }


def obtain_least_squares(
    s: Settings, ctx: RunContext, front: LoadedModel, end: LoadedModel, points: list[StitchPoint]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """The direct-matching solution at every point (stored; the missing ones from one pass over
    a seeded sample of ``ls_examples`` training images); and their store keys."""
    identities = _least_squares_identities(s, ctx, front, end, points)
    by_name = {p.name: p for p in points}

    def produce(files: Any, names: list[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
        log.info("least squares at %d stitch points over %d images", len(names), s.ls_examples)
        loader = ctx.loader("train", s.ls_examples, s.eval_batch_size)
        solutions = least_squares(
            front.model,
            end.model,
            [by_name[n] for n in names],
            loader.epoch(0),
            ridge=s.ridge,
        )
        return {
            name: (solution, {"r2": float(solution["r2"]), "residual": float(solution["residual"])})
            for name, solution in solutions.items()
        }

    entries = ctx.artifacts(
        "stitch_least_squares",
        identities,
        produce,
        labels={n: f"least_squares {n}" for n in identities},
    )
    return {n: e.load(ctx.device) for n, e in entries.items()}, {
        n: e.key for n, e in entries.items()
    }


def obtain_trained(
    s: Settings,
    ctx: RunContext,
    front: LoadedModel,
    end: LoadedModel,
    points: list[StitchPoint],
    shapes: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]],
    solutions: dict[str, dict[str, torch.Tensor]],
    ls_keys: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, dict[str, Any]]]:
    """Every point's trained stitch and donor BatchNorm statistics (stored; the missing ones
    trained together, one front pass per batch); their keys and training summaries."""
    training = _training_identity(s, ctx)
    identities = {
        p.name: {
            "front": front.key,
            "end": end.key,
            "front_tap": p.front_tap,
            "end_tap": p.end_tap,
            "init_from": ls_keys[p.name] if s.init == "least_squares" else None,
            **training,
        }
        for p in points
    }
    by_name = {p.name: p for p in points}

    def produce(files: Any, names: list[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
        chosen = [by_name[n] for n in names]
        log.info(
            "training %d stitch%s together (%s, init %s, %d epoch%s, donor BN %s%s)",
            len(chosen),
            "es" if len(chosen) != 1 else "",
            s.stitch,
            s.init,
            s.epochs,
            "s" if s.epochs != 1 else "",
            s.frozen_bn,
            f", {s.alpha:.0%} adversarial" if s.alpha > 0 else "",
        )
        stitches = {p.name: initial_stitch(s, ctx, p, shapes, solutions) for p in chosen}
        loader = ctx.loader(
            "train",
            s.train_examples,
            s.batch_size,
            train=True,
            augment=None if s.augment else False,
        )
        if len(loader) == 0:
            raise ReprlabError(
                f"fewer training images than analysis.batch_size={s.batch_size}; lower it or "
                "raise analysis.train_examples"
            )
        resume = files.load_checkpoint()
        if resume is not None and resume.get("points") != names:
            log.info("the stored partial training is of other points; starting again")
            resume = None

        def on_epoch_end(state: dict[str, Any], record: dict[str, Any]) -> None:
            files.write_metrics(state["history"])
            files.save_checkpoint({**state, "points": names})

        result = train_stitches(
            front.model,
            end.model,
            chosen,
            stitches,
            loader,
            _fit_settings(s, ctx.seed),
            device=ctx.device,
            frozen_bn=s.frozen_bn,
            adversary=make_adversary(s.adversary) if s.alpha > 0 else None,
            alpha=s.alpha,
            resume=resume,
            on_epoch_end=on_epoch_end,
            progress=ctx.progress,
            what=f"{len(chosen)} stitch{'es' if len(chosen) != 1 else ''} "
            f"{front.label} → {end.label}",
        )
        final = result.history[-1] if result.history else {}
        return {
            p.name: (
                {
                    "stitch": stitches[p.name].state_dict(),
                    "front_bn": result.front_bn[p.name],
                    "end_bn": result.end_bn[p.name],
                },
                {"train_acc": final.get(f"train_acc_{p.name}"), "epochs": len(result.history)},
            )
            for p in chosen
        }

    entries = ctx.artifacts(
        "stitch", identities, produce, labels={n: f"stitch {n}" for n in identities}
    )
    payloads = {n: e.load(ctx.device) for n, e in entries.items()}
    summaries = {n: {"train_acc": e.meta.get("train_acc")} for n, e in entries.items()}
    return payloads, {n: e.key for n, e in entries.items()}, summaries


def initial_stitch(
    s: Settings,
    ctx: RunContext,
    p: StitchPoint,
    shapes: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]],
    solutions: dict[str, dict[str, torch.Tensor]],
):
    """The point's stitch as initialised (random init seeded by the run's seed and the point)."""
    return make_stitch(
        shapes[0][p.front_tap],
        shapes[1][p.end_tap],
        kind=s.stitch,
        init=s.init,
        seed=point_seed(ctx.seed, p.name),
        solution=solutions.get(p.name),
    ).to(ctx.device)


# --- the run -----------------------------------------------------------------------------------


def _baseline(model: torch.nn.Module, batches: list, attack: PGD, ctx: RunContext) -> tuple:
    clean = robust_accuracy(model, batches, None, progress=ctx.progress)
    robust = robust_accuracy(model, batches, attack, generator=ctx.generator(), progress=False)
    return clean, robust


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    front, end = ctx.model("model"), ctx.model("ref")
    points = stitch_points(s, front.model, end.model)
    shapes = (
        {t.name: t.shape for t in front.model.probe().taps},
        {t.name: t.shape for t in end.model.probe().taps},
    )
    cross_task = front.dataset is not None and front.dataset.name != ctx.dataset.name
    log.info(
        "stitching %s (%s%s) into %s at %d points",
        front.label,
        describe_adversary(front.recipe),
        f", trained on {front.dataset.name}" if cross_task else "",
        end.label,
        len(points),
    )

    solutions, ls_keys = obtain_least_squares(s, ctx, front, end, points)
    trained_keys: dict[str, str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    if s.epochs > 0:
        payloads, trained_keys, summaries = obtain_trained(
            s, ctx, front, end, points, shapes, solutions, ls_keys
        )
    else:  # the initialisation itself, untrained (e.g. the identity stitch)
        payloads = {
            p.name: {
                "stitch": initial_stitch(s, ctx, p, shapes, solutions).state_dict(),
                "front_bn": {},
                "end_bn": {},
            }
            for p in points
        }

    source = inputs.sample(ctx, examples=s.examples, batch_size=s.eval_batch_size)
    batches, attack = source.batches, ctx.attack()
    n = source.examples
    end_clean, end_robust = _baseline(end.model, batches, attack, ctx)
    end_predictions = predictions(end.model, batches)
    if cross_task:
        own = inputs.sample(
            ctx, examples=s.examples, batch_size=s.eval_batch_size, dataset=front.dataset
        )
        front_clean, front_robust = _baseline(front.model, own.batches, attack, ctx)
    else:
        front_clean, front_robust = _baseline(front.model, batches, attack, ctx)

    rows = []
    for p in points:
        later = next_tap(end.model, p.end_tap)
        trained_stitch = initial_stitch(s, ctx, p, shapes, solutions)
        trained_stitch.load_state_dict(payloads[p.name]["stitch"])
        trained = StitchedModel(
            with_buffers(front.model, payloads[p.name]["front_bn"]),
            p.front_tap,
            trained_stitch,
            with_buffers(end.model, payloads[p.name]["end_bn"]),
            p.end_tap,
        ).eval()
        direct = StitchedModel(
            front.model,
            p.front_tap,
            make_stitch(
                shapes[0][p.front_tap],
                shapes[1][p.end_tap],
                kind="conv",
                init="least_squares",
                solution=solutions[p.name],
            ).to(ctx.device),
            end.model,
            p.end_tap,
        ).eval()
        row: dict[str, Any] = {
            "point": p.name,
            "front_tap": p.front_tap,
            "end_tap": p.end_tap,
            "stitch": s.stitch,
            "init": s.init,
            "epochs": s.epochs,
        }
        for prefix, stitched in (("", trained), ("ls_", direct)):
            clean = compare_with_end(stitched, end.model, batches, end_predictions, later=later)
            robust = robust_accuracy(
                stitched, batches, attack, generator=ctx.generator(), progress=False
            )
            row.update(
                {
                    f"{prefix}clean_acc": clean["accuracy"],
                    f"{prefix}relative_acc": _ratio(clean["accuracy"], end_clean),
                    f"{prefix}penalty": 100 * ((1 - end_clean) - (1 - clean["accuracy"])),
                    f"{prefix}robust_acc": robust,
                    f"{prefix}robust_relative_acc": _ratio(robust, end_robust),
                    f"{prefix}agreement": clean["agreement"],
                    f"{prefix}cka": clean["cka"],
                }
            )
        row["cka_tap"] = later
        row["ls_r2"] = float(solutions[p.name]["r2"])
        row["train_acc"] = summaries.get(p.name, {}).get("train_acc")
        row.update(
            {
                "front_clean_acc": front_clean,
                "front_robust_acc": front_robust,
                "end_clean_acc": end_clean,
                "end_robust_acc": end_robust,
                "examples": n,
                "stitch_key": trained_keys.get(p.name),
                "ls_key": ls_keys[p.name],
            }
        )
        rows.append(row)
        log.info(
            "%s: clean %.4f (rel %.3f), robust %.4f; least squares clean %.4f, robust %.4f",
            p.name,
            row["clean_acc"],
            row["relative_acc"],
            row["robust_acc"],
            row["ls_clean_acc"],
            row["ls_robust_acc"],
        )
    table = pd.DataFrame(rows)
    ctx.run.write_csv("stitching", table)

    threat = _describe_attack(attack)
    front_label = front.label + (f" ({front.dataset.name})" if cross_task else "")
    training = (
        f"{s.stitch} stitch, init {s.init}, "
        + (
            f"{s.epochs} epoch{'s' * (s.epochs != 1)}, donor BN {s.frozen_bn}"
            if s.epochs > 0
            else "untrained"
        )
        + (f", α={s.alpha:g} adversarial" if s.alpha > 0 and s.epochs > 0 else "")
    )
    title = (
        f"stitching {front_label} → {end.label} · {ctx.dataset.name} · {training}\n"
        f"N={n} test images · robust: {threat}"
    )
    curve = table if s.pairs != "matrix" else table[table.front_tap == table.end_tap]
    if curve.empty:
        curve = table
    figure = plots.stitching_curves(
        curve.point.tolist(),
        clean=curve.clean_acc.tolist(),
        robust=curve.robust_acc.tolist(),
        ls_clean=curve.ls_clean_acc.tolist(),
        ls_robust=curve.ls_robust_acc.tolist(),
        relative=curve.relative_acc.tolist(),
        ls_relative=curve.ls_relative_acc.tolist(),
        front=(front_clean, front_robust),
        end=(end_clean, end_robust),
        front_label=f"{front_label} (front)",
        end_label=f"{end.label} (end)",
        title=title,
    )
    ctx.run.save_figure("stitching", figure)
    if s.pairs == "matrix":
        write_matrix(ctx, table, front_label, end.label, title)

    columns = ["point", "clean_acc", "relative_acc", "robust_acc", "ls_clean_acc", "ls_robust_acc"]
    print_table(table[columns], title=title, common=False)
    summary: dict[str, Any] = {
        "front": front.label,
        "end": end.label,
        "front_dataset": front.dataset.name if front.dataset is not None else ctx.dataset.name,
        "points": len(points),
        "examples": n,
        "front_clean_acc": front_clean,
        "front_robust_acc": front_robust,
        "end_clean_acc": end_clean,
        "end_robust_acc": end_robust,
        "min_relative_acc": float(table.relative_acc.min()),
        "mean_relative_acc": float(table.relative_acc.mean()),
        "min_ls_relative_acc": float(table.ls_relative_acc.min()),
        "clean_acc": dict(zip(table.point, table.clean_acc.astype(float), strict=True)),
        "robust_acc": dict(zip(table.point, table.robust_acc.astype(float), strict=True)),
        "ls_robust_acc": dict(zip(table.point, table.ls_robust_acc.astype(float), strict=True)),
        "stitch_keys": trained_keys,
        "least_squares_keys": ls_keys,
    }
    ctx.run.write_json("stitching", summary)
    return summary


def _describe_attack(attack: Any) -> str:
    """E.g. ``PGD-10 linf ε=0.2``; another attack by its class name and what it declares."""
    name = type(attack).__name__
    steps = getattr(attack, "steps", None)
    label = f"{name}-{steps}" if steps is not None else name
    norm, eps = getattr(attack, "norm", None), getattr(attack, "eps", None)
    parts = [label, *([norm] if norm else [])]
    if isinstance(eps, (int, float)):
        parts.append(f"ε={eps:.4g}")
    return " ".join(parts)


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def write_matrix(
    ctx: RunContext, table: pd.DataFrame, front_label: str, end_label: str, title: str
) -> None:
    """``stitching_matrix.png``: clean and robust accuracy over every (front, end) tap pair."""
    rows = list(dict.fromkeys(table.front_tap))
    cols = list(dict.fromkeys(table.end_tap))
    panels = []
    for column, what in (("clean_acc", "clean accuracy"), ("robust_acc", "robust accuracy")):
        matrix = np.full((len(rows), len(cols)), np.nan)
        for _, r in table.iterrows():
            matrix[rows.index(r.front_tap), cols.index(r.end_tap)] = r[column]
        panels.append((matrix, f"stitched {what}"))
    figure = plots.stitching_matrix(
        panels, rows, cols, row_model=front_label, col_model=end_label, title=title
    )
    ctx.run.save_figure("stitching_matrix", figure)
