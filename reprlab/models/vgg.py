"""CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015), kuangliu/pytorch-cifar layout.

``features`` is one Sequential of conv3x3(bias)-BN-ReLU units and 2x2 max-pools, followed by
global average pooling and a single ``classifier`` Linear(512, num_classes), so kuangliu-style
checkpoints load by key (``features.<i>.*``, ``classifier.*``). Max-pools use ``ceil_mode`` so
inputs that are not multiples of 32 (28x28 MNIST, 16x16) keep a non-empty map; on even sizes
(32, 64, 224) this is identical to the original floor-mode pools.

Stages (block taps): ``conv1`` ... ``convK`` (the ReLU output of every conv-BN-ReLU unit, each
stage starting after the previous unit's ReLU, so max-pools open the next stage), ``pool`` (the
last max-pool and global pooling: the representation, [n, 512]) and ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, Stage, StagedNet, register_arch

POOL = "M"
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}  # fmt: skip


class VGG(StagedNet):
    """VGG-BN on normalised [n, in_channels, h, w] input -> logits [n, num_classes]."""

    def __init__(self, config: Sequence[int | str], *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == POOL:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(channels, num_classes)
        stages: list[Stage] = []
        pending: list[str] = []
        for index, layer in enumerate(self.features):
            pending.append(f"features.{index}")
            if isinstance(layer, nn.ReLU):
                stages.append((f"conv{len(stages) + 1}", tuple(pending)))
                pending = []
        self.stages = (*stages, ("pool", (*pending, "pool")), ("logits", ("classifier",)))


def _vgg_body(config_name: str, *, num_classes: int, in_channels: int) -> Body:
    net = VGG(CONFIGS[config_name], num_classes=num_classes, in_channels=in_channels)
    return Body(net=net, stages=net.stages, representation="pool")


@register_arch("vgg11_bn", "CIFAR VGG-11 with BatchNorm (8 conv units, kuangliu keys)")
def vgg11_bn(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """VGG-11-BN: 8 conv-BN-ReLU units, 512-d representation."""
    del image_size  # global pooling makes the network size-agnostic
    return _vgg_body("vgg11", num_classes=num_classes, in_channels=in_channels)


@register_arch("vgg16_bn", "CIFAR VGG-16 with BatchNorm (13 conv units, kuangliu keys)")
def vgg16_bn(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """VGG-16-BN: 13 conv-BN-ReLU units, 512-d representation."""
    del image_size
    return _vgg_body("vgg16", num_classes=num_classes, in_channels=in_channels)


@register_arch("vgg19_bn", "CIFAR VGG-19 with BatchNorm (16 conv units, kuangliu keys)")
def vgg19_bn(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """VGG-19-BN: 16 conv-BN-ReLU units, 512-d representation."""
    del image_size
    return _vgg_body("vgg19", num_classes=num_classes, in_channels=in_channels)
