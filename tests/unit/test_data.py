"""Dataset registry, torchvision-layout reading, and the device-resident / streamed loaders."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from reprlab.data import (
    StreamLoader,
    TensorLoader,
    available_datasets,
    check_available,
    dataset_info,
    default_data_root,
    download,
    load_tensors,
    make_loader,
    registry,
)
from reprlab.data.imagenet import imagenet_dataset
from reprlab.data.loaders import random_crop_flip
from reprlab.errors import ReprlabError

# --- registry ----------------------------------------------------------------------------------


def test_registry_lists_every_dataset_with_consistent_statistics() -> None:
    names = available_datasets()
    assert names[0] == "mnist"
    assert set(names) == {
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "imagenet",
        "restricted_imagenet",
        "synthetic",
    }
    for name in names:
        info = dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.channels
        assert all(0 < m < 1 for m in info.mean) and all(0 < s < 0.5 for s in info.std)
        assert info.in_memory == (name not in ("imagenet", "restricted_imagenet"))
    assert dataset_info("restricted_imagenet").num_classes == 9
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("cifar10").augment == "crop_flip"
    assert dataset_info("svhn").augment == "crop"  # digits must not be mirrored


def test_unknown_dataset_names_the_valid_ones() -> None:
    with pytest.raises(ReprlabError, match=r"unknown dataset 'cifar'.*cifar10.*synthetic"):
        dataset_info("cifar")


def test_default_data_root_honours_environment(monkeypatch) -> None:
    monkeypatch.delenv("REPRLAB_DATA", raising=False)
    assert default_data_root() == Path("outputs/data")
    monkeypatch.setenv("REPRLAB_DATA", "/datasets")
    assert default_data_root() == Path("/datasets")


def test_missing_dataset_says_what_and_how(tmp_path: Path) -> None:
    with pytest.raises(ReprlabError) as caught:
        check_available("cifar10", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "`reprlab download cifar10`" in message and "REPRLAB_DATA" in message
    with pytest.raises(ReprlabError, match=r"imagenet/\{train,val\}/<wnid>"):
        check_available("imagenet", tmp_path, split="test")
    with pytest.raises(ReprlabError, match="MNIST/raw/train-images-idx3-ubyte"):
        load_tensors("mnist", tmp_path, "test")  # the same error when loading
    with pytest.raises(ReprlabError, match="unknown split 'val'"):
        check_available("svhn", tmp_path, split="val")
    check_available("synthetic", tmp_path)  # nothing to find


def test_imagenet_cannot_be_downloaded_or_held_in_memory(tmp_path: Path) -> None:
    with pytest.raises(ReprlabError, match=r"cannot be downloaded.*<wnid>"):
        download("restricted_imagenet", tmp_path)
    with pytest.raises(ReprlabError, match="streamed"):
        load_tensors("imagenet", tmp_path, "train")
    assert download("synthetic", tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_download_moves_only_a_complete_copy_into_place(tmp_path: Path, monkeypatch) -> None:
    def fake_torchvision(name: str, root: Path) -> None:
        (root / "svhn").mkdir()
        for split in ("train", "test"):
            (root / "svhn" / f"{split}_32x32.mat").write_text(f"new {split}")

    monkeypatch.setattr(registry, "_download_with_torchvision", fake_torchvision)
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_text("left over")  # test split missing
    assert download("svhn", tmp_path) == tmp_path / "svhn"
    assert (tmp_path / "svhn" / "train_32x32.mat").read_text() == "new train"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svhn"]  # no temporaries left

    def offline(name: str, root: Path) -> None:
        (root / "cifar-10-batches-py").mkdir()  # a partial download ...
        raise OSError("Name or service not known")

    monkeypatch.setattr(registry, "_download_with_torchvision", offline)
    assert download("svhn", tmp_path) == tmp_path / "svhn"  # complete: not fetched again
    with pytest.raises(ReprlabError, match=r"could not download 'cifar10'.*service not known"):
        download("cifar10", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svhn"]  # ... is not left behind


# --- synthetic -----------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced() -> None:
    images, labels = load_tensors("synthetic", "unused", "train")
    again, labels_again = load_tensors("synthetic", "unused", "train")
    assert images.dtype == torch.uint8 and images.shape == (2000, 1, 16, 16)
    assert labels.dtype == torch.int64
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    test_images, _ = load_tensors("synthetic", "unused", "test")
    assert test_images.shape == (500, 1, 16, 16)
    assert not torch.equal(test_images, images[:500])
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 150  # every class well represented
    pixels = images.float() / 255
    info = dataset_info("synthetic")
    assert abs(pixels.mean().item() - info.mean[0]) < 0.005
    assert abs(pixels.std().item() - info.std[0]) < 0.005


def test_synthetic_is_learnable_but_not_linearly_trivial() -> None:
    def features(images: torch.Tensor) -> torch.Tensor:
        pixels = images.flatten(1).double() / 255
        return torch.cat([pixels, torch.ones(len(pixels), 1, dtype=torch.double)], dim=1)

    x, y = load_tensors("synthetic", "unused", "train")
    x_test, y_test = load_tensors("synthetic", "unused", "test")
    x, x_test = features(x), features(x_test)
    # a ridge-regression linear classifier on one-hot targets, solved in closed form
    targets = torch.nn.functional.one_hot(y, 10).double()
    weights = torch.linalg.solve(x.T @ x + torch.eye(x.shape[1], dtype=torch.double), x.T @ targets)
    accuracy = ((x_test @ weights).argmax(1) == y_test).double().mean().item()
    assert 0.6 < accuracy < 0.97, accuracy  # chance is 0.1; the random shifts defeat a linear map


# --- subsets ------------------------------------------------------------------------------------


def test_limit_draws_a_reproducible_nested_subset() -> None:
    images, labels = load_tensors("synthetic", "unused", "test")
    small, small_labels = load_tensors("synthetic", "unused", "test", limit=50, seed=1)
    same, _ = load_tensors("synthetic", "unused", "test", limit=50, seed=1)
    other, _ = load_tensors("synthetic", "unused", "test", limit=50, seed=2)
    larger, _ = load_tensors("synthetic", "unused", "test", limit=200, seed=1)
    assert small.shape[0] == 50 and torch.equal(small, same) and not torch.equal(small, other)

    # a true subset of the split, pairs kept, and contained in a larger subset of the same seed
    def positions(subset: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
        equal = (subset[:, None] == within[None]).flatten(2).all(-1)  # [k, n]
        assert torch.equal(equal.sum(1), torch.ones(len(subset), dtype=torch.long))
        return equal.int().argmax(1)

    assert torch.equal(labels[positions(small, images)], small_labels)
    positions(small, larger)
    everything, _ = load_tensors("synthetic", "unused", "test", limit=10_000)
    assert torch.equal(everything, images)
    with pytest.raises(ReprlabError, match="limit"):
        load_tensors("synthetic", "unused", "test", limit=0)


# --- CIFAR / SVHN in torchvision's on-disk layout -----------------------------------------------


@pytest.fixture
def skip_torchvision_md5(monkeypatch) -> None:
    """Fake files cannot match torchvision's md5s: check existence only, read with torchvision."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )
    monkeypatch.setattr(
        torchvision.datasets.svhn, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def fake_cifar10(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """cifar-10-batches-py with random rows uint8 [n, 3072] (R, G, B planes of 32x32)."""
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        write_pickle(root / "cifar-10-batches-py" / name, {"data": rows, "labels": labels})
        written[name] = (rows, labels)
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    write_pickle(root / "cifar-10-batches-py" / "batches.meta", meta)
    return written


def test_cifar10_reads_torchvision_layout(tmp_path: Path, skip_torchvision_md5) -> None:
    written = fake_cifar10(tmp_path)
    check_available("cifar10", tmp_path)
    images, labels = load_tensors("cifar10", tmp_path, "train")
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    # each row is the red plane, then green, then blue, row-major
    np.testing.assert_array_equal(images.numpy(), rows.reshape(20, 3, 32, 32))
    assert images[3, 1, 2, 5] == rows[3, 1024 + 2 * 32 + 5]
    expected = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert labels.tolist() == expected and labels.dtype == torch.int64
    test_images, test_labels = load_tensors("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test_images.flatten(1).numpy(), written["test_batch"][0])
    assert test_labels.tolist() == written["test_batch"][1]


def test_corrupt_cifar_is_a_user_error(tmp_path: Path) -> None:
    fake_cifar10(tmp_path)  # present, but torchvision's md5 check (not skipped here) fails
    with pytest.raises(ReprlabError, match=r"incomplete or corrupt.*reprlab download cifar10"):
        load_tensors("cifar10", tmp_path, "test")


def test_cifar100_uses_fine_labels(tmp_path: Path, skip_torchvision_md5) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    rows = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    fine, coarse = [99, 0, 42, 7, 64], [19, 0, 3, 1, 2]
    write_pickle(folder / "train", {"data": rows, "fine_labels": fine, "coarse_labels": coarse})
    write_pickle(folder / "test", {"data": rows[:2], "fine_labels": fine[:2], "coarse_labels": []})
    write_pickle(folder / "meta", {"fine_label_names": [str(i) for i in range(100)]})
    images, labels = load_tensors("cifar100", tmp_path, "train")
    np.testing.assert_array_equal(images.flatten(1).numpy(), rows)
    assert labels.tolist() == fine


def test_svhn_reads_mat_layout_and_maps_label_10_to_0(
    tmp_path: Path, skip_torchvision_md5, monkeypatch
) -> None:
    rng = np.random.default_rng(2)
    mat = {
        "X": rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8),  # [h, w, c, n]
        "y": np.array([[10], [1], [9], [10]], dtype=np.uint8),
    }
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"stand-in; read by the fake loadmat")
    scipy_io = types.ModuleType("scipy.io")
    scipy_io.loadmat = lambda path: mat  # scipy is optional: fake the .mat reader only
    scipy = types.ModuleType("scipy")
    scipy.io = scipy_io
    monkeypatch.setitem(sys.modules, "scipy", scipy)
    monkeypatch.setitem(sys.modules, "scipy.io", scipy_io)
    images, labels = load_tensors("svhn", tmp_path, "test")
    assert labels.tolist() == [0, 1, 9, 0]
    np.testing.assert_array_equal(images.numpy(), mat["X"].transpose(3, 2, 0, 1))
    with pytest.raises(ReprlabError, match=r"svhn/train_32x32\.mat"):
        load_tensors("svhn", tmp_path, "train")

    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    with pytest.raises(ReprlabError, match="needs scipy"):
        load_tensors("svhn", tmp_path, "test")


# --- ImageNet / Restricted ImageNet as ImageFolder trees ----------------------------------------


def fake_imagenet_val(root: Path, images_at: dict[int, tuple[int, int, int]]) -> Path:
    """root/imagenet/val with 1000 sorted wnid folders; one solid-colour PNG in the given ones."""
    folder = root / "imagenet" / "val"
    for index in range(1000):
        (folder / f"n{index:08d}").mkdir(parents=True)
    for index, colour in images_at.items():
        Image.new("RGB", (20, 12), colour).save(folder / f"n{index:08d}" / f"img{index}.png")
    return folder


COLOURS = {
    30: (255, 0, 0),
    151: (0, 255, 0),
    268: (0, 0, 255),
    300: (10, 20, 30),
    0: (1, 2, 3),
    999: (9, 9, 9),
}


def test_imagenet_folder_gives_class_indices_and_unit_pixels(tmp_path: Path) -> None:
    fake_imagenet_val(tmp_path, COLOURS)
    dataset = imagenet_dataset(tmp_path, "test", train=False)
    assert len(dataset) == len(COLOURS)
    by_label = {label: dataset[i][0] for i, (_, label) in enumerate(dataset.samples)}
    assert sorted(by_label) == sorted(COLOURS)
    for index, image in by_label.items():
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        expected = torch.tensor(COLOURS[index], dtype=torch.float32) / 255
        assert torch.allclose(image, expected.view(3, 1, 1).expand_as(image), atol=1e-6)


def test_restricted_imagenet_maps_ranges_to_superclasses(tmp_path: Path) -> None:
    fake_imagenet_val(tmp_path, COLOURS)
    loader = make_loader(
        "restricted_imagenet", tmp_path, "test", batch_size=3, train=False, num_workers=0
    )
    assert isinstance(loader, StreamLoader) and len(loader) == 2
    batches = list(loader.epoch(0))
    labels = torch.cat([y for _, y in batches])
    images = torch.cat([x for x, _ in batches])
    # ImageNet classes 30 -> frog (2), 151 and 268 -> dog (0), 300 -> insect (8); 0 and 999 dropped
    assert sorted(labels.tolist()) == [0, 0, 2, 8]
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    frog = images[labels == 2][0]
    assert torch.allclose(frog, torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand_as(frog))
    assert any(torch.allclose(image, green.expand_as(image)) for image in images[labels == 0])


def test_imagenet_needs_all_1000_class_folders(tmp_path: Path) -> None:
    folder = fake_imagenet_val(tmp_path, {5: (0, 0, 0)})
    (folder / "n00000999").rmdir()
    with pytest.raises(ReprlabError, match="999 class folders"):
        imagenet_dataset(tmp_path, "test", train=False, restricted=True)


# --- TensorLoader -------------------------------------------------------------------------------


def numbered(n: int, side: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is the example's index (n <= 256) and labels equal to it."""
    ids = torch.arange(n)
    return ids.to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, side, side).clone(), ids


def test_shuffled_epoch_covers_every_example_once_with_labels_paired() -> None:
    images, labels = numbered(103)
    loader = TensorLoader(images, labels, batch_size=10, shuffle=True, seed=3)
    assert len(loader) == 11 and loader.num_examples == 103
    batches = list(loader.epoch(0))
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert not torch.equal(seen, torch.arange(103))  # actually shuffled
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert torch.equal((x * 255).round().long()[:, 0, 0, 0], y)  # image stays with its label


def test_drop_last_and_fixed_order() -> None:
    images, labels = numbered(103)
    dropped = TensorLoader(images, labels, batch_size=10, shuffle=True, drop_last=True)
    batches = list(dropped.epoch(5))
    assert len(dropped) == len(batches) == 10
    assert all(len(y) == 10 for _, y in batches)
    assert len(set(torch.cat([y for _, y in batches]).tolist())) == 100
    ordered = TensorLoader(images, labels, batch_size=16, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in ordered.epoch(7)]), labels)


