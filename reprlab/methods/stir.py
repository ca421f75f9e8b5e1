"""STIR: shared invariance of two networks (Nanda et al., ICML 2022), tensors in, numbers out.

``STIR(m2 | m1)`` asks how much of ``m1``'s invariance ``m2`` shares:

1. from seed images S (default: i.i.d. N(0, 1) per pixel, clamped into the [0, 1] box), find
   *identically represented inputs* (IRIs) X′ that the reference model ``m1`` represents like the
   inputs X at a tap, by minimising the relative representation distance
   ``‖m1(x′) − m1(x)‖₂ / ‖m1(x)‖₂`` per image (:func:`find_iris`: L2-normalised gradient steps of
   0.5, 1000 steps, the [0, 1] box as the only constraint, the best iterate kept per image — the
   authors' defaults, all settable);
2. ``STIR(m2 | m1) = CKA(m2(X), m2(X′))`` with linear CKA over the whole set (:func:`stir`).

``STIR(m | m)`` is ≈ 1 when the search succeeds; CKA of ``m2`` on X and the raw seeds S is the
baseline a shared invariance must beat. Unlike the authors' package, which keeps the CKA of the
last batch only, CKA here is computed over all N inputs: exactly (Kornblith et al.'s linear CKA on
one Gram of all N) or, for large N, with the unbiased minibatch estimator (Nguyen et al. 2021).

Computation only: no configs, files or stores. The search runs on
:class:`reprlab.core.optimize.InputOptimizer`; the objective stops the forward pass at the tap
(:meth:`reprlab.models.Classifier.features`); CKA comes from :mod:`reprlab.methods.similarity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from reprlab.core.fit import requires_grad_off
from reprlab.core.representation import (
    Representation,
    match_representation,
    relative_distance,
)
from reprlab.errors import ReprlabError
from reprlab.methods.similarity import MinibatchCKA, cka
from reprlab.models import Classifier
from reprlab.runtime import module_mode

SEED_KINDS = ("normal", "uniform", "shared", "reversed")
"""Seed images: ``normal`` i.i.d. N(0, 1) per pixel and image (the authors' default), ``uniform``
i.i.d. U(0, 1), ``shared`` one N(0, 1) image for the whole set, ``reversed`` the inputs themselves
in reverse order (each image starts from another real image)."""

ESTIMATORS = ("exact", "minibatch")
"""``exact``: linear CKA (Kornblith et al.) on the Gram of all N inputs; ``minibatch``: the
unbiased HSIC accumulated over batches (Nguyen et al. 2021), for N too large for one Gram."""


TRUE_GRADIENT_ARCHS = ("vgg", "inception")
"""Architecture families the authors' package searches with the true ReLU gradient; every other
one it searches with ``fake_relu=True`` (:func:`authors_fake_relu`)."""


def authors_fake_relu(arch: str) -> bool:
    """The authors' rule (``stir-invariance``): search IRIs with ``fake_relu`` -- the last ReLU
    before the tap passes gradient through dead units -- for every architecture except VGG and
    Inception, whose implementations there have no fake ReLU."""
    name = arch.lower()
    return not any(family in name for family in TRUE_GRADIENT_ARCHS)


def seed_images(x: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Seed images [n, c, h, w] for the inputs ``x`` [n, c, h, w], in the [0, 1] box.

    ``kind`` is one of :data:`SEED_KINDS`. Random draws come from ``generator`` (a CPU generator
    makes the seeds the same on every device), drawn for the whole set at once so they do not
    depend on any batching; they are then clamped into [0, 1] — the point the search starts from
    (the optimiser would clamp them anyway). Returned on ``x``'s device, float32.
    """
    if kind not in SEED_KINDS:
        raise ReprlabError(f"unknown seed kind '{kind}'; use one of: {', '.join(SEED_KINDS)}")
    device = generator.device if generator is not None else torch.device("cpu")
    shape = tuple(x.shape)
    if kind == "normal":
        seeds = torch.randn(shape, generator=generator, device=device)
    elif kind == "uniform":
        seeds = torch.rand(shape, generator=generator, device=device)
    elif kind == "shared":
        seeds = torch.randn((1, *shape[1:]), generator=generator, device=device).expand(shape)
    else:
        seeds = x.flip(0)
    return seeds.to(x.device, torch.float32).clamp(0.0, 1.0).contiguous()


@dataclass(frozen=True)
class IRIs:
    """Identically represented inputs found by :func:`find_iris` (all on the inputs' device).

    - ``x_prime`` [n, c, h, w]: the best iterate per image, in [0, 1];
    - ``distance`` [n]: its relative representation distance to the target;
    - ``seed_distance`` [n]: the relative distance at the seed (the start).
    """

    x_prime: torch.Tensor
    distance: torch.Tensor
    seed_distance: torch.Tensor


def find_iris(
    model: Classifier,
    tap: str,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    steps: int = 1000,
    step_size: float = 0.5,
    batch_size: int = 100,
    precision: str = "fp32",
    fake_relu: bool = False,
    progress: bool = False,
) -> IRIs:
    """Inputs X′ that ``model`` represents at ``tap`` like ``x`` (Nanda et al. 2022, Sec. 3).

    Per image, minimises ``‖m(x′) − m(x)‖₂ / ‖m(x)‖₂`` from ``seeds`` (same shape as ``x``) with
    :class:`~reprlab.core.optimize.InputOptimizer`: ``steps`` L2-normalised gradient steps of
    ``step_size`` (pixel units), the [0, 1] box the only constraint, the best iterate per image
    kept (the seed included). Images are optimised ``batch_size`` at a time; each image's result
    is independent of the batching (the model runs in eval mode). The forward pass stops at
    ``tap``. ``precision="bf16"`` runs the model under bfloat16 autocast (the iterate and the
    distances stay float32). ``fake_relu=True`` makes the last ReLU before ``tap`` the identity in
    the backward pass (:func:`reprlab.core.taps.fake_relu`; the authors' package does so for all
    but VGG and Inception, :func:`authors_fake_relu`): values, and so the distances, are
    unchanged, but the search can move dead units.

    Cost: ``steps + 1`` forward and ``steps`` backward passes to the tap per image, plus one
    forward for the target and one for the seed distance.
    """
    if x.shape != seeds.shape:
        raise ValueError(f"seeds have shape {tuple(seeds.shape)}, the inputs {tuple(x.shape)}")
    represent = Representation(model, tap, fake_relu=fake_relu, precision=precision)
    found, distances, starts = [], [], []
    starts_of = range(0, x.shape[0], batch_size)
    bar = tqdm(starts_of, desc=f"IRIs of {model.arch} at {tap}", disable=None if progress else True)
    with module_mode(model, mode="eval"), requires_grad_off(list(model.parameters())):
        for start in bar:
            xb = x[start : start + batch_size]
            sb = seeds[start : start + batch_size].to(xb.device)
            target = represent.encode(xb)
            starts.append(relative_distance(represent.encode(sb), target))
            result = match_representation(
                represent, target, sb, steps=steps, step_size=step_size, centre=xb
            )
            found.append(result.x)
            distances.append(result.value)
    return IRIs(
        x_prime=torch.cat(found),
        distance=torch.cat(distances).float(),
        seed_distance=torch.cat(starts).float(),
    )


def linear_cka(
    a: torch.Tensor, b: torch.Tensor, *, estimator: str = "exact", batch_size: int = 500
) -> float:
    """Linear CKA of two representations [n, ...] of the same n inputs, over all n.

    ``estimator="exact"``: Kornblith et al.'s (biased-HSIC) linear CKA on the Gram of all n
    inputs (float64); ``"minibatch"``: the unbiased HSIC summed over consecutive batches of
    ``batch_size`` (Nguyen et al. 2021; a last batch under 4 inputs is dropped).
    Raises :class:`~reprlab.errors.ReprlabError` when a representation is constant over the set.
    """
    if estimator not in ESTIMATORS:
        raise ReprlabError(f"unknown CKA estimator '{estimator}'; use one of {ESTIMATORS}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CKA needs the same inputs on both sides: {a.shape[0]} vs {b.shape[0]}")
    if estimator == "exact":
        return cka(a, b, kernel="linear", unbiased=False)
    accumulator = MinibatchCKA(["a"], ["b"], kernel="linear", unbiased=True)
    for start in range(0, a.shape[0], batch_size):
        if a.shape[0] - start < 4:
            break
        accumulator.update([a[start : start + batch_size]], [b[start : start + batch_size]])
    return float(accumulator.compute()[0, 0])


def stir(
    model: Classifier,
    tap: str,
    x: torch.Tensor,
    x_prime: torch.Tensor,
    *,
    estimator: str = "exact",
    batch_size: int = 500,
    precision: str = "fp32",
    features_x: torch.Tensor | None = None,
) -> float:
    """``STIR(model | reference) = CKA(model(X), model(X′))`` at ``tap`` of ``model``.

    ``x_prime`` are the reference model's IRIs of ``x`` (:func:`find_iris`); ``features_x``
    (optional) are ``model``'s features of ``x`` at ``tap`` already computed
    (``Representation(model, tap).encode_all(x)``), to reuse across references.
    ``estimator`` and ``batch_size`` as in :func:`linear_cka` (``batch_size`` also batches the
    forward passes).
    """
    represent = Representation(model, tap, precision=precision)
    if features_x is None:
        features_x = represent.encode_all(x, batch_size)
    features_prime = represent.encode_all(x_prime, batch_size)
    return linear_cka(features_x, features_prime, estimator=estimator, batch_size=batch_size)
