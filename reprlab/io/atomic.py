"""Atomic file writes: a temporary file in the target's directory, fsync, a rename, then an
fsync of the directory.

The store and the run directory write every file through here (torch checkpoints included), so a
reader sees either the old file or the complete new one, never a partial write, even after a
crash or ``kill -9``; after the directory's fsync the rename itself survives a power loss. Files
get the permissions the user's umask allows (like ``open()``), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_UMASK: int | None = None


def _umask() -> int:
    """The process umask (read once; reading it means setting it, so it is restored at once)."""
    global _UMASK
    if _UMASK is None:
        current = os.umask(0o022)
        os.umask(current)
        _UMASK = current
    return _UMASK


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _write_atomically(Path(path), lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def torch_save(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically (fsynced like every other write)."""
    import torch

    _write_atomically(Path(path), lambda handle: torch.save(obj, handle))


def unwritable(directory: Path) -> str | None:
    """Why ``directory`` (or, if it does not exist yet, the directories to be created in its
    nearest existing ancestor) cannot be written, or None when it can. Writes nothing."""
    path = Path(os.path.abspath(directory))
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None
