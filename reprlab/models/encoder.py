"""The Deep InfoMax convolutional encoder (Hjelm et al., ICLR 2019), as Zhu et al. (ICML 2020) use
it to learn representations by (worst-case) mutual information maximisation.

Three conv 4×4 stride-2 layers with BatchNorm and ReLU, a hidden fully connected layer with
BatchNorm and ReLU, and a linear code: the representation. A final linear layer maps the code to
class logits so that the encoder is a :class:`~reprlab.models.Classifier` like any other (block
taps, ``front``/``back``, attacks); unsupervised training never uses it, and downstream heads are
trained on the ``code`` tap. Block taps: ``conv1``, ``conv2``, ``conv3``, ``fc1``, ``code``
(the representation), ``logits``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from reprlab.errors import ReprlabError
from reprlab.models.base import Body, StagedNet, register_arch

DIM_CHANNELS = (64, 128, 256)  # the authors' MNIST/CIFAR basic_encoder
DIM_HIDDEN = 1024
DIM_CODE = 64

# dim_encoder_small is sized for worst-case MI training on a 2-core CPU.
DIM_SMALL_CHANNELS = (16, 32, 64)
DIM_SMALL_HIDDEN = 128
DIM_SMALL_CODE = 32


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ConvEncoder(StagedNet):
    """conv 4×4/2 + BN + ReLU (× len(channels)) → fc ``hidden`` + BN + ReLU → code → logits.

    Input [n, in_channels, image_size, image_size] (normalised); each conv halves the size
    (floor), so the hidden layer sees ``channels[-1] * (image_size // 2**len(channels))**2``
    features.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        channels: Sequence[int],
        hidden: int,
        code: int,
    ) -> None:
        super().__init__()
        size, previous = image_size, in_channels
        stages = []
        for index, width in enumerate(channels, start=1):
            setattr(self, f"conv{index}", _conv_block(previous, width))
            stages.append((f"conv{index}", (f"conv{index}",)))
            size, previous = size // 2, width
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Sequential(
            nn.Linear(previous * size * size, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        )
        self.embed = nn.Linear(hidden, code)
        self.classifier = nn.Linear(code, num_classes)
        self.stages = (
            *stages,
            ("fc1", ("flatten", "fc1")),
            ("code", ("embed",)),
            ("logits", ("classifier",)),
        )


def _encoder_body(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    channels: Sequence[int],
    hidden: int,
    code: int,
) -> Body:
    if image_size < 2 ** len(channels):
        raise ReprlabError(
            f"{arch} halves the image {len(channels)} times; it needs at least "
            f"{2 ** len(channels)}x{2 ** len(channels)} pixels, got {image_size}"
        )
    net = ConvEncoder(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=channels,
        hidden=hidden,
        code=code,
    )
    return Body(net=net, stages=net.stages, representation="code")


@register_arch("dim_encoder", "Deep InfoMax encoder: conv 64, 128, 256 (4x4/2), fc 1024, code 64")
def dim_encoder(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """The encoder of Hjelm et al. 2019 as in Zhu et al.'s code (``basic_encoder``)."""
    return _encoder_body(
        "dim_encoder",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=DIM_CHANNELS,
        hidden=DIM_HIDDEN,
        code=DIM_CODE,
    )


@register_arch("dim_encoder_small", "small Deep InfoMax encoder: conv 16, 32, 64, fc 128, code 32")
def dim_encoder_small(*, num_classes: int, in_channels: int, image_size: int) -> Body:
    """:func:`dim_encoder` at reduced width, for quick CPU runs."""
    return _encoder_body(
        "dim_encoder_small",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        channels=DIM_SMALL_CHANNELS,
        hidden=DIM_SMALL_HIDDEN,
        code=DIM_SMALL_CODE,
    )
