"""A ResNet-20 sized for adversarial training on a 2-core CPU (the findings study's network).

He et al. (2016)'s CIFAR ResNet-20 topology: a 3x3 stride-1 stem conv, three stages of 3
BasicBlocks, global average pooling and one linear layer. Two changes make it about 10x cheaper on
1x28x28 inputs: the widths are halved (8/16/32 instead of 16/32/64; 68 k parameters) and every
stage downsamples (strides 2/2/2: the stages see 14x14, 7x7 and 4x4 maps after the 28x28 stem).
The blocks are :mod:`reprlab.models.resnet`'s, so module names follow the same convention
(``conv1``, ``bn1``, ``layer1..3``, ``linear``).

Stages (block taps): ``stem`` (conv1-bn1-relu), one per residual block (``layer1.0`` ...
``layer3.2``), ``pool`` (the representation, [n, 32]) and ``logits``: 12 taps, 11 before the
logits.
"""

from __future__ import annotations

from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, StagedNet, block_stages, register_arch
from reprlab.models.resnet import BasicBlock

THIN_WIDTHS = (8, 16, 32)
THIN_STRIDES = (2, 2, 2)
THIN_STAGES = ("layer1", "layer2", "layer3")


class ThinResNet(StagedNet):
    """ResNet-(6n+2) on normalised [batch, in_channels, h, w] input -> logits [batch, classes]."""

    def __init__(self, blocks_per_stage: int, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, THIN_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(THIN_WIDTHS[0])
        self.relu = nn.ReLU()
        in_planes = THIN_WIDTHS[0]
        for index, (planes, stride) in enumerate(
            zip(THIN_WIDTHS, THIN_STRIDES, strict=True), start=1
        ):
            blocks = []
            for block_stride in [stride] + [1] * (blocks_per_stage - 1):
                blocks.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(THIN_WIDTHS[-1], num_classes)
        self.stages = (
            ("stem", ("conv1", "bn1", "relu")),
            *block_stages(self, THIN_STAGES),
            ("pool", ("pool",)),
            ("logits", ("linear",)),
        )


@register_arch("resnet20_mini", "ResNet-20 topology, widths 8/16/32, strides 2/2/2 (CPU-sized)")
def resnet20_mini(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """ResNet-20 topology at widths 8/16/32: 32-d representation, 12 block taps."""
    del image_size  # global pooling makes the network size-agnostic
    net = ThinResNet(3, num_classes=num_classes, in_channels=in_channels)
    return Body(net=net, stages=net.stages, representation="pool")
