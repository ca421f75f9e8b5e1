"""Inverting representations (Engstrom et al. 2019, "Adversarial robustness as a prior for learned
representations"): inversion, the representation-distance curve, feature visualisation, feature
manipulation and interpolation.

Every optimisation here is :class:`reprlab.core.optimize.InputOptimizer` with L2-normalised steps in
the [0, 1] image box (or an L2 ball around a source image for the distance curve), on a
:class:`~reprlab.core.representation.Representation`: a model's activation at one tap, flattened,
differentiable in the input, optionally with the `robustness` library's ``fake_relu``.
Distances in representation space are relative, ``‖R(x) − r‖₂ / ‖r‖₂`` (the paper's loss);
distances in pixel space are L2 in [0, 1] pixel units and SSIM (``torchmetrics``).

Computation only: tensors and models in, tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reprlab.core.optimize import InputOptimizer, OptimResult, Transform
from reprlab.core.representation import Representation, match_representation, relative_distance

SEED_MEAN = 0.5
SEED_STD = 1 / 20
"""The paper's inversion seeds: N(0.5, (1/20)²) per pixel, clamped to [0, 1]."""


def noise_seeds(
    shape: Sequence[int],
    *,
    mean: float = SEED_MEAN,
    std: float = SEED_STD,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Seed images of ``shape`` [n, c, h, w]: N(mean, std²) per pixel, clamped to [0, 1].

    Draws come from ``generator`` (on its own device), then move to ``device``.
    """
    where = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=where)
    return (mean + std * noise).clamp(0.0, 1.0).to(device)


def invert(
    represent: Representation,
    targets: torch.Tensor,
    seeds: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    trace: bool = False,
) -> OptimResult:
    """Invert the representations of images ``targets`` from ``seeds`` (both [n, c, h, w]).

    Engstrom et al. 2019, Sec. 3: minimise ‖R(x) − R(x_t)‖₂ / ‖R(x_t)‖₂ in the image box with
    L2-normalised steps (paper: step 1, 10,000 steps on ImageNet). See
    :func:`match_representation` for the result.
    """
    return match_representation(
        represent, represent.encode(targets), seeds, steps=steps, step_size=step_size, trace=trace
    )


def different_class_partners(labels: torch.Tensor) -> torch.Tensor:
    """For each example i, the first later example (cyclically) of another class: int64 [n].

    Pairs (i, partner[i]) are the (source, target) pairs of the distance curve and the endpoints
    of interpolation paths. Raises ``ValueError`` when every example has the same label.
    """
    labels = labels.cpu()
    n = len(labels)
    partners = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        for shift in range(1, n):
            j = (i + shift) % n
            if labels[j] != labels[i]:
                partners[i] = j
                break
        else:
            raise ValueError("pairs of different classes need examples of at least two classes")
    return partners


@dataclass(frozen=True)
class DistanceCurve:
    """What :func:`distance_curve` returns.

    ``eps`` [k] the radii; ``distance`` [k, n] the relative representation distance reached
    from each source within each radius; ``start`` [n] the distance at the source itself (ε = 0);
    ``images``: radius -> the inputs reached [n, c, h, w], for the radii asked to keep.
    """

    eps: torch.Tensor
    distance: torch.Tensor
    start: torch.Tensor
    images: dict[float, torch.Tensor]


def distance_curve(
    represent: Representation,
    sources: torch.Tensor,
    targets: torch.Tensor,
    eps: Sequence[float],
    *,
    steps: int,
    step_fraction: float,
    keep: Sequence[float] = (),
) -> DistanceCurve:
    """Engstrom et al. 2019, Fig. 4: how close to ``R(target)`` an input within ε of the source
    gets, for each ε.

    For each radius ε in ``eps`` (> 0): minimise ``relative_distance(R(x), R(x_t))`` over
    ``‖x − x_s‖₂ ≤ ε`` ∩ box, starting at the source, ``steps`` L2-normalised steps of
    ``step_fraction · ε`` (keep-best), each radius warm-started from the inputs reached at the
    next smaller one (so the distance never grows with ε). ``keep``: radii (members of ``eps``)
    whose images to return.
    """
    target = represent.encode(targets)
    start = relative_distance(represent.encode(sources), target)
    distances, images = {}, {}
    reached = sources
    for radius in sorted(float(r) for r in eps):
        if not radius > 0:
            raise ValueError(f"every radius must be > 0, got {radius}")
        # Warm start from the previous (smaller) radius: feasible here, and keep-best ranks it,
        # so the distance reached never grows with ε.
        result = match_representation(
            represent,
            target,
            reached,
            steps=steps,
            step_size=step_fraction * radius,
            eps=radius,
            centre=sources,
        )
        reached = result.x
        distances[radius] = result.value
        if radius in keep:
            images[radius] = result.x
    return DistanceCurve(
        eps=torch.tensor([float(r) for r in eps]),
        distance=torch.stack([distances[float(r)] for r in eps]),
        start=start,
        images=images,
    )


def visualise_features(
    represent: Representation,
    coordinates: torch.Tensor,
    starts: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    transform: Transform | None = None,
    generator: torch.Generator | None = None,
) -> OptimResult:
    """Maximise coordinate ``coordinates[i]`` of ``R`` from ``starts[i]``, for every i.

    Engstrom et al. 2019, Sec. 4.1: L2-normalised steps in the box (paper: 200 steps of 1).
    ``transform`` (e.g. :func:`reprlab.core.optimize.jitter` composed with
    :func:`~reprlab.core.optimize.rotation`) makes it the regularised visualisation of standard
    models
    the paper compares against; then the last iterate is returned (values of transformed inputs
    do not rank iterates), otherwise the best. ``value``: the coordinate reached [n].
    """
    coordinates = coordinates.to(starts.device)
    rows = torch.arange(len(coordinates), device=starts.device)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return represent(x)[rows, coordinates]

    optimizer = InputOptimizer(
        steps=steps,
        step_size=step_size,
        step="l2",
        maximize=True,
        keep_best=transform is None,
        transform=transform,
    )
    return optimizer(objective, starts, start=starts, generator=generator)


def top_activating(
    activations: torch.Tensor, coordinates: Sequence[int], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``k`` examples that activate each coordinate most and least.

    ``activations`` [N, d]; returns (top, bottom), each int64 [len(coordinates), k], the top in
    decreasing and the bottom in increasing order of the activation.
    """
    columns = activations[:, list(coordinates)].T
    k = min(k, activations.shape[0])
    top = columns.topk(k, dim=1).indices
    bottom = columns.topk(k, dim=1, largest=False).indices
    return top, bottom


def most_variable(activations: torch.Tensor, count: int) -> list[int]:
    """The ``count`` coordinates of ``activations`` [N, d] of highest variance, decreasing."""
    variance = activations.double().var(dim=0)
    return variance.topk(min(count, activations.shape[1])).indices.tolist()


@dataclass(frozen=True)
class Manipulation:
    """What :func:`manipulate_features` returns, per (image, coordinate) example [n].

    ``x`` the manipulated images; ``success`` whether the coordinate became the largest;
    ``already`` whether it was the largest before any step; ``value`` the coordinate reached.
    """

    x: torch.Tensor
    success: torch.Tensor
    already: torch.Tensor
    value: torch.Tensor


def manipulate_features(
    represent: Representation,
    images: torch.Tensor,
    coordinates: torch.Tensor,
    *,
    steps: int,
    step_size: float,
) -> Manipulation:
    """Raise coordinate ``coordinates[i]`` of ``R(images[i])`` until it is the largest coordinate.

    Engstrom et al. 2019, Sec. 4.2 (feature manipulation; their stopping rule): L2-normalised
    ascent steps in the box, each example frozen at its first iterate where the coordinate is the
    largest (``stop_on_success``), or after ``steps`` (paper: 800 steps of 0.1 on ImageNet).
    """
    coordinates = coordinates.to(images.device)
    rows = torch.arange(len(coordinates), device=images.device)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = represent(x)
        return r[rows, coordinates], r.argmax(dim=1) == coordinates

    already = represent.encode(images).argmax(dim=1) == coordinates
    optimizer = InputOptimizer(
        steps=steps, step_size=step_size, step="l2", maximize=True, stop_on_success=True
    )
    result = optimizer(objective, images, start=images)
    return Manipulation(x=result.x, success=result.success, already=already, value=result.value)


def interpolate(
    represent: Representation,
    first: torch.Tensor,
    second: torch.Tensor,
    lambdas: Sequence[float],
    *,
    steps: int,
    step_size: float,
) -> OptimResult:
    """Invert ``(1 − λ) R(x₁) + λ R(x₂)`` from the pixel interpolation ``(1 − λ) x₁ + λ x₂``.

    Engstrom et al. 2019, Sec. 4.3. ``first``, ``second`` [p, c, h, w]; the result holds
    [p · L] examples, pair-major (pair i, λ j at i·L + j), ``value`` the relative distance to the
    interpolated representation.
    """
    weights = torch.tensor([float(v) for v in lambdas], device=first.device)
    count = len(weights)
    w_pixels = weights.view(1, count, 1, 1, 1)
    pixels = (1 - w_pixels) * first.unsqueeze(1) + w_pixels * second.unsqueeze(1)
    r1, r2 = represent.encode(first), represent.encode(second)
    w_rep = weights.view(1, count, 1)
    target = (1 - w_rep) * r1.unsqueeze(1) + w_rep * r2.unsqueeze(1)
    return match_representation(
        represent,
        target.flatten(0, 1),
        pixels.flatten(0, 1),
        steps=steps,
        step_size=step_size,
    )


def pixel_l2(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖x − reference‖₂ per example, [n], in [0, 1] pixel units."""
    return (x - reference).flatten(1).norm(dim=1)


def ssim(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of each image with its reference, [n] in [-1, 1].

    ``torchmetrics``' implementation (Gaussian window σ = 1.5, 11 pixels or the largest odd
    size that fits smaller images, data range 1).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    side = min(x.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    return structural_similarity_index_measure(
        x.float(),
        reference.float(),
        data_range=1.0,
        kernel_size=kernel,
        sigma=1.5 * kernel / 11,
        reduction="none",
    )