def test_batches_are_a_function_of_seed_and_epoch_only() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(64)

    def run(seed: int, epoch: int) -> list[torch.Tensor]:
        loader = TensorLoader(
            images, labels, batch_size=16, shuffle=True, augment="crop_flip", seed=seed
        )
        return [t for batch in loader.epoch(epoch) for t in batch]

    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = run(seed=1, epoch=2)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is not used
    torch.manual_seed(123)  # ... so its state does not matter either
    assert all(torch.equal(a, b) for a, b in zip(first, run(1, 2), strict=True))
    assert not torch.equal(first[1], run(1, 3)[1])  # another epoch, another order
    assert not torch.equal(first[1], run(2, 2)[1])  # another seed, another order


def test_random_crop_flip_matches_per_image_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=generator)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [8, 0], [3, 2]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = random_crop_flip(images, offsets, flips, padding=4)
    for image, (row, col), flip, result in zip(images, offsets, flips, out, strict=True):
        padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
        crop = padded[:, row : row + 5, col : col + 7]
        expected = torchvision.transforms.functional.hflip(crop) if flip else crop
        assert torch.equal(result, expected)


def transforms_found(sources: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Which (row offset, column offset, flip) turn each source [c, h, w] into its output.

    Returns bool [n, 9, 9, 2]: True where zero-padding by 4, cropping at that offset (and
    mirroring, for index 1 of the last axis) reproduces the output exactly.
    """
    h, w = sources.shape[2:]
    padded = torch.nn.functional.pad(sources, (4, 4, 4, 4))
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # [n, c, 9, 9, h, w]
    found = [
        (windows == candidate[:, :, None, None]).flatten(4).all(-1).all(1)  # [n, 9, 9]
        for candidate in (outputs, outputs.flip(-1))
    ]
    return torch.stack(found, dim=-1)


@pytest.mark.parametrize("augment", ["crop_flip", "crop"])
def test_augmentation_is_a_valid_crop_that_changes_images(augment: str) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (200, 3, 12, 12), dtype=torch.uint8, generator=generator)
    labels = torch.arange(200)
    loader = TensorLoader(images, labels, batch_size=64, shuffle=True, augment=augment, seed=0)
    batches = list(loader.epoch(0))
    for x, _ in batches:
        assert x.shape[1:] == (3, 12, 12) and x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    found = transforms_found(images[y], (x * 255).round().to(torch.uint8))
    # each output is exactly one crop (and flip) of the image its label belongs to
    assert torch.equal(found.flatten(1).sum(1), torch.ones(200, dtype=torch.long))
    n, row, col, flipped = found.nonzero().unbind(1)
    assert torch.equal(n, torch.arange(200))
    assert ((row == 4) & (col == 4) & (flipped == 0)).sum() < 20  # 1/81 or 1/162 expected
    assert len(set(zip(row.tolist(), col.tolist(), strict=True))) > 40  # offsets spread out
    if augment == "crop_flip":
        assert 60 < flipped.sum() < 140
    else:
        assert flipped.sum() == 0  # digits are never mirrored


def test_make_loader_trains_with_default_augmentation(tmp_path: Path, skip_torchvision_md5):
    fake_cifar10(tmp_path, per_batch=8)
    train = make_loader("cifar10", tmp_path, "train", batch_size=16, train=True, seed=4)
    test = make_loader("cifar10", tmp_path, "test", batch_size=3, train=False, limit=5, seed=4)
    assert isinstance(train, TensorLoader) and train.shuffle and train.augment == "crop_flip"
    assert isinstance(test, TensorLoader) and not test.shuffle and test.augment == "none"
    # Training drops the incomplete last batch (40 // 16 = 2); evaluation keeps every example.
    assert train.num_examples == 40 and len(train) == 2 and len(test) == 2
    plain = make_loader("cifar10", tmp_path, "train", batch_size=16, train=True, augment=False)
    assert plain.shuffle and plain.augment == "none"
    images, _ = load_tensors("cifar10", tmp_path, "test", limit=5, seed=4)
    x = torch.cat([x for x, _ in test.epoch(0)])
    assert torch.equal((x * 255).round().to(torch.uint8), images)  # exact pixels, fixed order


# --- StreamLoader -------------------------------------------------------------------------------


class NoisyItems(Dataset):
    """Item i is (i + global-RNG noise) as a [1, 2, 2] image, like a random transform."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 2, 2), float(index)) + torch.rand(1, 2, 2), index


def test_stream_loader_is_reproducible_across_workers_and_epochs() -> None:
    def run(epoch: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader = StreamLoader(NoisyItems(), batch_size=4, shuffle=True, seed=9, num_workers=workers)
        assert len(loader) == 3 and loader.num_examples == 10
        batches = list(loader.epoch(epoch))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    torch.manual_seed(0)
    state = torch.get_rng_state()
    x, y = run(epoch=0, workers=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert sorted(y.tolist()) == list(range(10)) and not torch.equal(y, torch.arange(10))
    assert torch.equal(x.floor()[:, 0, 0, 0].long(), y)  # images stay with their labels
    x_workers, y_workers = run(epoch=0, workers=2)
    assert torch.equal(x, x_workers) and torch.equal(y, y_workers)
    x_next, y_next = run(epoch=1, workers=0)
    assert not torch.equal(y, y_next) and not torch.equal(x.sort(0).values, x_next.sort(0).values)
