"""What the three CKA analyses share: reading their settings, the input batches, the outputs.

Not an analysis itself; ``cka``, ``cka_panels`` and ``cka_epochs`` each import it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab import plots
from reprlab.attacks import PGD
from reprlab.config import check_choice, check_positive, recipe
from reprlab.context import RunContext, build_for
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.layerwise import JointCKA, LayerCKA, Member, joint_layer_cka
from reprlab.models import Classifier

log = logging.getLogger("reprlab")

ESTIMATORS = ("unbiased", "biased")
KERNELS = ("linear", "rbf")
FEATURES = ("flatten", "pool")
INPUTS = ("clean", "adversarial")
ATTACK_TARGETS = ("own", "model")
MIN_BATCH = 4  # the unbiased HSIC estimator needs n >= 4


def validate_settings(cfg: DictConfig) -> None:
    """Check the parameters every CKA analysis shares (one clear line per mistake)."""
    a = cfg.analysis
    if a.examples is not None:
        check_positive("analysis.examples", a.examples)
        if a.examples < MIN_BATCH:
            raise ReprlabError(
                f"analysis.examples={a.examples} is invalid: CKA needs >= 4 examples"
            )
    check_positive("analysis.batch_size", a.batch_size)
    if a.batch_size < MIN_BATCH and not a.exact:
        raise ReprlabError(
            f"analysis.batch_size={a.batch_size} is invalid: CKA needs >= 4 per batch"
        )
    check_choice("analysis.estimator", a.estimator, ESTIMATORS)
    check_choice("analysis.kernel", a.kernel, KERNELS)
    check_positive("analysis.rbf_threshold", a.rbf_threshold)
    check_choice("analysis.features", a.features, FEATURES)
    check_choice("analysis.inputs", a.inputs, INPUTS)
    check_choice("analysis.attack_target", a.attack_target, ATTACK_TARGETS)
    if a.taps is not None:
        info = dataset_info(cfg.dataset.name)
        for where in ("model", "ref"):
            if cfg.get(where) is not None:
                taps_of(cfg, build_for(recipe(cfg[where], where), info))


def taps_of(cfg: DictConfig, model: Classifier) -> tuple[str, ...]:
    """The taps to compare: ``analysis.taps`` or all of the architecture's, forward order."""
    chosen = cfg.analysis.taps
    if chosen is None:
        return tuple(model.tap_names)
    unknown = [t for t in chosen if t not in model.tap_points]
    if unknown:
        raise ReprlabError(
            f"analysis.taps has {unknown} not among {model.arch}'s taps: "
            f"{', '.join(model.tap_names)}"
        )
    return tuple(t for t in model.tap_names if t in set(chosen))


@dataclass(frozen=True)
class Inputs:
    """The images a CKA analysis feeds its models: a fixed seeded sample, clean or attacked."""

    loader: Any
    examples: int
    batch_size: int
    attack: PGD | None
    description: str


def prepare_inputs(cfg: DictConfig, ctx: RunContext) -> Inputs:
    """The seeded test sample in CKA batches (one batch of all examples in exact mode)."""
    a = cfg.analysis
    probe = ctx.test_loader(a.examples, 1024)
    examples = probe.num_examples
    batch_size = examples if a.exact else int(a.batch_size)
    loader = ctx.test_loader(a.examples, batch_size)
    attack = ctx.attack() if a.inputs == "adversarial" else None
    if attack is None:
        description = "clean inputs"
    else:
        target = "each model's own" if a.attack_target == "own" else f"{cfg.model.name}'s"
        description = (
            f"PGD-{attack.steps} {attack.norm} ε={attack.eps:.4g} examples against {target} weights"
        )
    return Inputs(loader, examples, batch_size, attack, description)


