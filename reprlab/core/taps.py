"""Activations at a model's named taps: recording during any forward pass, the representation.

The tap machinery itself lives on the model (:meth:`~reprlab.models.Classifier.features`,
``front``/``back``, :func:`~reprlab.models.select_taps`); this module adds what sits on top:
:class:`TapRecorder` for activations of forward passes someone else runs (a training or attack
loop calling ``model(x)``), the differentiable :func:`representation` (optionally with the
`robustness` library's ``fake_relu``, :func:`fake_relu`), and :func:`describe_taps` for the
``reprlab taps`` command. Captured tensors are clones, so in-place ReLUs and reused
modules cannot corrupt them; a hooked module that runs a number of times other than the probe
found is a :class:`TapError`, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.models.base import Classifier, TapSpec, select_taps
from reprlab.models.probe import CallCapture, TapError, TapInfo

__all__ = [
    "TapError",
    "TapRecorder",
    "describe_taps",
    "fake_relu",
    "last_relu",
    "straight_through_relu",
]


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


# --- fake_relu: the `robustness` library's straight-through last ReLU ---------------------------


class _StraightThroughReLU(torch.autograd.Function):
    """max(x, 0) forward; identity backward (the `robustness` library's ``FakeReLU``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def straight_through_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)`` whose gradient is the identity (dead units still pass gradient)."""
    return _StraightThroughReLU.apply(x)


def last_relu(model: Classifier, tap: str) -> TapInfo:
    """The last ``nn.ReLU`` call at or before ``tap`` in the forward pass (a layer tap).

    For a block tap this is the ReLU that ends the stage holding the tap or an earlier one (for
    the pooled ``pool`` representation of a ResNet: the final ReLU of the last residual block,
    as in the `robustness` library). ReLUs applied as functions (``F.relu``) are not modules and
    are not found. Raises :class:`ReprlabError` when no ReLU module runs before ``tap``.
    """
    (name,) = select_taps(model, [tap])
    taps = model.probe().taps
    position = next(i for i, t in enumerate(taps) if t.name == name)
    for info in reversed(taps[: position + 1]):
        if info.kind == "layer" and isinstance(model.net.get_submodule(info.module), nn.ReLU):
            return info
    raise ReprlabError(
        f"fake_relu: {model.arch} has no ReLU module at or before tap '{tap}'; set fake_relu=false"
    )


@contextmanager
def fake_relu(model: Classifier, tap: str | None = None) -> Iterator[TapInfo]:
    """Within the block, the last ReLU before ``tap`` is the identity in the backward pass.

    The `robustness` library's ``fake_relu=True`` (used by Engstrom et al. 2019 for inversion and
    feature visualisation): the forward values are unchanged, but units the ReLU zeroes still
    pass gradient to the input, so an optimisation can revive dead coordinates. ``tap`` defaults
    to the representation tap; the ReLU is :func:`last_relu`. Only that one call of the module
    changes (a module called several times, like torchvision's BasicBlock ``relu``, keeps its
    other calls). Reversible: the module's own ``forward`` is restored on exit. Yields the ReLU's
    :class:`~reprlab.models.probe.TapInfo`.
    """
    tap = model.representation_tap if tap is None else tap
    info = last_relu(model, tap)
    module = model.net.get_submodule(info.module)
    probe = model.probe()
    call_stages = probe.calls[info.module]
    # Which call of the module within its stage is the one to replace (1-based).
    wanted = sum(stage == info.stage for stage in call_stages[: info.call])
    counter = [0]
    handle = None
    if len(call_stages) > 1:
        first = model.net.get_submodule(model.stages[info.stage][1][0])
        if first is module:
            raise ValueError(f"cannot count calls of {info.module}: it opens its own stage")
        handle = first.register_forward_pre_hook(lambda *_: counter.__setitem__(0, 0))
    had_own = "forward" in module.__dict__
    original = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        if len(call_stages) == 1 or counter[0] == wanted:
            return straight_through_relu(x)
        return original(x)

    module.forward = forward
    try:
        yield info
    finally:
        if had_own:
            module.forward = original
        else:
            del module.forward
        if handle is not None:
            handle.remove()


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


_fake_relu_context = fake_relu  # ``representation``'s argument of the same name shadows it
