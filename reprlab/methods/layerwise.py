"""Layer-by-layer CKA matrices of one model or between two, streamed batch by batch.

Reproduces the heatmaps of Cianfarani et al. (NeurIPS 2022): CKA between every pair of taps of
one network, or between the taps of two networks, on clean or adversarial inputs. Activations of
one batch at a time are reduced to Grams and fed to
:class:`~reprlab.methods.similarity.MinibatchCKA`;
the dataset's activations are never held, so memory is bounded by one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from reprlab.errors import ReprlabError
from reprlab.methods.similarity import MinibatchCKA, gram_stack
from reprlab.models.base import Classifier, select_taps
from reprlab.runtime import module_mode


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


def _reduce(activation: torch.Tensor, pool: bool) -> torch.Tensor:
    """[n, ...] -> [n, d]: flatten, or average conv maps [n, c, *spatial] over space to [n, c]."""
    if pool and activation.ndim > 2:
        return activation.flatten(2).mean(dim=2)
    return activation.flatten(1)


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


@dataclass(frozen=True)
class Member:
    """One model in a joint CKA computation: a label, the model and the taps to compare."""

    label: str
    model: Classifier
    taps: tuple[str, ...]


@dataclass(frozen=True)
class JointCKA:
    """CKA between the taps of several models, accumulated over the same batches.

    Each group of members has one matrix over all its members' taps ([P, P], float64, CPU),
    ordered member by member, each member's taps in forward order; :meth:`block` cuts out one
    member-vs-member matrix from a group holding both members.
    """

    groups: tuple[tuple[tuple[str, ...], torch.Tensor], ...]
    taps: dict[str, tuple[str, ...]]
    n_examples: int
    n_batches: int
    estimator: str

    @property
    def matrix(self) -> torch.Tensor:
        """The matrix of the only group (all members, when no groups were asked for)."""
        if len(self.groups) != 1:
            raise ValueError("this result has several groups; use block(row, col)")
        return self.groups[0][1]

    def block(self, row: str, col: str) -> LayerCKA:
        """The [p, q] matrix of member ``row``'s taps (rows) against member ``col``'s (columns)."""
        for labels, matrix in self.groups:
            if row in labels and col in labels:
                offsets, position = {}, 0
                for label in labels:
                    offsets[label] = position
                    position += len(self.taps[label])
                rows, cols = self.taps[row], self.taps[col]
                r0, c0 = offsets[row], offsets[col]
                return LayerCKA(
                    matrix=matrix[r0 : r0 + len(rows), c0 : c0 + len(cols)].clone(),
                    row_taps=rows,
                    col_taps=cols,
                    n_examples=self.n_examples,
                    n_batches=self.n_batches,
                    estimator=self.estimator,
                )
        raise KeyError(f"no group holds both {row!r} and {col!r}")


def joint_layer_cka(
    members: Sequence[Member],
    batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
    *,
    kernel: str = "linear",
    unbiased: bool = True,
    rbf_threshold: float = 1.0,
    pool: bool = False,
    groups: Sequence[Sequence[str]] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> JointCKA:
    """CKA between every pair of taps within each group of ``members``, in one pass over
    ``batches``.

    Each batch is one image tensor [n, c, h, w] in [0, 1] fed to every member, or a sequence with
    one tensor per member (e.g. each model's own adversarial examples of the same images; row i
    of every tensor must come from the same source example). Per batch, each member runs one
    forward pass in eval mode under ``torch.no_grad()`` and its taps are reduced to Grams at once;
    each group's members' Grams then feed that group's
    :class:`~reprlab.methods.similarity.MinibatchCKA`, so all blocks of a group come from the same
    estimator and the same examples. ``groups`` lists member labels (default: one group of all
    members); asking only for the pairs needed (e.g. each epoch with the final one) keeps the
    cost linear in the number of members instead of quadratic. Memory is bounded by one batch's
    Grams ([P, n, n] float64). Train/eval flags are restored. ``progress`` shows a bar over the
    batches, with its total and time left when ``total`` (or ``len(batches)``) gives their number.
    """
    if not members:
        raise ValueError("joint_layer_cka needs at least one member")
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels):
        raise ValueError(f"member labels must be distinct, got {labels}")
    groups = [tuple(labels)] if groups is None else [tuple(g) for g in groups]
    unknown = sorted({label for g in groups for label in g} - set(labels))
    if unknown or not all(groups):
        raise ValueError(f"groups must list member labels; unknown: {unknown}")
    for member in members:
        if not member.taps:
            raise ReprlabError(f"no taps to compare for {member.label}; check the tap lists")
        select_taps(member.model, member.taps)  # validates the tap names before any work
    by_label = {m.label: m for m in members}
    accumulators = [
        MinibatchCKA(
            [f"{label}:{tap}" for label in group for tap in by_label[label].taps],
            kernel=kernel,
            unbiased=unbiased,
            rbf_threshold=rbf_threshold,
        )
        for group in groups
    ]
    if total is None and isinstance(batches, Sized):
        total = len(batches)
    bar = tqdm(batches, total=total, disable=not progress, desc="layer CKA", unit="batch")
    with module_mode(*(m.model for m in members), mode="eval"):
        for batch in bar:
            inputs = _per_member(batch, len(members))
            grams = {
                member.label: _member_grams(member, x, accumulators[0], pool=pool)
                for member, x in zip(members, inputs, strict=True)
            }
            for group, accumulator in zip(groups, accumulators, strict=True):
                accumulator.add_grams(torch.cat([grams[label] for label in group]))
            del grams
    first = accumulators[0]
    return JointCKA(
        groups=tuple(
            (group, accumulator.compute())
            for group, accumulator in zip(groups, accumulators, strict=True)
        ),
        taps={m.label: tuple(m.taps) for m in members},
        n_examples=first.n_examples,
        n_batches=first.n_batches,
        estimator=_describe(
            kernel, unbiased, rbf_threshold, pool, first.n_batches, first.n_examples
        ),
    )


def _per_member(batch: torch.Tensor | Sequence[torch.Tensor], count: int) -> list[torch.Tensor]:
    inputs = [batch] * count if isinstance(batch, torch.Tensor) else list(batch)
    if len(inputs) != count or not all(
        isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= 2 for x in inputs
    ):
        raise ReprlabError(
            "CKA batches must be image tensors [n, c, h, w] (or a tuple with one per model); "
            "pass (x for x, _ in loader) to drop labels"
        )
    return inputs


def tap_features(
    model: Classifier, x: torch.Tensor, taps: Sequence[str], *, pool: bool = False
) -> list[torch.Tensor]:
    """What layer CKA compares on ``x``: [n, d] per tap, running only the stages it needs.

    Each tap's activation is flattened (or pooled, see ``pool`` of :func:`layer_cka`); the list
    follows ``taps``. This is all of a batch's work that is not CKA (``scripts/bench_cka.py``
    times it as the floor).
    """
    with torch.no_grad():
        activations = model.features(x, taps)
    return [_reduce(activations.pop(tap), pool) for tap in taps]


def _member_grams(
    member: Member, x: torch.Tensor, accumulator: MinibatchCKA, *, pool: bool
) -> torch.Tensor:
    """``member``'s stages up to its last tap on ``x``; the Grams [len(taps), n, n] of its taps."""
    features = tap_features(member.model, x, member.taps, pool=pool)
    return gram_stack(features, kernel=accumulator.kernel, rbf_threshold=accumulator.rbf_threshold)


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
        Classifiers on the device of the batches, run as in :func:`joint_layer_cka`.
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
        Estimator, see :class:`~reprlab.methods.similarity.MinibatchCKA`.
    pool:
        Global-average-pool conv maps [n, c, h, w] to [n, c] instead of flattening them.
    progress:
        Show a tqdm bar over batches.

    With no second model, taps or stream, the matrix is within-model ([p, p], symmetric, unit
    diagonal) and each batch runs one forward pass and one set of Grams.
    """
    rows = tuple(model_a.block_taps if taps_a is None else taps_a)
    members = [Member("a", model_a, rows)]
    stream: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = batches
    if model_b is not None or taps_b is not None or batches_b is not None:
        second = model_a if model_b is None else model_b
        members.append(Member("b", second, tuple(second.block_taps if taps_b is None else taps_b)))
        stream = _paired(batches, batches_b)
    joint = joint_layer_cka(
        members,
        stream,
        kernel=kernel,
        unbiased=unbiased,
        rbf_threshold=rbf_threshold,
        pool=pool,
        progress=progress,
    )
    return joint.block("a", members[-1].label)
