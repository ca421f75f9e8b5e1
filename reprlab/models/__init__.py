"""Architecture registry: ``build_model(arch, ...)`` returns a tapped :class:`Classifier`."""

from reprlab.models.base import (
    ArchInfo,
    Body,
    Classifier,
    Normalize,
    available_archs,
    build_model,
    register_arch,
)

__all__ = [
    "ArchInfo",
    "Body",
    "Classifier",
    "Normalize",
    "available_archs",
    "build_model",
    "register_arch",
]
