"""Atomic file writes: a temporary file in the target's directory, fsync, then a rename.

The store and the run directory write every file through here, so a reader sees either the old
file or the complete new one, never a partial write, even after a crash or ``kill -9``. Files get
the permissions the user's umask allows (like ``open()``), not ``mkstemp``'s 0600.
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
