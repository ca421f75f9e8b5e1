"""What the three CKA analyses share: their typed settings, the joint computation, the outputs.

Not an analysis itself; ``cka``, ``cka_panels`` and ``cka_epochs`` each import it. Inputs come
from :mod:`reprlab.analyses.inputs`, the estimator from :mod:`reprlab.methods.layerwise`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab import api
from reprlab.analyses import inputs
from reprlab.analyses.inputs import ATTACK_TARGETS, INPUT_KINDS, InputSource
from reprlab.analyses.tap_settings import taps_in
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.methods.layerwise import JointCKA, LayerCKA, Member
from reprlab.methods.similarity import KERNELS
from reprlab.models import Classifier
from reprlab.run.config import check_choice, check_positive, recipe, typed
from reprlab.run.context import RunContext
from reprlab.run.recipes import build_for

log = logging.getLogger("reprlab")

ESTIMATORS = ("unbiased", "biased")
FEATURES = ("flatten", "pool")
MIN_BATCH = 4  # the unbiased HSIC estimator needs n >= 4


@dataclass
class CKASettings:
    """The ``analysis.*`` keys every CKA analysis takes (conf/analysis/cka.yaml documents them)."""

    name: str
    examples: int | None
    batch_size: int
    exact: bool
    estimator: str
    kernel: str
    rbf_threshold: float
    features: str
    inputs: str
    attack_target: str
    taps: Any  # "blocks", "all" or a list of tap names


def check(s: CKASettings, cfg: DictConfig) -> CKASettings:
    """Range-check the shared CKA settings (one clear line per mistake); return them."""
    if s.examples is not None:
        check_positive("analysis.examples", s.examples)
        if s.examples < MIN_BATCH:
            raise ReprlabError(
                f"analysis.examples={s.examples} is invalid: CKA needs >= {MIN_BATCH} examples"
            )
    check_positive("analysis.batch_size", s.batch_size)
    if s.batch_size < MIN_BATCH and not s.exact:
        raise ReprlabError(
            f"analysis.batch_size={s.batch_size} is invalid: CKA needs >= {MIN_BATCH} per batch"
        )
    check_choice("analysis.estimator", s.estimator, ESTIMATORS)
    check_choice("analysis.kernel", s.kernel, KERNELS)
    check_positive("analysis.rbf_threshold", s.rbf_threshold)
    check_choice("analysis.features", s.features, FEATURES)
    check_choice("analysis.inputs", s.inputs, INPUT_KINDS)
    check_choice("analysis.attack_target", s.attack_target, ATTACK_TARGETS)
    info = dataset_info(cfg.dataset.name)
    for where in ("model", "ref"):
        if cfg.get(where) is not None:
            taps_of(s, build_for(recipe(cfg[where], where), info))
    return s


def settings(cfg: DictConfig, schema: type[CKASettings] = CKASettings) -> Any:
    """The typed, checked settings of a CKA analysis (``schema`` may extend CKASettings)."""
    return check(typed(cfg.analysis, schema, "analysis"), cfg)


def taps_of(s: CKASettings, model: Classifier) -> tuple[str, ...]:
    """The taps to compare: ``blocks`` (default), ``all`` layers, or a list; forward order."""
    return taps_in(model, "analysis.taps", s.taps)


def sample(s: CKASettings, ctx: RunContext) -> InputSource:
    """The seeded test sample in CKA batches (one batch of all examples in exact mode)."""
    batch_size = (s.examples or 1 << 30) if s.exact else s.batch_size
    return inputs.sample(
        ctx, examples=s.examples, batch_size=batch_size, with_attack=s.inputs == "adversarial"
    )


def describe_inputs(s: CKASettings, source: InputSource, target_label: str | None) -> str:
    """One line naming the inputs; ``target_label`` names the model attacks are crafted
    against when ``attack_target=model``."""
    return source.describe(s.inputs, target_label if s.attack_target == "model" else None)


def compute(
    s: CKASettings,
    ctx: RunContext,
    members: Sequence[Member],
    source: InputSource,
    target_index: int,
    groups: Sequence[Sequence[str]] | None = None,
) -> JointCKA:
    """The joint CKA of ``members`` over the sample, with the configured estimator.

    Adversarial inputs are crafted against ``members[target_index]`` (``attack_target=model``)
    or against each member itself (``own``).
    """
    models = [m.model for m in members]
    target = target_index if s.attack_target == "model" else None
    stream = (x for x, _ in source.for_models(models, s.inputs, target, min_batch=MIN_BATCH))
    result = api.joint_cka(
        members,
        stream,
        estimator=s.estimator,
        kernel=s.kernel,
        rbf_threshold=float(s.rbf_threshold),
        features=s.features,
        groups=groups,
        progress=ctx.progress,
        batches=source.kept_batches(MIN_BATCH),
    )
    log.info(  # the estimator's description is in the summary and every figure's title
        "CKA over %d examples in %d batch%s",
        result.n_examples,
        result.n_batches,
        "" if result.n_batches == 1 else "es",
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
    """``<name>.csv`` (tap names on both axes) and ``<name>.png`` (heatmap)."""
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


def print_matrices(heading: str, blocks: dict[str, LayerCKA], cross: Sequence[str] = ()) -> None:
    """The terminal summary of CKA matrices: per matrix its size, range, median, mean
    off-diagonal (square matrices) and, for the ``cross`` ones (two models), the mean
    same-layer CKA (taps both models share)."""
    from reprlab.io.tables import print_table

    rows = []
    for name, block in blocks.items():
        values = block.matrix.double()
        square = values.shape[0] == values.shape[1] and block.row_taps == block.col_taps
        _, diagonal = same_layer(block) if name in cross else ([], [])
        rows.append(
            {
                "matrix": name,
                "layers": f"{values.shape[0]}×{values.shape[1]}",
                "min": float(values.min()),
                "median": float(np.median(values.numpy())),
                "max": float(values.max()),
                "mean off-diagonal": mean_off_diagonal(values) if square else float("nan"),
                "mean same-layer": float(np.mean(diagonal)) if len(diagonal) else float("nan"),
            }
        )
    print_table(rows, title=heading, common=False)


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
    s: CKASettings, ctx: RunContext, what: str, result: JointCKA | LayerCKA, description: str
) -> str:
    """A figure title naming models, dataset, estimator, N and the inputs."""
    batching = "exact" if result.n_batches == 1 else "minibatch"
    estimator = f"{s.estimator} {s.kernel} CKA, {batching}"
    return f"{what} · {ctx.dataset.name} · {estimator} · N={result.n_examples}\n{description}"


def summary_base(result: JointCKA | LayerCKA, description: str) -> dict[str, Any]:
    """The summary fields every CKA analysis reports: sample, batching, estimator, inputs."""
    return {
        "examples": result.n_examples,
        "batches": result.n_batches,
        "estimator": result.estimator,
        "inputs": description,
    }
