"""Layer-by-layer CKA matrices of one model or between two, streamed batch by batch.

Reproduces the heatmaps of Cianfarani et al. (NeurIPS 2022): CKA between every pair of taps of
one network, or between the taps of two networks, on clean or adversarial inputs. Activations of
one batch at a time are reduced to Grams and fed to :class:`~reprlab.similarity.MinibatchCKA`;
the dataset's activations are never held, so memory is bounded by one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from reprlab.errors import ReprlabError
from reprlab.models.base import Classifier
from reprlab.similarity import MinibatchCKA
from reprlab.taps import TapRecorder


@dataclass(frozen=True)
class LayerCKA:
    """A layer x layer CKA matrix.

    Attributes
    ----------
    matrix:
        CKA [p, q] float64 on the CPU; entry (i, j) compares ``row_taps[i]`` with ``col_taps[j]``.
    row_taps, col_taps:
        Tap names of the first and second model, in forward order.
    n_examples, n_batches:
        Examples and batches the estimate was accumulated over.
    estimator:
        One line naming the estimator (HSIC variant, kernel, batching, feature reduction).
    """

    matrix: torch.Tensor
    row_taps: tuple[str, ...]
    col_taps: tuple[str, ...]
    n_examples: int
    n_batches: int
    estimator: str


@contextmanager
def _eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode; restore every submodule's own train/eval flag on exit."""
    flags = {id(module): (module, module.training) for m in models for module in m.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in flags.values():
            module.training = training


def _reduce(activation: torch.Tensor, pool: bool) -> torch.Tensor:
    """[n, ...] -> [n, d]: flatten, or average conv maps [n, c, *spatial] over space to [n, c]."""
    if pool and activation.ndim > 2:
        return activation.flatten(2).mean(dim=2)
    return activation.flatten(1)


def _batch_grams(
    model: Classifier,
    taps: Sequence[str],
    x: torch.Tensor,
    accumulator: MinibatchCKA,
    *,
    pool: bool,
    columns: bool,
) -> torch.Tensor:
    """One forward pass of ``model`` on ``x``; return the Grams [len(taps), n, n] of its taps."""
    if not isinstance(x, torch.Tensor):
        raise ReprlabError(
            f"CKA batches must be image tensors [n, c, h, w], got {type(x).__name__}; "
            "pass (x for x, _ in loader) to drop labels"
        )
    with torch.no_grad(), TapRecorder(model, taps) as recorder:
        _, activations = recorder.forward(x)
    features = {name: _reduce(activation, pool) for name, activation in activations.items()}
    return accumulator.grams(features, columns=columns)


def _paired(
    batches: Iterable[torch.Tensor], batches_b: Iterable[torch.Tensor] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x_a, x_b): each batch twice, or batches zipped with ``batches_b`` of equal length."""
    if batches_b is None:
        for x in batches:
            yield x, x
        return
    others = iter(batches_b)
    for x in batches:
        x_b = next(others, None)
        if x_b is None:
            raise ReprlabError("batches_b ran out before batches; give both the same batches")
        yield x, x_b
    if next(others, None) is not None:
        raise ReprlabError("batches_b has more batches than batches; give both the same batches")


def _describe(
    kernel: str, unbiased: bool, rbf_threshold: float, pool: bool, n_batches: int, n: int
) -> str:
    hsic = "unbiased HSIC (Song et al. 2012)" if unbiased else "biased HSIC"
    kernel_text = (
        f"RBF kernel (threshold {rbf_threshold:g})" if kernel == "rbf" else "linear kernel"
    )
    if n_batches == 1:
        batching = f"exact, one batch of {n} examples"
    else:
        batching = f"minibatch CKA (Nguyen et al. 2021) over {n_batches} batches, {n} examples"
    features = "global-average-pooled" if pool else "flattened"
    return f"{kernel_text}, {hsic}, {batching}, {features} features"


def layer_cka(
    model_a: Classifier,
    batches: Iterable[torch.Tensor],
    *,
    taps_a: Sequence[str] | None = None,
    model_b: Classifier | None = None,
    taps_b: Sequence[str] | None = None,
    batches_b: Iterable[torch.Tensor] | None = None,
    kernel: str = "linear",
    unbiased: bool = True,
    rbf_threshold: float = 1.0,
    pool: bool = False,
    progress: bool = True,
) -> LayerCKA:
    """CKA between every tap of ``model_a`` and every tap of ``model_b`` (default: ``model_a``).

    Parameters
    ----------
    model_a, model_b:
        Classifiers on the device of the batches. Both run in eval mode under ``torch.no_grad()``
        for the forward passes only (a generator of adversarial batches may still use gradients);
        every submodule's train/eval flag is restored afterwards.
    batches:
        Iterable of image batches [n, c, h, w] in [0, 1], each n >= 4 for the unbiased estimator.
        A single batch holding the whole set gives the exact (full-data) estimator: Kornblith et
        al.'s CKA when ``unbiased=False``, the debiased CKA when ``unbiased=True``.
    taps_a, taps_b:
        Taps of each model, default all of them in forward order.
    batches_b:
        Optional second stream fed to ``model_b`` (or to ``model_a`` again when ``model_b`` is
        None), batch for batch with ``batches``; e.g. clean vs adversarial inputs.
    kernel, unbiased, rbf_threshold:
        Estimator, see :class:`~reprlab.similarity.MinibatchCKA`.
    pool:
        Global-average-pool conv maps [n, c, h, w] to [n, c] instead of flattening them.
    progress:
        Show a tqdm bar over batches.

    With no second model, taps or stream, the matrix is within-model ([p, p], symmetric, unit
    diagonal) and each batch runs one forward pass and one set of Grams.
    """
    within = model_b is None and taps_b is None and batches_b is None
    second = model_a if model_b is None else model_b
    rows = list(model_a.tap_names if taps_a is None else taps_a)
    cols = list(second.tap_names if taps_b is None else taps_b)
    if not rows or not cols:
        raise ReprlabError("layer CKA needs at least one tap per model; check the tap lists")
    for model, taps in ((model_a, rows), (second, cols)):
        TapRecorder(model, taps)  # validates the tap names before any work
    accumulator = MinibatchCKA(
        rows,
        None if within else cols,
        kernel=kernel,
        unbiased=unbiased,
        rbf_threshold=rbf_threshold,
    )
    total = len(batches) if isinstance(batches, Sized) else None
    pairs = tqdm(
        _paired(batches, batches_b),
        total=total,
        disable=not progress,
        desc="layer CKA",
        unit="batch",
    )
    with _eval_mode(model_a, second):
        for x_a, x_b in pairs:
            grams_a = _batch_grams(model_a, rows, x_a, accumulator, pool=pool, columns=False)
            grams_b = None
            if not within:
                grams_b = _batch_grams(second, cols, x_b, accumulator, pool=pool, columns=True)
            accumulator.add_grams(grams_a, grams_b)
            del grams_a, grams_b  # free them before the next batch's forward pass
    matrix = accumulator.compute()
    return LayerCKA(
        matrix=matrix,
        row_taps=accumulator.row_names,
        col_taps=accumulator.col_names,
        n_examples=accumulator.n_examples,
        n_batches=accumulator.n_batches,
        estimator=_describe(
            kernel, unbiased, rbf_threshold, pool, accumulator.n_batches, accumulator.n_examples
        ),
    )
