"""Tiny datasets written in torchvision's on-disk layout, so the real loaders read them.

CIFAR-10/100: ``cifar-10-batches-py`` / ``cifar-100-python`` pickles (uint8 rows of 3072, the R, G
and B planes of a 32x32 image). ImageNet: ``imagenet/{train,val}/<wnid>/*.JPEG`` with all 1000
wnid folders (reprlab's reader requires them; a class index is a folder's sorted position), images
only in a few. The pixels are seeded noise: these check that runs go through, not what they learn.
torchvision checks CIFAR files against the real md5s, which fakes cannot match: in-process tests
patch that check with :func:`skip_torchvision_md5`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from reprlab.data.imagenet import RESTRICTED_IMAGENET_RANGES


def skip_torchvision_md5(monkeypatch) -> None:
    """Let torchvision's CIFAR reader accept the fake files (existence only)."""
    import torchvision

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


def _pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def fake_cifar(root: Path, name: str = "cifar10", *, train: int = 64, test: int = 32) -> Path:
    """Write ``name`` (cifar10 | cifar100) under ``root``: ``train`` images over the five
    training batches (CIFAR-100: one train file), ``test`` test images; returns ``root``."""
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100

    def rows(n: int) -> tuple[np.ndarray, list[int]]:
        labels = (np.arange(n) % classes).tolist()  # every class present where n allows
        return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), labels

    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        per_batch = max(1, train // 5)
        for i in range(1, 6):
            data, labels = rows(per_batch)
            _pickle(folder / f"data_batch_{i}", {"data": data, "labels": labels})
        data, labels = rows(test)
        _pickle(folder / "test_batch", {"data": data, "labels": labels})
        _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        for split, n in (("train", train), ("test", test)):
            data, labels = rows(n)
            _pickle(folder / split, {"data": data, "fine_labels": labels})
        _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return root


def fake_imagenet(root: Path, *, restricted: bool, per_class: int = 2, side: int = 40) -> Path:
    """Write ``root/imagenet/{train,val}`` with 1000 wnid folders; images (``side`` pixels, JPEG)
    in the first folder of each Restricted ImageNet range (``restricted``) or in 9 spread-out
    folders (full ImageNet). Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    wnids = [f"n{index:08d}" for index in range(1000)]  # sorted order = class index
    if restricted:
        filled = [first for _, first, _ in RESTRICTED_IMAGENET_RANGES]
    else:
        filled = list(range(0, 1000, 111))
    for split in ("train", "val"):
        for index, wnid in enumerate(wnids):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            if index not in filled:
                continue
            for k in range(per_class):
                pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{k}.JPEG", quality=90)
    return root
