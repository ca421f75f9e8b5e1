"""PreAct ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The CIFAR network of Rice et al. 2020 ("Overfitting in adversarially robust deep learning"), with
the module names of their ``preactresnet.py`` (kuangliu-style): ``conv1``, ``layer1..4`` of
PreActBlocks (``bn1``, ``conv1``, ``bn2``, ``conv2``, optional ``shortcut.0``), final ``bn`` and
``linear``, so their checkpoints load by key. ``relu``, ``pool`` and the blocks' ``relu1``,
``relu2`` (where the reference calls ``F.relu``) are parameter-free additions;
pooling is adaptive, so any input of at least 8x8 works (at 32x32 it equals the 4x4 average pool).

Stages (block taps): ``stem`` (conv1 output), one per block (``layer1.0`` ... ``layer4.1``),
``final`` (the last bn-relu), ``pool`` (the representation, [n, 512]) and ``logits``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, StagedNet, block_stages, register_arch
from reprlab.models.resnet import RESIDUAL_STAGES, STAGE_STRIDES, STAGE_WIDTHS


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; the shortcut is identity or a 1x1 conv of the pre-activated input."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )
        else:
            self.shortcut = None
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet(StagedNet):
    """PreAct ResNet on normalised [n, in_channels, h, w] input -> logits [n, num_classes]."""

    def __init__(self, num_blocks: tuple[int, ...], *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for index, (planes, stride, count) in enumerate(
            zip(STAGE_WIDTHS, STAGE_STRIDES, num_blocks, strict=True), start=1
        ):
            blocks = []
            for block_stride in [stride] + [1] * (count - 1):
                blocks.append(PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(512, num_classes)
        self.stages = (
            ("stem", ("conv1",)),
            *block_stages(self, RESIDUAL_STAGES),
            ("final", ("bn", "relu")),
            ("pool", ("pool",)),
            ("logits", ("linear",)),
        )


@register_arch("preact_resnet18", "PreAct ResNet-18 for CIFAR (Rice et al. 2020 keys)")
def preact_resnet18(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """PreAct ResNet-18: PreActBlocks [2, 2, 2, 2], 512-d representation."""
    del image_size  # global pooling makes the network size-agnostic
    net = PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
    return Body(net=net, stages=net.stages, representation="pool")
