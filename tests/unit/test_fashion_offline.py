"""Fashion-MNIST from Debian's package: the .deb is unpacked, checked and laid out as torchvision
reads it, without the network (a .deb built here with the package's layout stands in for it)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from reprlab.data import fashion_offline as fo
from reprlab.errors import ReprlabError


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, blob in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n"
        out += header.encode("ascii") + blob + (b"\n" if len(blob) % 2 else b"")
    return bytes(out)


def fake_deb(tmp_path: Path, contents: dict[str, bytes], mode: str = "w:xz") -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode=mode) as archive:
        for name, raw in contents.items():
            blob = gzip.compress(raw)
            info = tarfile.TarInfo(f"./{fo.DEB_FOLDER}/{name}.gz")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    suffix = mode.split(":")[1]
    deb = tmp_path / "dataset-fashion-mnist_test_all.deb"
    deb.write_bytes(
        ar_archive(
            {
                "debian-binary": b"2.0\n",
                "control.tar.xz": b"",
                f"data.tar.{suffix}": data.getvalue(),
            }
        )
    )
    return deb


CONTENTS = {name: f"idx bytes of {name}".encode() * 7 for name in fo.OFFICIAL_IDX_MD5}
MD5 = {name: hashlib.md5(raw).hexdigest() for name, raw in CONTENTS.items()}


@pytest.mark.parametrize("mode", ["w:xz", "w:gz"])
def test_install_from_deb_writes_torchvisions_layout_decompressed(tmp_path, mode):
    deb = fake_deb(tmp_path, CONTENTS, mode)
    folder = fo.install_from_deb(deb, tmp_path / "data", expected_md5=MD5)
    assert folder == tmp_path / "data" / "FashionMNIST" / "raw"
    for name, raw in CONTENTS.items():
        assert (folder / name).read_bytes() == raw
    assert fo.is_complete(tmp_path / "data")


def test_a_wrong_md5_is_refused_and_nothing_is_left(tmp_path):
    deb = fake_deb(tmp_path, CONTENTS)
    with pytest.raises(ReprlabError, match="not the official data"):
        fo.install_from_deb(deb, tmp_path / "data")  # the official md5s: these bytes differ
    assert not fo.raw_folder(tmp_path / "data").exists()


def test_a_missing_file_is_named(tmp_path):
    partial = dict(CONTENTS)
    partial.pop("t10k-labels-idx1-ubyte")
    deb = fake_deb(tmp_path, partial)
    with pytest.raises(ReprlabError, match=r"lacks .*t10k-labels-idx1-ubyte\.gz"):
        fo.install_from_deb(deb, tmp_path / "data", expected_md5=MD5)


def test_the_pins_are_the_issues():
    assert fo.DEB_SHA256 == "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
    assert fo.OFFICIAL_IDX_MD5["t10k-images-idx3-ubyte"] == "8181f5470baa50b63fa0f6fddb340f0a"
