"""The classifier wrapper every architecture returns, and the architecture registry.

Every model in reprlab takes images in pixel space, float in [0, 1], shape [n, c, h, w], and
normalises them in its own first layer, so perturbation budgets, inversions and stitches are all
measured in pixel units. Every model declares its taps: named points of its forward pass, in
forward order, each the output of one submodule; one of them is the representation (the pooled
penultimate features that feed the final linear layer) and the last is ``logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reprlab.errors import ReprlabError


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


@dataclass(frozen=True)
class Body:
    """What an architecture constructor returns.

    Attributes
    ----------
    net:
        The network on normalised input, producing logits [n, num_classes].
    taps:
        Tap name -> dotted path of the submodule of ``net`` whose output the tap is, in forward
        order. The last tap must be ``logits`` (the final linear layer).
    representation:
        Name of the tap holding the pooled penultimate features (the final linear layer's input,
        shape [n, d]).
    """

    net: nn.Module
    taps: dict[str, str]
    representation: str


class Classifier(nn.Module):
    """``normalize`` then ``net``: a classifier on [0, 1] pixels that declares its taps.

    Attributes
    ----------
    arch:
        Registry name of the architecture.
    tap_points:
        Tap name -> dotted submodule path relative to this module (``net.<...>``), forward order.
    representation_tap:
        Name of the penultimate representation tap.
    """

    def __init__(self, arch: str, body: Body, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not body.taps or list(body.taps)[-1] != "logits":
            raise ValueError(f"{arch}: the last tap must be 'logits', got {list(body.taps)}")
        if body.representation not in body.taps:
            raise ValueError(f"{arch}: representation tap {body.representation!r} is not a tap")
        self.arch = arch
        self.normalize = Normalize(mean, std)
        self.net = body.net
        self.tap_points = {name: f"net.{path}" for name, path in body.taps.items()}
        self.representation_tap = body.representation
        for path in self.tap_points.values():
            self.get_submodule(path)  # fail at construction if a tap names no module

    @property
    def tap_names(self) -> list[str]:
        """Tap names in forward order."""
        return list(self.tap_points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


@dataclass(frozen=True)
class ArchInfo:
    """A registered architecture: its constructor and the input it is meant for."""

    name: str
    build: Callable[..., Body]
    description: str


_REGISTRY: dict[str, ArchInfo] = {}


def register_arch(
    name: str, description: str
) -> Callable[[Callable[..., Body]], Callable[..., Body]]:
    """Register ``fn(num_classes, in_channels, image_size) -> Body`` under ``name``."""

    def decorator(fn: Callable[..., Body]) -> Callable[..., Body]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = ArchInfo(name=name, build=fn, description=description)
        return fn

    return decorator


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
    return Classifier(arch, body, mean, std)
