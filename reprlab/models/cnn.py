"""Small convolutional networks for MNIST-size inputs: Madry et al.'s MNIST CNN and a CPU-sized one.

Both are two conv-ReLU-maxpool stages, one hidden fully connected layer with ReLU and a linear
classifier. Their stages (block taps) are ``conv1``, ``conv2`` (each ending with its pool),
``fc1`` (flatten, the hidden layer and its ReLU: the representation) and ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from reprlab.errors import ReprlabError
from reprlab.models.base import Body, StagedNet, register_arch

MADRY_CHANNELS = (32, 64)
MADRY_HIDDEN = 1024

# cnn_small is sized for adversarial training on a 2-core CPU; retune these two lines if needed.
CNN_SMALL_CHANNELS = (16, 32)
CNN_SMALL_HIDDEN = 128


class TwoConvNet(StagedNet):
    """conv 5x5 (pad 2) -> ReLU -> maxpool 2, twice; then fc -> ReLU -> fc.

    Input [n, in_channels, image_size, image_size] (normalised), output logits [n, num_classes].
    The hidden layer sees ``channels[1] * (image_size // 4) ** 2`` features.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        channels: Sequence[int],
        hidden: int,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        pooled_size = image_size // 2 // 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Sequential(nn.Linear(c2 * pooled_size * pooled_size, hidden), nn.ReLU())
        self.fc2 = nn.Linear(hidden, num_classes)
        self.stages = (
            ("conv1", ("conv1",)),
            ("conv2", ("conv2",)),
            ("fc1", ("flatten", "fc1")),
            ("logits", ("fc2",)),
        )


def _two_conv_body(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    channels: Sequence[int],
    hidden: int,
) -> Body:
    if image_size < 4:
        raise ReprlabError(f"{arch} needs images of at least 4x4 pixels, got {image_size}")
    net = TwoConvNet(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=channels,
        hidden=hidden,
    )
    return Body(net=net, stages=net.stages, representation="fc1")


@register_arch("cnn_madry", "Madry et al. 2018 MNIST CNN: conv 32, conv 64 (5x5), fc 1024")
def cnn_madry(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """The MNIST network of Madry et al. 2018 (3,274,634 parameters at 28x28, 10 classes)."""
    return _two_conv_body(
        "cnn_madry",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=MADRY_CHANNELS,
        hidden=MADRY_HIDDEN,
    )


@register_arch("cnn_small", "small CNN for quick CPU runs: conv 16, conv 32 (5x5), fc 128")
def cnn_small(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    channels: Sequence[int] = CNN_SMALL_CHANNELS,
    hidden: int = CNN_SMALL_HIDDEN,
) -> Body:
    """Madry's CNN shape at reduced width (defaults: 16 and 32 channels, 128 hidden units)."""
    return _two_conv_body(
        "cnn_small",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=channels,
        hidden=hidden,
    )
