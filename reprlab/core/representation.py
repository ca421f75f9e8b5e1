"""The representation at a tap, and matching it: the one definition every study uses.

:class:`Representation` is ``R(x)``, a model's activation at one tap as [n, d] (inversion,
STIR's IRIs, the MI encoders); :func:`relative_distance` is ``‖r − t‖₂ / ‖t‖₂`` (Engstrom et
al.'s inversion loss, Nanda et al.'s IRI loss); :func:`match_representation` minimises it over
inputs on the one input optimiser, in the image box and optionally an L2 ball.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from reprlab.core.optimize import InputOptimizer, OptimResult
from reprlab.core.taps import fake_relu as fake_relu_context
from reprlab.models import Classifier

PRECISIONS = ("fp32", "bf16")

# A zero target representation makes the relative distance 0/0; it is divided by this instead.
_TINY = 1e-12


def autocast(device: torch.device, precision: str):
    """A bfloat16 autocast context for ``precision="bf16"``, else a null context."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; use one of {PRECISIONS}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class Representation:
    """``R(x)``: ``model``'s activation at ``tap`` of pixels ``x`` [n, c, h, w], as [n, d].

    Differentiable in ``x``; runs the model only up to ``tap``, in its current mode (callers put
    it in eval mode). ``fake_relu``: the last ReLU before the tap passes gradient as the identity
    (:func:`reprlab.core.taps.fake_relu`; the `robustness` library's ``FakeReLU``); values are
    unchanged. ``precision="bf16"`` runs the model under bfloat16 autocast; the result is float32.
    """

    model: Classifier
    tap: str
    fake_relu: bool = False
    precision: str = "fp32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        context = fake_relu_context(self.model, self.tap) if self.fake_relu else nullcontext()
        with context, autocast(x.device, self.precision):
            h = self.model.features(x, [self.tap], detach=False)[self.tap]
        return h.flatten(1).float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``R(x)`` without a graph (targets, activation statistics)."""
        with torch.no_grad(), autocast(x.device, self.precision):
            h = self.model.features(x, [self.tap])[self.tap]
        return h.flatten(1).float()

    def encode_all(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """``R(x)`` [n, d] float32 for many images, ``batch_size`` at a time, in eval mode
        (the model's mode is restored after), without a graph, on ``x``'s device."""
        from reprlab.runtime import module_mode

        with module_mode(self.model, mode="eval"):
            parts = [self.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(parts)

    @property
    def dim(self) -> int:
        """d, the number of coordinates of the representation."""
        return math.prod(self.model.tap_shape(self.tap))


def relative_distance(representation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖r − t‖₂ / ‖t‖₂`` per row of [n, d] tensors, [n] float32 (a zero target divides by
    1e-12)."""
    representation, target = representation.float(), target.float()
    norm = torch.linalg.vector_norm(target, dim=1).clamp_min(_TINY)
    return torch.linalg.vector_norm(representation - target, dim=1) / norm


def match_representation(
    represent: Representation,
    target: torch.Tensor,
    start: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    eps: float = math.inf,
    centre: torch.Tensor | None = None,
    trace: bool = False,
) -> OptimResult:
    """Minimise ``relative_distance(R(x), target)`` over x from ``start``; the best iterate.

    ``target`` [n, d] representations; ``start`` [n, c, h, w] in [0, 1]. L2-normalised steps of
    ``step_size`` (pixel units), keep-best (the start included); box only (``eps = inf``: the
    inversion paper's "ε = 1000" and STIR's IRI search) or the L2 ball of radius ``eps`` around
    ``centre`` (default: ``start``) intersected with the box. Each image's result is independent
    of the others in the batch when the model is in eval mode. Returns the optimiser's result:
    ``x`` the inputs reached, ``value`` their relative distances [n], ``trace`` [steps + 1, n]
    with ``trace=True``.
    """
    target = target.detach()

    def objective(x: torch.Tensor) -> torch.Tensor:
        return relative_distance(represent(x), target)

    optimizer = InputOptimizer(
        steps=steps,
        step_size=step_size,
        step="l2",
        norm="l2",
        eps=eps,
        maximize=False,
        keep_best=True,
        trace=trace,
    )
    return optimizer(objective, start if centre is None else centre, start=start)
