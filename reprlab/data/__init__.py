"""Datasets in pixel space: the registry over torchvision, offline MNIST, and batch loaders.

Images are float in [0, 1] (uint8 bytes while stored); each model normalises in its first layer
with the ``mean``/``std`` of :func:`dataset_info`.
"""

from __future__ import annotations

import os
from pathlib import Path

from reprlab.data.loaders import StreamLoader, TensorLoader, make_loader
from reprlab.data.registry import (
    DatasetInfo,
    available_datasets,
    check_available,
    dataset_info,
    download,
    load_tensors,
    split_size,
    subset_indices,
    train_size,
)


def default_data_root() -> Path:
    """The data root when none is configured: ``$REPRLAB_DATA``, else relative ``outputs/data``."""
    return Path(os.environ.get("REPRLAB_DATA", "outputs/data"))


__all__ = [
    "DatasetInfo",
    "StreamLoader",
    "TensorLoader",
    "available_datasets",
    "check_available",
    "dataset_info",
    "default_data_root",
    "download",
    "load_tensors",
    "make_loader",
    "split_size",
    "subset_indices",
    "train_size",
]
