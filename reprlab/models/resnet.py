"""CIFAR-style ResNets (He et al. 2016) as in kuangliu/pytorch-cifar and the `robustness` library.

A 3x3 stride-1 stem conv without max-pool, four stages of BasicBlocks or Bottlenecks, global
average pooling and one linear layer. Module names match the `robustness` library's
``cifar_models/resnet.py`` (``conv1``, ``bn1``, ``layer1..4`` of blocks with ``conv1``, ``bn1``,
..., ``shortcut``, final ``linear``), so its checkpoints load by key. The parameter-free modules
added here (``relu`` after the stem, ``relu1``.. in each block where the reference calls
``F.relu``, ``pool``) add no state_dict keys. Global pooling is adaptive,
so any input size of at least 8x8 works; at 32x32 it equals the original 4x4 average pool.

Stages (block taps): ``stem`` (conv1-bn1-relu), one per residual block (``layer1.0`` ...
``layer4.N``), ``pool`` (the representation, [n, 512 * expansion]) and ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, StagedNet, block_stages, register_arch


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN projection shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN; projection shortcut; ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Empty Sequential (identity) when shapes agree, else 1x1 conv + BN (keys ``0.*``, ``1.*``)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class CifarResNet(StagedNet):
    """ResNet on normalised [n, in_channels, h, w] input -> logits [n, num_classes]."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        *,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        for index, (planes, stride, count) in enumerate(
            zip(STAGE_WIDTHS, STAGE_STRIDES, num_blocks, strict=True), start=1
        ):
            blocks = []
            for block_stride in [stride] + [1] * (count - 1):
                blocks.append(block(in_planes, planes, block_stride))
                in_planes = planes * block.expansion
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self.stages = (
            ("stem", ("conv1", "bn1", "relu")),
            *block_stages(self, RESIDUAL_STAGES),
            ("pool", ("pool",)),
            ("logits", ("linear",)),
        )


RESIDUAL_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _resnet_body(
    block: type[BasicBlock] | type[Bottleneck],
    num_blocks: Sequence[int],
    *,
    num_classes: int,
    in_channels: int,
) -> Body:
    net = CifarResNet(block, num_blocks, num_classes=num_classes, in_channels=in_channels)
    return Body(net=net, stages=net.stages, representation="pool")


@register_arch("resnet18", "CIFAR ResNet-18 (3x3 stem, no max-pool; robustness-library keys)")
def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], 512-d representation."""
    del image_size  # global pooling makes the network size-agnostic
    return _resnet_body(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_arch("resnet34", "CIFAR ResNet-34 (3x3 stem, no max-pool; robustness-library keys)")
def resnet34(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3], 512-d representation."""
    del image_size
    return _resnet_body(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


@register_arch("resnet50", "CIFAR ResNet-50 (3x3 stem, no max-pool; robustness-library keys)")
def resnet50(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """CIFAR ResNet-50: Bottlenecks [3, 4, 6, 3], 2048-d representation."""
    del image_size
    return _resnet_body(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
