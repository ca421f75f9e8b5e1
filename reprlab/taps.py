"""Activations at a model's named taps: recording during any forward pass, the representation.

The tap machinery itself lives on the model (:meth:`~reprlab.models.Classifier.features`,
``front``/``back``, :func:`~reprlab.models.select_taps`); this module adds what sits on top:
:class:`TapRecorder` for activations of forward passes someone else runs (a training or attack
loop calling ``model(x)``), the differentiable :func:`representation`, and :func:`describe_taps`
for the ``reprlab taps`` command. Captured tensors are clones, so in-place ReLUs and reused
modules cannot corrupt them; a hooked module that runs a number of times other than the probe
found is a :class:`TapError`, never a silent guess.
"""

from __future__ import annotations

import torch

from reprlab.models.base import Classifier, TapSpec, select_taps
from reprlab.models.probe import CallCapture, TapError

__all__ = ["TapError", "TapRecorder", "describe_taps", "representation"]


class TapRecorder:
    """Context manager that records taps of ``model`` during full forward passes.

    ``taps``: as :func:`~reprlab.models.select_taps` (default: the block taps). Use
    :meth:`forward` (or call the model and then :meth:`collect`) inside the ``with`` block.
    ``detach=True`` (default) stores detached clones; ``detach=False`` keeps the autograd graph.
    """

    def __init__(
        self, model: Classifier, taps: TapSpec | None = None, *, detach: bool = True
    ) -> None:
        self.model = model
        self.names = select_taps(model, "blocks" if taps is None else taps)
        probe = model.probe()
        info = {t.name: t for t in probe.taps}
        targets = {name: (info[name].module, info[name].call) for name in self.names}
        expected = {path: len(probe.calls[path]) for path, _ in targets.values()}
        self._capture = CallCapture(model.net, targets, expected, detach=detach)

    def __enter__(self) -> TapRecorder:
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._capture.__exit__(*exc_info)

    def collect(self) -> dict[str, torch.Tensor]:
        """The activations of the last forward pass, tap name -> tensor, in forward order.

        Raises :class:`TapError` if a hooked module ran a number of times other than probed.
        """
        return self._capture.collect()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model on ``x``; return (logits, activations at the recorded taps)."""
        self._capture.reset()  # drop leftovers of a forward pass that raised before collect()
        logits = self.model(x)
        return logits, self.collect()


def representation(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The penultimate representation [n, d] of ``x``, differentiable with respect to ``x``.

    Runs the stages only up to the representation tap (never the final linear layer).
    """
    tap = model.representation_tap
    return model.features(x, [tap], detach=False)[tap].flatten(1)


def describe_taps(model: Classifier) -> list[dict[str, object]]:
    """One row per tap of ``model``, forward order, for people choosing taps.

    Keys: ``tap`` (name), ``kind`` (``block``/``layer``), ``shape`` (per-example activation
    shape at ``model.input_shape``, e.g. ``64x32x32``), ``splittable`` (``front``/``back`` can cut
    there), ``representation`` (the penultimate representation tap).
    """
    return [
        {
            "tap": t.name,
            "kind": t.kind,
            "shape": "x".join(str(d) for d in t.shape),
            "splittable": t.splittable,
            "representation": t.kind == "block" and t.name == model.representation_tap,
        }
        for t in model.probe().taps
    ]
