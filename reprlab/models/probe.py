"""Finding a network's taps by one probe forward pass, and capturing module outputs with hooks.

A *block tap* is the output of one stage of a :class:`~reprlab.models.base.Classifier`; a *layer
tap* is the output of one call of a leaf conv, BatchNorm, ReLU, pooling or linear module (the
layers Cianfarani et al. 2022 compare). Which layers run, in which order, how often and in which
stage is read off one forward pass; a module called ``k > 1`` times per forward pass gives the
taps ``path@1`` ... ``path@k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.SiLU,  # the DeepMind WideResNet's Swish
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Linear,
)
"""Leaf module types whose outputs are layer taps."""

CALL_SEP = "@"
"""Separates a module path from its call number in the names of reused modules' taps."""


class TapError(RuntimeError):
    """A hooked module fired a number of times other than the probe found (or zero/several)."""


@dataclass(frozen=True)
class TapInfo:
    """Where one tap sits in the forward pass.

    Attributes
    ----------
    name:
        Tap name (a stage name, a module path, or ``path@k``).
    kind:
        ``"block"`` (a stage's output: the network can be cut there) or ``"layer"``.
    module:
        Dotted path (relative to ``net``) of the module whose output the tap is.
    call:
        Which call of ``module`` in one forward pass (1-based).
    stage:
        Index of the stage during which the tap fires.
    shape:
        Per-example activation shape at the model's input shape.
    """

    name: str
    kind: str
    module: str
    call: int
    stage: int
    shape: tuple[int, ...]

    @property
    def splittable(self) -> bool:
        """True for block taps: ``front``/``back`` can cut the network there."""
        return self.kind == "block"


@dataclass(frozen=True)
class Probe:
    """What one probe forward pass found.

    ``taps``: every tap (block and layer), forward order. ``calls``: module path -> the stage
    index of each of its calls, in call order, for every module a tap refers to.
    """

    taps: tuple[TapInfo, ...]
    calls: dict[str, tuple[int, ...]]

    def expected_calls(self, module: str, last_stage: int) -> int:
        """How often ``module`` runs in stages ``0..last_stage``."""
        return sum(stage <= last_stage for stage in self.calls[module])


def is_layer(module: nn.Module) -> bool:
    """True for a leaf module of one of :data:`LAYER_TYPES`."""
    return isinstance(module, LAYER_TYPES) and next(module.children(), None) is None


@contextmanager
def _eval_no_grad(root: nn.Module) -> Iterator[None]:
    flags = [(module, module.training) for module in root.modules()]
    root.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def probe_taps(
    net: nn.Module,
    stages: Sequence[tuple[str, Sequence[str]]],
    stage_modules: Sequence[Sequence[nn.Module]],
    h: torch.Tensor,
) -> Probe:
    """Run ``stage_modules`` on ``h`` (normalised input, batch of 1) and locate every tap.

    Runs in eval mode under ``no_grad`` and restores every module's train/eval flag. Raises
    ``ValueError`` if a layer tap's name equals a stage name.
    """
    layers = {path for path, module in net.named_modules() if path and is_layer(module)}
    stage_ends = {paths[-1] for _, paths in stages}
    events: list[tuple[str, int, tuple[int, ...]]] = []  # (module path, stage, per-example shape)
    current = [0]

    def hook_for(path: str):
        def hook(_module, _inputs, output):
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            events.append((path, current[0], shape))

        return hook

    handles = [
        net.get_submodule(path).register_forward_hook(hook_for(path))
        for path in sorted(layers | stage_ends)
    ]
    ends: list[int] = []  # per stage: index in events of the call that produced its output
    try:
        with _eval_no_grad(net):
            for index, modules in enumerate(stage_modules):
                current[0] = index
                for module in modules:
                    h = module(h)
                last = stages[index][1][-1]
                ends.append(max(i for i, e in enumerate(events) if e[0] == last and e[1] == index))
    finally:
        for handle in handles:
            handle.remove()

    calls: dict[str, list[int]] = {}
    call_number: list[int] = []
    for path, stage, _ in events:
        calls.setdefault(path, []).append(stage)
        call_number.append(len(calls[path]))
    block_at = {event: index for index, event in enumerate(ends)}
    taps: list[TapInfo] = []
    for i, (path, stage, shape) in enumerate(events):
        if path in layers:
            name = path if len(calls[path]) == 1 else f"{path}{CALL_SEP}{call_number[i]}"
            taps.append(TapInfo(name, "layer", path, call_number[i], stage, shape))
        if i in block_at:
            name = stages[block_at[i]][0]
            taps.append(TapInfo(name, "block", path, call_number[i], stage, shape))
    block_names = {name for name, _ in stages}
    clashes = [t.name for t in taps if t.kind == "layer" and t.name in block_names]
    if clashes:
        raise ValueError(f"layer tap name(s) {clashes} equal stage names; rename the stages")
    return Probe(taps=tuple(taps), calls={p: tuple(s) for p, s in calls.items()})


class CallCapture:
    """Forward hooks that keep chosen calls' outputs of chosen modules and count every call.

    ``targets``: tap name -> (module path under ``root``, call number, 1-based). ``expected``:
    module path -> calls per pass. Outputs are cloned (detached first if ``detach``), so later
    in-place ops cannot change them. Use as a context manager; :meth:`collect` after each pass.
    """

    def __init__(
        self,
        root: nn.Module,
        targets: Mapping[str, tuple[str, int]],
        expected: Mapping[str, int],
        *,
        detach: bool,
    ) -> None:
        self.root = root
        self.targets = dict(targets)
        self.expected = dict(expected)
        self.detach = detach
        self._wanted: dict[str, dict[int, str]] = {}
        for name, (path, call) in self.targets.items():
            self._wanted.setdefault(path, {})[call] = name
        self._counts: dict[str, int] = {}
        self._values: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> CallCapture:
        self.reset()
        for path in self._wanted:
            hook = self._hook_for(path)
            self._handles.append(self.root.get_submodule(path).register_forward_hook(hook))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, path: str):
        wanted = self._wanted[path]

        def hook(_module, _inputs, output):
            count = self._counts[path] = self._counts.get(path, 0) + 1
            name = wanted.get(count)
            if name is not None:
                self._values[name] = (output.detach() if self.detach else output).clone()

        return hook

    def reset(self) -> None:
        """Forget what was captured and counted so far."""
        self._counts.clear()
        self._values.clear()

    def collect(self) -> dict[str, torch.Tensor]:
        """Tap name -> captured tensor, in the order of ``targets``; then :meth:`reset`.

        Raises :class:`TapError` if a hooked module ran a number of times other than expected.
        """
        wrong = {
            path: self._counts.get(path, 0)
            for path in self._wanted
            if self._counts.get(path, 0) != self.expected[path]
        }
        if wrong:
            self.reset()
            detail = ", ".join(
                f"{p} ran {n}x, expected {self.expected[p]}" for p, n in wrong.items()
            )
            raise TapError(f"hooked modules ran an unexpected number of times: {detail}")
        values = {name: self._values[name] for name in self.targets}
        self.reset()
        return values
