"""Batches for training and evaluation: device-resident tensors or streamed image folders.

Both loaders share one interface: ``len(loader)`` batches per epoch, ``loader.num_examples``, and
``loader.epoch(e)`` yielding ``(x float32 [b, c, h, w] in [0, 1], y int64 [b])`` on the loader's
device. An epoch's order and augmentation are a fixed function of ``(seed, e)`` and never touch
the global RNG, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from reprlab.data import imagenet
from reprlab.data.registry import check_available, dataset_info, load_tensors, subset_indices
from reprlab.runtime import resolve_device, seeded_generator

TENSOR_AUGMENTATIONS = ("none", "crop_flip", "crop")
CROP_PADDING = 4


def epoch_seeds(seed: int, epoch: int, count: int = 1) -> list[int]:
    """``count`` 63-bit seeds for epoch ``epoch`` of a loader seeded ``seed``.

    Mixed by NumPy's SeedSequence, so distinct (seed, epoch) pairs give independent streams;
    both must be non-negative.
    """
    states = np.random.SeedSequence([seed, epoch]).generate_state(count, dtype=np.uint64)
    return [int(state) >> 1 for state in states]


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _num_batches(num_examples: int, batch_size: int, drop_last: bool) -> int:
    if drop_last:
        return num_examples // batch_size
    return math.ceil(num_examples / batch_size)


def random_crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to size at ``offsets``, then mirror where ``flips``.

    images [b, c, h, w] (any dtype, any device); offsets int64 [b, 2] (row, column) in
    [0, 2 * padding]; flips bool [b] or None. Returns [b, c, h, w] of the same dtype, computed
    with two batched gathers (per image: torchvision's RandomCrop(padding) + RandomHorizontalFlip).
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # [b, h]
    cols = torch.arange(w, device=device).expand(b, w)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    cols = offsets[:, 1:] + cols  # [b, w]
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return picked_rows.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


class TensorLoader:
    """Batches from image and label tensors held on ``device``, augmented there.

    Parameters
    ----------
    images:
        uint8 [N, c, h, w] pixel bytes, or float [N, c, h, w] in [0, 1].
    labels:
        integer [N].
    batch_size, shuffle, drop_last:
        as in torch's DataLoader.
    augment:
        "none", "crop_flip" (pad 4 + random crop + horizontal flip, as for CIFAR) or "crop"
        (no flip, as for SVHN digits).
    seed:
        non-negative; with the epoch number it fixes order and augmentation.
    device:
        where the data live and batches are made ("auto", "cpu", "cuda", or a torch.device).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        augment: str = "none",
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images [N, c, h, w] and labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        if augment not in TENSOR_AUGMENTATIONS:
            raise ValueError(f"augment must be one of {TENSOR_AUGMENTATIONS}, got {augment!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = _as_device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.num_examples = len(labels)

    def __len__(self) -> int:
        return _num_batches(self.num_examples, self.batch_size, self.drop_last)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``: x float32 [b, c, h, w] in [0, 1], y int64 [b]."""
        n = self.num_examples
        # Drawn on the CPU so the batches do not depend on the device either.
        (order_seed,) = epoch_seeds(self.seed, epoch)
        generator = seeded_generator(order_seed)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        offsets = flips = None
        if self.augment != "none":
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
            offsets = offsets.to(self.device)
        if self.augment == "crop_flip":
            flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        for batch in range(len(self)):
            span = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            index = order[span]
            x = self.images[index]
            if offsets is not None:
                batch_flips = None if flips is None else flips[span]
                x = random_crop_flip(x, offsets[span], batch_flips, CROP_PADDING)
            yield _to_unit_float(x), self.labels[index]


class _SeededItems(Dataset):
    """``dataset`` whose item ``i`` is produced with the CPU RNG seeded from (base_seed, i).

    Makes random transforms reproducible whatever the worker count or assignment, and leaves the
    caller's global RNG state untouched.
    """

    def __init__(self, dataset: Dataset, base_seed: int) -> None:
        self.dataset = dataset
        self.base_seed = base_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> object:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.base_seed + index) % 2**63)
            return self.dataset[index]


class StreamLoader:
    """Batches streamed from a map-style ``dataset`` of (float [c, h, w] in [0, 1], int) items.

    Same interface as :class:`TensorLoader`; items are loaded (and augmented by the dataset's
    transform) in ``num_workers`` worker processes, then moved to ``device``.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        num_workers: int = 4,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = _as_device(device)
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.num_examples = len(dataset)

    def __len__(self) -> int:
        return _num_batches(self.num_examples, self.batch_size, self.drop_last)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch``: x float32 [b, c, h, w] in [0, 1], y int64 [b]."""
        n = self.num_examples
        order_seed, items_seed = epoch_seeds(self.seed, epoch, count=2)
        generator = seeded_generator(order_seed)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        loader = DataLoader(
            _SeededItems(self.dataset, items_seed),
            batch_size=self.batch_size,
            sampler=order.tolist(),
            generator=generator,  # DataLoader draws its base seed from it, not the global RNG
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield (
                x.to(self.device, torch.float32, non_blocking=True),
                y.to(self.device, torch.int64, non_blocking=True),
            )


def make_loader(
    name: str,
    root: str | Path,
    split: str,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    num_workers: int = 4,
    augment: bool | None = None,
) -> TensorLoader | StreamLoader:
    """A loader over ``split`` ("train" or "test") of dataset ``name`` under ``root``.

    train=True: shuffled, the last incomplete batch dropped (BatchNorm cannot train on one
    example), with the dataset's default augmentation unless ``augment`` is False; train=False:
    dataset order, every example, no augmentation. In-memory datasets give a
    :class:`TensorLoader` on ``device`` (``num_workers`` unused); ImageNet ones a
    :class:`StreamLoader`. ``limit`` keeps the random subset that
    :func:`~reprlab.data.registry.subset_indices` draws with ``seed``.
    """
    info = dataset_info(name)
    if info.in_memory:
        images, labels = load_tensors(name, root, split, limit=limit, seed=seed)
        augmentation = info.augment if train and augment is not False else "none"
        return TensorLoader(
            images,
            labels,
            batch_size=batch_size,
            shuffle=train,
            augment=augmentation,
            seed=seed,
            device=device,
            drop_last=train,
        )
    check_available(name, root, split=split)
    restricted = name == "restricted_imagenet"
    dataset: Dataset = imagenet.imagenet_dataset(
        root, split, train=train and augment is not False, restricted=restricted
    )
    if limit is not None:
        dataset = Subset(dataset, subset_indices(len(dataset), limit, seed).tolist())
    return StreamLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        seed=seed,
        device=device,
        num_workers=num_workers,
        drop_last=train,
    )
