"""DeepMind's WideResNet (Gowal et al. 2020, "Uncovering the limits of adversarial training"),
the architecture of most of RobustBench's leading CIFAR models (Gowal 2020/2021, Rebuffi 2021,
Pang 2022, Wang 2023, ...).

Pre-activation blocks with a Swish/SiLU activation, width ``[16, 16k, 32k, 64k]``, depth ``6n + 4``.
It differs from the TRADES/Rice WideResNet (:mod:`reprlab.models.wide_resnet`) in more than the
activation: a block's first 3x3 conv pads by hand, symmetrically (1 on each side) at stride 1 but
``(0, 1, 0, 1)`` (right and bottom only) at stride 2, TensorFlow's ``SAME``. Module names follow
DeepMind's ``model_zoo.py`` as RobustBench ships it (``init_conv``, ``layer.<g>.block.<i>.``
``batchnorm_0/conv_0/batchnorm_1/conv_1/shortcut``, ``batchnorm``), so the zoo's state_dicts
load by key, except the final linear layer: DeepMind's ``logits`` is ``fc`` here (a layer tap may
not share the ``logits`` stage's name); :mod:`reprlab.run.zoo` renames it. The zoo's model
normalises inside with non-persistent ``mean``/``std`` buffers; here that is the
:class:`~reprlab.models.base.Classifier`'s normaliser. Swish (``x * sigmoid(x)``) is ``nn.SiLU``.
Pooling is adaptive (at 32x32 it equals the original 8x8 pool).

Stages (block taps): ``stem`` (init_conv output), one per block (``layer.0.0`` ...
``layer.2.<n-1>``), ``final`` (the last bn-activation), ``pool`` (the representation,
[n, 64k]) and ``logits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, StagedNet, register_arch


class DMBlock(nn.Module):
    """BN-act-conv3x3 twice plus the input, or a 1x1 conv of the activated input where the
    width changes; the first conv pads ``SAME``-style (see the module docstring)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"DMBlock supports stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = nn.SiLU()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = nn.SiLU()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
            if self.has_shortcut
            else None
        )
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(activated, self.pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        shortcut = self.shortcut(activated) if self.shortcut is not None else x
        return shortcut + out


class DMBlockGroup(nn.Module):
    """``count`` DMBlocks under ``block``; the first one changes width and stride."""

    def __init__(self, count: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *(
                DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(count)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(StagedNet):
    """DeepMind WRN-depth-width on normalised [n, in_channels, h, w] input -> logits."""

    def __init__(self, depth: int, width: int, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        per_group = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(per_group, widths[0], widths[1], stride=1),
            DMBlockGroup(per_group, widths[1], widths[2], stride=2),
            DMBlockGroup(per_group, widths[2], widths[3], stride=2),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = nn.SiLU()
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(widths[3], num_classes)  # DeepMind's `logits`
        self.stages = (
            ("stem", ("init_conv",)),
            *(
                (f"layer.{g}.{i}", (f"layer.{g}.block.{i}",))
                for g in range(3)
                for i in range(per_group)
            ),
            ("final", ("batchnorm", "relu")),
            ("pool", ("pool",)),
            ("logits", ("fc",)),
        )


def _register(depth: int, width: int) -> None:
    @register_arch(
        f"dm_wrn{depth}_{width}",
        f"DeepMind WideResNet-{depth}-{width} with SiLU (Gowal et al. 2020; RobustBench keys)",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int) -> Body:
        del image_size  # global pooling makes the network size-agnostic
        net = DMWideResNet(depth, width, num_classes=num_classes, in_channels=in_channels)
        return Body(net=net, stages=net.stages, representation="pool")


for _depth, _width in ((28, 10), (70, 16)):
    _register(_depth, _width)
