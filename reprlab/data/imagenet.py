"""ImageNet and Restricted ImageNet, streamed from torchvision ImageFolder trees.

Layout: ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``<root>/imagenet/val/<wnid>/*.JPEG`` (the
validation images sorted into wnid folders, as most ImageNet copies are). The "test" split reads
``val``. Class index = position of the wnid folder in sorted order, which is ImageFolder's order and
the standard ImageNet class order.

Restricted ImageNet (Tsipras et al., ICLR 2019; Engstrom et al.'s ``robustness`` library) keeps
the nine super-classes below, given as inclusive ImageNet class index ranges, and labels them 0..8
in this order.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets, transforms

from reprlab.errors import ReprlabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NUM_CLASSES = 1000
IMAGE_SIZE = 224

# Engstrom et al.'s robustness library, datasets.RestrictedImageNet.
RESTRICTED_IMAGENET_MEAN = (0.4717, 0.4499, 0.3837)
RESTRICTED_IMAGENET_STD = (0.2600, 0.2516, 0.2575)

# (super-class, first ImageNet class index, last index inclusive); the label is the position.
RESTRICTED_IMAGENET_RANGES: tuple[tuple[str, int, int], ...] = (
    ("dog", 151, 268),
    ("cat", 281, 285),
    ("frog", 30, 32),
    ("turtle", 33, 37),
    ("bird", 80, 100),
    ("primate", 365, 382),
    ("fish", 389, 397),
    ("crab", 118, 121),
    ("insect", 300, 319),
)
RESTRICTED_IMAGENET_CLASSES = tuple(name for name, _, _ in RESTRICTED_IMAGENET_RANGES)

SPLIT_FOLDERS = {"train": "train", "test": "val"}


def split_folder(root: str | Path, split: str) -> Path:
    """The ImageFolder tree of ``split`` ("train" or "test"): ``<root>/imagenet/{train,val}``."""
    return Path(root) / "imagenet" / SPLIT_FOLDERS[split]


def restricted_label(class_index: int) -> int | None:
    """The Restricted ImageNet label (0..8) of an ImageNet class index, or None if excluded."""
    for label, (_, first, last) in enumerate(RESTRICTED_IMAGENET_RANGES):
        if first <= class_index <= last:
            return label
    return None


def imagenet_transform(train: bool) -> transforms.Compose:
    """PIL image -> float32 [3, 224, 224] in [0, 1], no normalisation.

    train: RandomResizedCrop(224) + horizontal flip; otherwise Resize(256) + CenterCrop(224).
    """
    if train:
        steps = [transforms.RandomResizedCrop(IMAGE_SIZE), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(IMAGE_SIZE)]
    return transforms.Compose([*steps, transforms.ToTensor()])


class ImageNetFolder(datasets.ImageFolder):
    """One split of ImageNet as an ImageFolder, optionally restricted to the nine super-classes.

    Items are ``(float32 [3, 224, 224] in [0, 1], int label)``. Unrestricted labels are ImageNet
    class indices 0..999; restricted ones are 0..8 (:data:`RESTRICTED_IMAGENET_CLASSES`), and only
    the folders of the kept classes are scanned. The tree must hold all 1000 wnid folders, since a
    class index is a folder's position in sorted order.
    """

    def __init__(self, folder: str | Path, *, train: bool, restricted: bool) -> None:
        self.restricted = restricted
        super().__init__(str(folder), transform=imagenet_transform(train), allow_empty=True)
        if restricted:
            self.wnid_to_label = self.class_to_idx
            self.classes = list(RESTRICTED_IMAGENET_CLASSES)
            self.class_to_idx = {name: label for label, name in enumerate(self.classes)}

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        wnids, class_to_idx = super().find_classes(directory)
        if len(wnids) != IMAGENET_NUM_CLASSES:
            raise ReprlabError(
                f"{directory} holds {len(wnids)} class folders, but ImageNet needs all "
                f"{IMAGENET_NUM_CLASSES} wnid folders (a class index is a folder's sorted position)"
            )
        if not self.restricted:
            return wnids, class_to_idx
        kept = {}
        for index, wnid in enumerate(wnids):
            label = restricted_label(index)
            if label is not None:
                kept[wnid] = label
        return sorted(kept), kept


def imagenet_dataset(
    root: str | Path, split: str, *, train: bool, restricted: bool = False
) -> ImageNetFolder:
    """The ``split`` ("train" or "test" = val) of ImageNet under ``root`` as an ImageFolder.

    ``train`` picks the training transform (random crop + flip) over the fixed evaluation one.
    """
    return ImageNetFolder(split_folder(root, split), train=train, restricted=restricted)
