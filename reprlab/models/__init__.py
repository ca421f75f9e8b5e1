"""Architecture registry: ``build_model(arch, ...)`` returns a tapped :class:`Classifier`.

Importing this package registers every architecture family below.
"""

# Importing each family module registers its architectures.
from reprlab.models import (  # noqa: F401
    cnn,
    preact_resnet,
    resnet,
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
    available_archs,
    build_model,
    register_arch,
)

__all__ = [
    "ArchInfo",
    "Body",
    "Classifier",
    "GlobalAvgPool",
    "Normalize",
    "available_archs",
    "build_model",
    "register_arch",
]
