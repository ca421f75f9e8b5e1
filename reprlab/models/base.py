"""The classifier wrapper every architecture returns, and the architecture registry.

Every model in reprlab takes images in pixel space, float in [0, 1], shape [n, c, h, w], and
normalises them in its own first layer, so perturbation budgets, inversions and stitches are all
measured in pixel units. Every architecture declares its forward pass as ordered *stages*; each
stage's output is a *block tap* where the network can be cut (``front`` / ``back``), one of them
is the representation (the pooled penultimate features that feed the final linear layer) and the
last is ``logits``. Every conv, BatchNorm, ReLU, pooling and linear output is a *layer tap*.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.models.probe import CallCapture, Probe, probe_taps


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on [n, c, h, w] pixel-space input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GlobalAvgPool(nn.Sequential):
    """Global average pooling then flatten: [n, c, h, w] -> [n, c], for any h, w.

    A real module (not a functional call) so that the pooled penultimate features can be a tap.
    It holds no parameters or buffers, so adding it leaves a network's state_dict keys unchanged.
    """

    def __init__(self) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


Stage = tuple[str, tuple[str, ...]]
"""``(tap name, module paths)``: the submodules of ``net`` one stage calls in sequence."""


def run_stages(root: nn.Module, stages: Sequence[Stage], x: torch.Tensor) -> torch.Tensor:
    """Call the modules of ``stages`` (dotted paths under ``root``) in sequence on ``x``."""
    for _, paths in stages:
        for path in paths:
            x = root.get_submodule(path)(x)
    return x


class StagedNet(nn.Module):
    """Base of reprlab's own networks: ``forward`` runs ``self.stages``, the one forward order.

    Subclasses set ``self.stages`` (a tuple of :data:`Stage`) in ``__init__``.
    """

    stages: tuple[Stage, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self, self.stages, x)


def block_stages(net: nn.Module, containers: Sequence[str]) -> tuple[Stage, ...]:
    """One stage ``("<c>.<i>", ("<c>.<i>",))`` per child of each named Sequential, in order."""
    return tuple(
        (f"{c}.{i}", (f"{c}.{i}",)) for c in containers for i in range(len(net.get_submodule(c)))
    )


def sequential_stages(net: nn.Sequential, cuts: Mapping[str, str]) -> tuple[Stage, ...]:
    """Stages of a Sequential: tap name -> the child whose output ends the tap's stage.

    ``cuts`` is in forward order and its last child must be the Sequential's last, e.g.
    ``{"hidden": "2", "logits": "3"}`` gives ``(("hidden", ("0", "1", "2")), ("logits", ("3",)))``.
    """
    children = [name for name, _ in net.named_children()]
    stages, start = [], 0
    for tap, child in cuts.items():
        if child not in children[start:]:
            raise ValueError(f"child {child!r} of tap {tap!r} is not a later child of the net")
        end = children.index(child, start) + 1
        stages.append((tap, tuple(children[start:end])))
        start = end
    if start != len(children):
        raise ValueError(f"the last cut must be the last child {children[-1]!r}")
    return tuple(stages)


@dataclass(frozen=True)
class Body:
    """What an architecture constructor returns.

    Attributes
    ----------
    net:
        The network on normalised input, producing logits [n, num_classes].
    stages:
        The forward pass of ``net`` as ordered stages ``(tap name, module paths)``: running the
        modules of every stage in sequence must be exactly ``net``'s forward. Each stage's output
        is a block tap; the last stage is ``logits`` (the final linear layer).
    representation:
        Name of the block tap holding the pooled penultimate features (the final linear layer's
        input, shape [n, d]).
    """

    net: nn.Module
    stages: tuple[Stage, ...]
    representation: str


TapSpec = str | Sequence[str]
"""``"blocks"``, ``"all"`` (the layer taps) or a list of tap names; see :func:`select_taps`."""


class Classifier(nn.Module):
    """``normalize`` then ``net``'s stages: a classifier on [0, 1] pixels with named taps.

    Block taps are the stage outputs (the network can be cut there with :meth:`front` and
    :meth:`back`); layer taps are the outputs of every conv, BatchNorm, ReLU, pooling and linear
    call (see :mod:`reprlab.models.probe`), found by one probe pass on first use and cached.

    Attributes
    ----------
    arch:
        Registry name of the architecture.
    stages:
        ``(tap name, module paths relative to net)``, forward order; see :class:`Body`.
    representation_tap:
        Name of the penultimate representation tap (a block tap).
    input_shape:
        ``(channels, image_size, image_size)`` of the pixel input the model is built for.
    """

    def __init__(
        self,
        arch: str,
        body: Body,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        image_size: int,
    ) -> None:
        super().__init__()
        names = [name for name, _ in body.stages]
        if not names or names[-1] != "logits":
            raise ValueError(f"{arch}: the last stage must be 'logits', got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"{arch}: stage names must be distinct, got {names}")
        if body.representation not in names:
            raise ValueError(f"{arch}: representation tap {body.representation!r} is not a stage")
        if any(not paths for _, paths in body.stages):
            raise ValueError(f"{arch}: every stage must call at least one module")
        self.arch = arch
        self.normalize = Normalize(mean, std)
        self.net = body.net
        self.stages = tuple((name, tuple(paths)) for name, paths in body.stages)
        self.representation_tap = body.representation
        self.input_shape = (len(mean), image_size, image_size)
        # Plain lists (not registered): state_dict is unchanged; deepcopy maps them to the copies.
        self._stage_modules = [
            [self.net.get_submodule(p) for p in paths] for _, paths in self.stages
        ]
        self._stage_index = {name: index for index, name in enumerate(names)}
        self._probe: Probe | None = None

    # --- taps ------------------------------------------------------------------------------

    @property
    def block_taps(self) -> tuple[str, ...]:
        """Stage names in forward order: the taps :meth:`front` and :meth:`back` can cut at."""
        return tuple(self._stage_index)

    @property
    def layer_taps(self) -> tuple[str, ...]:
        """Every conv, BatchNorm, ReLU, pooling and linear output, forward order (probed)."""
        return tuple(t.name for t in self.probe().taps if t.kind == "layer")

    def probe(self) -> Probe:
        """Every tap, block and layer, in forward order with its module, call, stage and shape.

        The first call runs one probe pass (eval mode, ``no_grad``, on one image of zeros of
        :attr:`input_shape`, train/eval flags restored); the result is cached on the model.
        """
        if self._probe is None:
            zeros = self.normalize.mean.new_zeros(1, *self.input_shape)
            self._probe = probe_taps(
                self.net, self.stages, self._stage_modules, self.normalize(zeros)
            )
        return self._probe

    def tap_shape(self, tap: str) -> tuple[int, ...]:
        """Per-example activation shape at ``tap`` (block or layer) for one image of
        :attr:`input_shape`, e.g. ``(64, 32, 32)``; read off the probe, nothing runs again."""
        (name,) = select_taps(self, [tap])
        return tuple(next(t.shape for t in self.probe().taps if t.name == name))

    # --- running ---------------------------------------------------------------------------

    def _run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for modules in self._stage_modules[start:stop]:
            for module in modules:
                h = module(h)
        return h

    def _split_index(self, tap: str) -> int:
        index = self._stage_index.get(tap)
        if index is None:
            raise ReprlabError(
                f"{self.arch} cannot be cut at '{tap}'; cut at a block tap: "
                f"{', '.join(self.block_taps)}"
            )
        return index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [n, num_classes] of pixels ``x`` [n, c, h, w] in [0, 1]."""
        return self._run(self.normalize(x), 0, len(self.stages))

    def front(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        """The activation at block tap ``tap`` of pixels ``x``: normalise, run stages to ``tap``."""
        return self._run(self.normalize(x), 0, self._split_index(tap) + 1)

    def back(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        """Logits from the activation ``h`` at block tap ``tap``: the stages after ``tap``.

        ``back(front(x, tap), tap)`` is ``forward(x)``.
        """
        return self._run(h, self._split_index(tap) + 1, len(self.stages))

    def between(self, h: torch.Tensor, tap: str, later: str) -> torch.Tensor:
        """The activation at block tap ``later`` from the activation ``h`` at block tap ``tap``:
        the stages after ``tap`` up to and including ``later`` (``later == tap``: ``h`` itself).

        ``between(front(x, tap), tap, later)`` is ``front(x, later)``; ``between(h, tap,
        "logits")`` is ``back(h, tap)``.
        """
        start, stop = self._split_index(tap), self._split_index(later)
        if stop < start:
            raise ReprlabError(f"{self.arch}: tap '{later}' comes before '{tap}'")
        return self._run(h, start + 1, stop + 1)

    def features(
        self, x: torch.Tensor, taps: TapSpec, *, detach: bool = True
    ) -> dict[str, torch.Tensor]:
        """Activations of pixels ``x`` [n, c, h, w] at ``taps`` (any mix of block and layer taps).

        Returns tap name -> tensor [n, ...], in forward order whatever the order asked. Runs the
        stages only up to the one holding the last requested tap, in the model's current mode.
        ``detach=True`` runs under ``no_grad``; ``detach=False`` keeps the autograd graph (for
        objectives on intermediate activations). A tensor a later op could change in place is a
        clone. Layer taps are hooked; a hooked module that runs a number of times other than
        the probe found raises :class:`~reprlab.models.probe.TapError`.
        """
        names = select_taps(self, taps)
        blocks = {name for name in names if name in self._stage_index}
        layers = [name for name in names if name not in blocks]
        last = max((self._stage_index[name] for name in blocks), default=-1)
        capture = None
        if layers:
            probe = self.probe()
            info = {t.name: t for t in probe.taps}
            last = max(last, *(info[name].stage for name in layers))
            targets = {name: (info[name].module, info[name].call) for name in layers}
            expected = {path: probe.expected_calls(path, last) for path, _ in targets.values()}
            capture = CallCapture(self.net, targets, expected, detach=detach)
        captured: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            with capture if capture is not None else nullcontext():
                h = self.normalize(x)
                for index in range(last + 1):
                    h = self._run(h, index, index + 1)
                    name = self.stages[index][0]
                    if name in blocks:
                        value = h.detach() if detach else h
                        captured[name] = value if index == last else value.clone()
            if capture is not None:
                captured.update(capture.collect())
        return {name: captured[name] for name in names}


def select_taps(model: Classifier, spec: TapSpec = "blocks") -> tuple[str, ...]:
    """Tap names of ``model`` for ``spec``, in forward order.

    ``spec`` is ``"blocks"`` (the stage outputs), ``"all"`` (the layer taps: every conv,
    BatchNorm, ReLU, pooling and linear output, as Cianfarani et al. 2022 tap them) or a sequence
    of tap names, any mix. Unknown or repeated names raise :class:`ReprlabError`.
    """
    if isinstance(spec, str):
        if spec == "blocks":
            return model.block_taps
        if spec == "all":
            return model.layer_taps
        raise ReprlabError(f"taps must be 'blocks', 'all' or a list of tap names, got '{spec}'")
    names = list(spec)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ReprlabError(f"tap(s) {', '.join(repeated)} listed more than once; list each once")
    if all(name in model.block_taps for name in names):
        return tuple(name for name in model.block_taps if name in set(names))
    order = [t.name for t in model.probe().taps]
    unknown = [name for name in names if name not in set(order)]
    if unknown:
        raise ReprlabError(
            f"unknown tap(s) {', '.join(unknown)} for {model.arch}; block taps: "
            f"{', '.join(model.block_taps)}; `reprlab taps model=<recipe>` lists every tap"
        )
    return tuple(name for name in order if name in set(names))


@dataclass(frozen=True)
class ArchInfo:
    """A registered architecture: its constructor and the input it is meant for.

    ``version`` is part of :func:`architecture_version`: bump it when a change to the
    architecture cannot be seen in its module structure (forward code such as the order of
    operations in a block, or the initialisation), so stored weights are not reused.
    """

    name: str
    build: Callable[..., Body]
    description: str
    version: int = 1


_REGISTRY: dict[str, ArchInfo] = {}


def register_arch(
    name: str, description: str, *, version: int = 1
) -> Callable[[Callable[..., Body]], Callable[..., Body]]:
    """Register ``fn(num_classes, in_channels, image_size) -> Body`` under ``name``.

    ``version``: bump it on a change the module structure does not show (see :class:`ArchInfo`);
    changes to layers, their hyperparameters, parameter shapes or stages change the key by
    themselves.
    """

    def decorator(fn: Callable[..., Body]) -> Callable[..., Body]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = ArchInfo(name=name, build=fn, description=description, version=version)
        return fn

    return decorator


_PLAIN = (bool, int, float, str, type(None))


def _module_settings(module: nn.Module) -> dict[str, Any]:
    """The hyperparameters of ``module`` that shape its computation.

    torch.nn layers: their ``__constants__`` (kernel size, stride, padding, eps, inplace, ...,
    stable across torch releases); other modules (reprlab's, torchvision's blocks): their public
    attributes of plain type (e.g. a block's stride).
    """
    if type(module).__module__.startswith("torch."):
        names = sorted(getattr(module, "__constants__", ()))
    else:
        names = sorted(k for k in vars(module) if not k.startswith("_") and k != "training")
    settings = {}
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, (list, tuple)):
            value = list(value)
        if isinstance(value, _PLAIN) or (
            isinstance(value, list) and all(isinstance(v, _PLAIN) for v in value)
        ):
            settings[name] = value
    return settings


@functools.cache
def architecture_version(arch: str, *, num_classes: int, in_channels: int, image_size: int) -> str:
    """A 16-hex-digit hash of architecture ``arch``'s definition, for store keys.

    Hashes the registered ``version`` (see :func:`register_arch`), the stages and the
    representation tap, every module in order (path, class name, :func:`_module_settings`) and
    every parameter and buffer (name, shape, dtype) of the network built for this input. So
    adding, removing or reshaping a layer, or changing a stride, padding, pooling or activation,
    changes it, while comments, formatting and refactorings that build the same network do not.
    Built on the ``meta`` device: no memory, no random draws, milliseconds.
    """
    if arch not in _REGISTRY:
        raise ReprlabError(
            f"unknown architecture '{arch}'; choose one of: {', '.join(available_archs())}"
        )
    info = _REGISTRY[arch]
    with torch.device("meta"):
        body = info.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    modules = [
        [path, type(module).__name__, _module_settings(module)]
        for path, module in body.net.named_modules()
    ]
    tensors = [
        [name, list(tensor.shape), str(tensor.dtype)]
        for name, tensor in body.net.state_dict(keep_vars=True).items()
    ]
    description = {
        "version": info.version,
        "stages": [[name, list(paths)] for name, paths in body.stages],
        "representation": body.representation,
        "modules": modules,
        "tensors": tensors,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def available_archs() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Classifier:
    """Build a freshly initialised :class:`Classifier` of registered architecture ``arch``.

    ``mean`` and ``std`` are the per-channel normaliser of the dataset (one value per input
    channel, pixel units); the returned model maps [n, in_channels, image_size, image_size]
    pixels in [0, 1] to logits [n, num_classes].
    """
    if arch not in _REGISTRY:
        raise ReprlabError(
            f"unknown architecture '{arch}'; choose one of: {', '.join(available_archs())}"
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ReprlabError(
            f"the normaliser has {len(mean)} mean and {len(std)} std values but the input has "
            f"{in_channels} channels; give one mean and one std per channel"
        )
    if any(s <= 0 for s in std):
        raise ReprlabError(f"normaliser std must be positive, got {list(std)}")
    body = _REGISTRY[arch].build(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
    return Classifier(arch, body, mean, std, image_size=image_size)
