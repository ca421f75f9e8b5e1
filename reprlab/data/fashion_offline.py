"""Fashion-MNIST without its download mirrors: from Debian's ``dataset-fashion-mnist`` package.

Machines that reach only the package registries cannot fetch Fashion-MNIST from its own mirrors.
Debian's ``dataset-fashion-mnist`` (version ``0.0~git20200523.55506a9-1``, MIT, no dependencies)
ships the four gzipped idx files under ``usr/share/datasets/fashion-mnist/``. Debian recompressed
them (the .gz md5s differ from the official ones), but decompressed they are the official data:
their md5s are checked here.

The route: ``apt-get download`` (no install, no root needed beyond apt's own lists; an
``apt-get update`` first when apt does not know the package), the .deb's sha256 checked, its
``data.tar.*`` read in Python (a .deb is an ``ar`` archive; ``dpkg-deb -x`` is the fallback for a
compression Python cannot read), each idx file decompressed and md5-checked in a staging folder,
then moved into torchvision's layout ``<root>/FashionMNIST/raw`` in one step.

The pieces are separate so each can be tested without the network: :func:`fetch_deb`,
:func:`ar_members`, :func:`extract_idx_files`, :func:`install_from_deb`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from reprlab.data.mnist_offline import RAW_FILES, file_md5
from reprlab.errors import ReprlabError

log = logging.getLogger(__name__)

DEB_PACKAGE = "dataset-fashion-mnist"
DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DEB_FOLDER = "usr/share/datasets/fashion-mnist"

# md5 of the official, uncompressed idx files.
OFFICIAL_IDX_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
assert set(OFFICIAL_IDX_MD5) == set(RAW_FILES)

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def raw_folder(root: str | Path) -> Path:
    """Where torchvision's ``FashionMNIST(root)`` reads its idx files:
    ``<root>/FashionMNIST/raw``."""
    return Path(root) / "FashionMNIST" / "raw"


def is_complete(root: str | Path) -> bool:
    """True when all four idx files are present in :func:`raw_folder` (existence only)."""
    return all((raw_folder(root) / name).is_file() for name in RAW_FILES)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _apt_download(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )


def fetch_deb(workdir: str | Path) -> Path:
    """``apt-get download`` the pinned package into ``workdir``; return the sha256-checked .deb.

    When apt does not know the package (empty lists on a fresh machine), runs ``apt-get update``
    once and tries again. Raises :class:`ReprlabError` (one line) when apt cannot fetch it or the
    file is not the expected one.
    """
    workdir = Path(workdir)
    if shutil.which("apt-get") is None:
        raise ReprlabError("apt-get is not available on this machine")
    log.info("fetching Fashion-MNIST from Debian's %s=%s", DEB_PACKAGE, DEB_VERSION)
    result = _apt_download(workdir)
    if result.returncode != 0:
        log.info("apt-get download failed; running apt-get update and trying again")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, check=False)
        result = _apt_download(workdir)
    debs = sorted(workdir.glob(f"{DEB_PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        reason = (result.stderr.strip().splitlines() or ["no .deb was written"])[-1]
        raise ReprlabError(f"apt-get download {DEB_PACKAGE}={DEB_VERSION} failed: {reason}")
    actual = file_sha256(debs[0])
    if actual != DEB_SHA256:
        raise ReprlabError(
            f"{debs[0].name} has sha256 {actual}, expected {DEB_SHA256}: not the pinned package"
        )
    return debs[0]


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member of an ``ar`` archive (the container format of a .deb)."""
    if not data.startswith(_AR_MAGIC):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    offset = len(_AR_MAGIC)
    while offset + _AR_HEADER <= len(data):
        header = data[offset : offset + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar member header at byte {offset}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = offset + _AR_HEADER
        yield name, data[start : start + size]
        offset = start + size + (size % 2)  # members are padded to an even length


def _gz_members_via_python(deb: Path) -> dict[str, bytes] | None:
    """The ``.gz`` files under :data:`DEB_FOLDER` read from ``data.tar.{xz,gz,bz2}``, or None
    when the data member uses a compression Python's tarfile cannot read (e.g. zstd)."""
    for name, blob in ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        try:
            archive = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")  # noqa: SIM115
        except tarfile.ReadError:
            return None
        with archive:
            found = {}
            for member in archive.getmembers():
                path = member.name.removeprefix("./")
                if member.isfile() and path.startswith(DEB_FOLDER + "/") and path.endswith(".gz"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    found[Path(path).name] = handle.read()
            return found
    raise ReprlabError(f"{deb.name} has no data.tar member: not a Debian package")


def _gz_members_via_dpkg(deb: Path, workdir: Path) -> dict[str, bytes]:
    if shutil.which("dpkg-deb") is None:
        raise ReprlabError(
            f"cannot unpack {deb.name}: Python cannot read it and dpkg-deb is absent"
        )
    target = workdir / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, capture_output=True)
    return {p.name: p.read_bytes() for p in sorted((target / DEB_FOLDER).glob("*.gz"))}


def extract_idx_files(
    deb: str | Path, staging: str | Path, expected_md5: Mapping[str, str] = OFFICIAL_IDX_MD5
) -> None:
    """Write the four decompressed idx files of ``deb`` into ``staging``; check their md5s.

    Raises :class:`ReprlabError` when a file is missing or its md5 differs from
    ``expected_md5`` (file name -> md5).
    """
    deb, staging = Path(deb), Path(staging)
    members = _gz_members_via_python(deb)
    if members is None:
        members = _gz_members_via_dpkg(deb, staging.parent)
    for name in RAW_FILES:
        blob = members.get(f"{name}.gz")
        if blob is None:
            raise ReprlabError(f"{deb.name} lacks {DEB_FOLDER}/{name}.gz")
        (staging / name).write_bytes(gzip.decompress(blob))
    for name, md5 in expected_md5.items():
        actual = file_md5(staging / name)
        if actual != md5:
            raise ReprlabError(
                f"{name} from {deb.name} has md5 {actual}, expected {md5}: not the official data"
            )


def install_from_deb(
    deb: str | Path, root: str | Path, expected_md5: Mapping[str, str] = OFFICIAL_IDX_MD5
) -> Path:
    """Unpack ``deb``'s idx files into ``<root>/FashionMNIST/raw`` (checked, then moved in one
    step, so the folder never holds a half-written or unchecked file); return that folder."""
    target = raw_folder(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".raw-", dir=target.parent) as tmp:
        staging = Path(tmp) / "raw"
        staging.mkdir()
        extract_idx_files(deb, staging, expected_md5)
        try:
            os.rename(staging, target)  # one atomic step while the folder is absent or empty
        except OSError:
            for name in RAW_FILES:
                os.replace(staging / name, target / name)
    return target


def install_offline_fashion_mnist(root: str | Path) -> Path:
    """Make ``<root>/FashionMNIST/raw`` hold the official idx files via apt; return the folder.

    A no-op when the four files are there. Raises :class:`ReprlabError` when apt is missing or
    cannot fetch the package (the caller may then try torchvision's download).
    """
    if is_complete(root):
        return raw_folder(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reprlab-fashion-mnist-") as workdir:
        deb = fetch_deb(workdir)
        log.info("unpacking Fashion-MNIST into torchvision's layout under %s", raw_folder(root))
        return install_from_deb(deb, root)