def batches(
    inputs: Inputs,
    models: Sequence[Classifier],
    target_index: int | None,
    device: torch.device,
    seed: int,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """Image batches for :func:`joint_layer_cka`.

    Clean: one tensor per batch for every model. Adversarial: the batch attacked against
    ``models[target_index]`` and fed to all, or (``target_index`` None) attacked against each
    model separately, one tensor per model, paired by source image. A last batch smaller than
    the estimator's minimum is dropped.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    for x, y in inputs.loader.epoch(0):
        if len(y) < MIN_BATCH:
            log.warning("dropping a last batch of %d examples (CKA needs >= 4)", len(y))
            continue
        if inputs.attack is None:
            yield x
        elif target_index is not None:
            yield inputs.attack(models[target_index], x, y, generator=generator)
        else:
            yield tuple(inputs.attack(model, x, y, generator=generator) for model in models)


def compute(
    cfg: DictConfig,
    ctx: RunContext,
    members: Sequence[Member],
    inputs: Inputs,
    target_index: int | None,
) -> JointCKA:
    """The joint CKA matrix of ``members`` over the run's inputs, with the configured estimator."""
    a = cfg.analysis
    models = [m.model for m in members]
    target = (
        None if inputs.attack is None else (target_index if a.attack_target == "model" else None)
    )
    stream = batches(inputs, models, target, ctx.device, ctx.seed)
    result = joint_layer_cka(
        members,
        stream,
        kernel=a.kernel,
        unbiased=a.estimator == "unbiased",
        rbf_threshold=float(a.rbf_threshold),
        pool=a.features == "pool",
        progress=ctx.progress,
    )
    log.info(
        "CKA over %d examples in %d batches: %s",
        result.n_examples,
        result.n_batches,
        result.estimator,
    )
    return result


def matrix_frame(result: LayerCKA) -> pd.DataFrame:
    """The matrix as a table: rows and columns named by tap."""
    return pd.DataFrame(
        result.matrix.numpy(), index=list(result.row_taps), columns=list(result.col_taps)
    )


def write_matrix(
    ctx: RunContext, name: str, result: LayerCKA, *, title: str, row_model: str, col_model: str
) -> None:
    """``<name>.csv`` (tap names on both axes) and ``<name>.png`` (0–1 heatmap)."""
    ctx.run.write_csv(name, matrix_frame(result), index=True)
    figure = plots.cka_heatmap(
        result.matrix.numpy(),
        result.row_taps,
        result.col_taps,
        title=title,
        row_model=row_model,
        col_model=col_model,
    )
    ctx.run.save_figure(name, figure)


def same_layer(result: LayerCKA) -> tuple[list[str], np.ndarray]:
    """CKA of each tap with the same-named tap of the other model (taps both models have)."""
    columns = {tap: j for j, tap in enumerate(result.col_taps)}
    taps = [tap for tap in result.row_taps if tap in columns]
    values = np.array([result.matrix[result.row_taps.index(t), columns[t]].item() for t in taps])
    return taps, values


def mean_off_diagonal(matrix: torch.Tensor) -> float:
    """Mean of a square matrix's off-diagonal entries (how alike different layers are)."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float((matrix.sum() - matrix.diagonal().sum()) / (n * n - n))


def title(
    cfg: DictConfig, ctx: RunContext, what: str, result: JointCKA | LayerCKA, inputs: Inputs
) -> str:
    """A figure title naming models, dataset, estimator, N and the inputs."""
    a = cfg.analysis
    estimator = f"{a.estimator} {a.kernel} CKA, {'exact' if result.n_batches == 1 else 'minibatch'}"
    return (
        f"{what} · {ctx.dataset.name} · {estimator} · N={result.n_examples}\n{inputs.description}"
    )


def summary_base(result: JointCKA | LayerCKA, inputs: Inputs) -> dict[str, Any]:
    """The summary fields every CKA analysis reports: sample, batching, estimator, inputs."""
    return {
        "examples": result.n_examples,
        "batches": result.n_batches,
        "estimator": result.estimator,
        "inputs": inputs.description,
    }
