"""Whether the store's ``flock`` lock holds across the processes and machines of a sweep.

The store (:mod:`reprlab.io.store`) excludes two producers of one entry with ``flock(2)`` on
``<key>.lock``. That holds for every process of one machine on a local filesystem. Across
machines it holds only where the shared filesystem forwards ``flock`` to a lock manager:

- NFS: Linux emulates ``flock`` with NFS byte-range locks, kept by the server (``lockd``/``statd``
  for NFSv3, built into NFSv4). A mount with ``nolock``, ``local_lock=flock`` or
  ``local_lock=all`` keeps them local to each client: two nodes can train one model at once.
- Lustre: ``flock`` is cluster-wide only with the ``flock`` mount option; ``localflock`` (or
  neither) keeps it local (or refuses it).
- CIFS/SMB with ``nobrl`` keeps byte-range locks local.
- GPFS/Spectrum Scale, BeeGFS, CephFS: cluster-wide ``flock`` by default.

:func:`lock_problem` reads ``/proc/self/mountinfo`` to say which case a path is in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

LOCAL_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "f2fs", "jfs",
     "reiserfs", "vfat", "exfat", "ntfs", "ntfs3", "apfs", "hfs", "devtmpfs", "ramfs"}
)  # fmt: skip
"""Filesystems that only one machine sees."""


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on: its mount point, filesystem type and options (both sets)."""

    point: str
    fstype: str
    options: frozenset[str]

    @property
    def local(self) -> bool:
        """Whether only this machine sees it (other nodes have their own copy, or none)."""
        return self.fstype in LOCAL_TYPES


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts listed in ``/proc/self/mountinfo`` text (see proc(5)), in file order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 6 or len(fields) < dash + 3:
            continue
        options = set(fields[5].split(",")) | set(fields[dash + 3].split(","))
        mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], frozenset(options)))
    return mounts


def mount_of(path: str | Path, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` is on: the last-mounted one with the longest matching mount point.

    ``path`` is made absolute and resolved as far as it exists (a store not yet created lives
    where its nearest existing parent lives).
    """
    target = Path(os.path.abspath(path))
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    resolved = str(existing.resolve() / target.relative_to(existing))
    best: Mount | None = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point.rstrip("/") or "/")):
            best = mount
    return best


def lock_problem(mount: Mount) -> str | None:
    """Why ``flock`` on ``mount`` would not exclude processes on other machines, or None."""
    options = mount.options
    if mount.fstype.startswith("nfs"):
        if "nolock" in options:
            return "it is NFS mounted with nolock (locks stay local to each machine)"
        for value in ("local_lock=all", "local_lock=flock"):
            if value in options:
                return f"it is NFS mounted with {value} (flock stays local to each machine)"
    if mount.fstype == "lustre" and "flock" not in options:
        how = "localflock" if "localflock" in options else "without the flock option"
        return f"it is Lustre mounted {how} (flock is not cluster-wide)"
    if mount.fstype in ("cifs", "smb3") and "nobrl" in options:
        return "it is CIFS mounted with nobrl (locks stay local to each machine)"
    return None


def store_mount(path: str | Path, mountinfo: str | None = None) -> Mount | None:
    """The mount of ``path`` from ``mountinfo`` text (default: this process's); None where
    unknown (no /proc)."""
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text()
        except OSError:
            return None
    return mount_of(path, parse_mountinfo(mountinfo))
