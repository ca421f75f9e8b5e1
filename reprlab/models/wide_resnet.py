"""WideResNets (Zagoruyko & Komodakis 2016) as used for CIFAR robustness (TRADES, Rice et al.).

Pre-activation BasicBlocks, width ``[16, 16k, 32k, 64k]``, depth ``6n + 4``. Module names follow
the TRADES / Rice ``wideresnet.py``: ``conv1``, ``block1..3.layer.<i>`` (``bn1``, ``conv1``,
``bn2``, ``conv2``, ``convShortcut`` where the width or stride changes), final ``bn1``, ``fc``.
That code also builds an unused ``sub_block1`` that never runs in ``forward``; it is left out
here, so an importer must drop ``sub_block1.*`` keys. ``relu`` and ``pool`` hold no state; pooling
is adaptive (at 32x32 it equals the original 8x8 average pool).

Stages (block taps): ``stem`` (conv1 output), one per block (``block1.0`` ...
``block3.<n-1>``), ``final`` (the last bn-relu), ``pool`` (the representation, [n, 64k]) and
``logits``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, StagedNet, register_arch


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice, plus the input (or a 1x1 conv of the pre-activated input)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return out + shortcut


class NetworkBlock(nn.Module):
    """``count`` WideBasicBlocks under ``layer``; the first one changes width and stride."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1
                )
                for i in range(count)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(StagedNet):
    """WRN-depth-widen on normalised [n, in_channels, h, w] input -> logits [n, num_classes]."""

    def __init__(self, depth: int, widen: int, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(per_stage, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(per_stage, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(per_stage, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_like_reference()
        self.stages = (
            ("stem", ("conv1",)),
            *(
                (f"{stage}.{i}", (f"{stage}.layer.{i}",))
                for stage in ("block1", "block2", "block3")
                for i in range(per_stage)
            ),
            ("final", ("bn1", "relu")),
            ("pool", ("pool",)),
            ("logits", ("fc",)),
        )

    def _init_like_reference(self) -> None:
        """He-normal (fan-out) convs, unit/zero BN, zero linear bias, as the reference code."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)


def _wide_resnet_body(depth: int, widen: int, *, num_classes: int, in_channels: int) -> Body:
    net = WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels)
    return Body(net=net, stages=net.stages, representation="pool")


@register_arch("wrn28_10", "WideResNet-28-10 for CIFAR (TRADES/Rice keys, no sub_block1)")
def wrn28_10(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """WRN-28-10: 3 stages of 4 blocks, 640-d representation."""
    del image_size  # global pooling makes the network size-agnostic
    return _wide_resnet_body(28, 10, num_classes=num_classes, in_channels=in_channels)


@register_arch("wrn34_10", "WideResNet-34-10 for CIFAR (TRADES/Rice keys, no sub_block1)")
def wrn34_10(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """WRN-34-10: 3 stages of 5 blocks, 640-d representation."""
    del image_size
    return _wide_resnet_body(34, 10, num_classes=num_classes, in_channels=in_channels)
