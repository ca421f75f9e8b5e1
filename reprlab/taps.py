"""Capturing activations at a model's named taps.

A tap's activation is the output of its submodule, cloned at capture time: in-place ReLUs and
modules called twice (torchvision's BasicBlock reuses one ReLU) would otherwise corrupt it. A tap
that fires zero times or more than once in one forward pass is an error, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reprlab.errors import ReprlabError
from reprlab.models.base import Classifier


class TapError(RuntimeError):
    """A tap fired zero or several times in one forward pass."""


class TapRecorder:
    """Context manager that records the listed taps of ``model`` during forward passes.

    Use :meth:`forward` (or call the model and then :meth:`collect`) inside the ``with`` block.
    ``detach=True`` (default) stores detached clones; ``detach=False`` keeps the autograd graph
    (for objectives on intermediate representations).
    """

    def __init__(
        self, model: Classifier, taps: Sequence[str] | None = None, *, detach: bool = True
    ) -> None:
        names = list(model.tap_points) if taps is None else list(taps)
        unknown = [name for name in names if name not in model.tap_points]
        if unknown:
            raise ReprlabError(
                f"unknown tap(s) {', '.join(unknown)} for {model.arch}; "
                f"available: {', '.join(model.tap_points)}"
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ReprlabError(
                f"tap(s) {', '.join(repeated)} listed more than once; list each once"
            )
        self.model = model
        self.names = names
        self.detach = detach
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def __enter__(self) -> TapRecorder:
        self._clear()
        for name in self.names:
            module = self.model.get_submodule(self.model.tap_points[name])
            self._handles.append(module.register_forward_hook(self._hook_for(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, name: str):
        def hook(_module, _inputs, output):
            tensor = output.detach() if self.detach else output
            self._captured[name].append(tensor.clone())

        return hook

    def _clear(self) -> None:
        for values in self._captured.values():
            values.clear()

    def collect(self) -> dict[str, torch.Tensor]:
        """Return the activations of the last forward pass, tap name -> tensor, forward order.

        Raises :class:`TapError` if any tap fired a number of times other than once.
        """
        counts = {name: len(values) for name, values in self._captured.items()}
        wrong = {name: count for name, count in counts.items() if count != 1}
        if wrong:
            self._clear()
            raise TapError(
                f"taps of {self.model.arch} must fire exactly once per forward pass; "
                f"times fired: {wrong}"
            )
        return {name: values.pop() for name, values in self._captured.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model on ``x``; return (logits, activations at the recorded taps)."""
        self._clear()  # drop leftovers of a forward pass that raised before collect()
        logits = self.model(x)
        return logits, self.collect()


def capture(
    model: Classifier, x: torch.Tensor, taps: Sequence[str] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of ``model`` on ``x``; return (logits, detached clones of the taps)."""
    with TapRecorder(model, taps) as recorder:
        return recorder.forward(x)


def representation(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The penultimate representation [n, d] of ``x``, differentiable with respect to ``x``."""
    with TapRecorder(model, [model.representation_tap], detach=False) as recorder:
        _, activations = recorder.forward(x)
    return activations[model.representation_tap].flatten(1)


def select_taps(model: Classifier, spec: str | Sequence[str] = "blocks") -> tuple[str, ...]:
    """The taps named by ``spec`` in forward order: ``"blocks"`` or a list of tap names."""
    if isinstance(spec, str) and spec == "blocks":
        return tuple(model.tap_names)
    if isinstance(spec, str):
        raise ReprlabError(f"unknown tap selection {spec!r}; use blocks or a list of taps")
    unknown = [t for t in spec if t not in model.tap_points]
    if unknown:
        raise ReprlabError(
            f"unknown tap(s) {', '.join(unknown)} for {model.arch}; "
            f"available: {', '.join(model.tap_names)}"
        )
    return tuple(t for t in model.tap_names if t in set(spec))
