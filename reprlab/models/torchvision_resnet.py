"""torchvision's ImageNet ResNets (He et al. 2016), with torchvision's exact state_dict keys.

``torchvision.models.resnet18/50(weights=None)`` with two changes that leave the keys alone:
``avgpool`` becomes pool-then-flatten (so the pooled features are a module output; torchvision's
own ``torch.flatten`` on [n, d] is then a no-op), and ``conv1`` is rebuilt for ``in_channels != 3``
(same shape otherwise, so only that weight's shape differs from an RGB checkpoint).

Stages (block taps): ``stem`` (conv1-bn1-relu-maxpool), one per residual block (``layer1.0``
...), ``pool`` (the representation, [n, 512] or [n, 2048]) and ``logits`` (``fc``). They compose
to torchvision's own ``forward``, which the network keeps. A block's shared ``relu`` runs two
(BasicBlock) or three (Bottleneck) times per forward: its layer taps are ``<block>.relu@1``, ...
"""

from __future__ import annotations

from torch import nn

from reprlab.models.base import Body, GlobalAvgPool, block_stages, register_arch
from reprlab.models.resnet import RESIDUAL_STAGES


def _torchvision_body(factory_name: str, *, num_classes: int, in_channels: int) -> Body:
    # Imported here: torchvision takes about 2 s to import, which every other model would pay.
    from torchvision import models

    net = getattr(models, factory_name)(weights=None, num_classes=num_classes)
    net.avgpool = GlobalAvgPool()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    stages = (
        ("stem", ("conv1", "bn1", "relu", "maxpool")),
        *block_stages(net, RESIDUAL_STAGES),
        ("pool", ("avgpool",)),  # torchvision's torch.flatten after it is a no-op on [n, d]
        ("logits", ("fc",)),
    )
    return Body(net=net, stages=stages, representation="pool")


@register_arch("tv_resnet18", "torchvision ImageNet ResNet-18 (7x7 stem + max-pool)")
def tv_resnet18(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """torchvision ResNet-18: BasicBlocks [2, 2, 2, 2], 512-d representation."""
    del image_size  # torchvision's adaptive pooling makes the network size-agnostic
    return _torchvision_body("resnet18", num_classes=num_classes, in_channels=in_channels)


@register_arch("tv_resnet50", "torchvision ImageNet ResNet-50 (7x7 stem + max-pool)")
def tv_resnet50(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """torchvision ResNet-50: Bottlenecks [3, 4, 6, 3], 2048-d representation."""
    del image_size
    return _torchvision_body("resnet50", num_classes=num_classes, in_channels=in_channels)
