"""Architecture registry: ``build_model(arch, ...)`` returns a staged, tapped :class:`Classifier`.

Importing this package registers every architecture family below.
"""

# Importing each family module registers its architectures.
from reprlab.models import (  # noqa: F401
    cnn,
    dm_wide_resnet,
    encoder,
    preact_resnet,
    resnet,
    thin_resnet,
    torchvision_resnet,
    vgg,
    wide_resnet,
)
from reprlab.models.base import (
    ArchInfo,
    Body,
    Classifier,
    GlobalAvgPool,
    Normalize,
    Stage,
    StagedNet,
    architecture_version,
    available_archs,
    build_model,
    register_arch,
    select_taps,
    sequential_stages,
)
from reprlab.models.probe import TapError, TapInfo
from reprlab.models.wrap import WrappedClassifier, wrap

__all__ = [
    "ArchInfo",
    "Body",
    "Classifier",
    "GlobalAvgPool",
    "Normalize",
    "Stage",
    "StagedNet",
    "TapError",
    "TapInfo",
    "WrappedClassifier",
    "architecture_version",
    "available_archs",
    "build_model",
    "register_arch",
    "select_taps",
    "sequential_stages",
    "wrap",
]
