"""The model store: each trained model is an artifact keyed by what determines its weights.

Layout under the store root::

    <key>/meta.json      recipe, dataset, key fields, final metrics, provenance
    <key>/model.pt       final weights (a Classifier state_dict)
    <key>/metrics.jsonl  one line of training metrics per epoch
    <key>/snapshots/epoch_NNN.pt   weights kept at the recipe's snapshot epochs
    <key>/work/last.pt   resumable checkpoint while training (removed once complete)
    <key>/COMPLETE       written last: an entry without it is never used
    <key>.lock           taken while a process trains the entry

The store only moves files; training is a callback it is handed (see :meth:`ModelStore.obtain`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ReprlabError

KEY_FORMAT = 1
"""Bumped when the meaning of stored weights changes (e.g. an architecture's definition)."""

COMPLETE = "COMPLETE"


def store_key(identity: Mapping[str, Any]) -> str:
    """A 16-hex-digit content key of ``identity``: the JSON-able fields that determine weights."""
    payload = json.dumps({"format": KEY_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_weights(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a corrupt or foreign file is a ReprlabError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ReprlabError(f"checkpoint {path} does not exist") from None
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReprlabError(
            f"cannot load {path} as weights ({first[:160]}); it is corrupt or not a plain "
            "tensor checkpoint (pickled objects such as dill checkpoints are refused)"
        ) from None


class TrainingFiles:
    """What a training callback may write into a store entry: checkpoints, snapshots, metrics."""

    def __init__(self, entry: Path) -> None:
        self.entry = entry
        self.checkpoint_path = entry / "work" / "last.pt"
        self.metrics_path = entry / "metrics.jsonl"

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved training state, or None when training starts from scratch."""
        if not self.checkpoint_path.exists():
            return None
        return load_weights(self.checkpoint_path)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace the resumable checkpoint with ``state`` (atomic)."""
        atomic_torch_save(self.checkpoint_path, state)

    def save_snapshot(self, epoch: int, weights: Mapping[str, torch.Tensor]) -> None:
        """Keep the weights after ``epoch`` (1-based) for analyses across training."""
        atomic_torch_save(self.entry / "snapshots" / f"epoch_{epoch:03d}.pt", dict(weights))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with one JSON line per finished epoch (atomic)."""
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))


@dataclass(frozen=True)
class StoredModel:
    """A complete store entry."""

    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        return self.path / "model.pt"

    def snapshot_epochs(self) -> list[int]:
        """Epochs whose weights were kept, ascending."""
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "snapshots").glob("*.pt"))

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:03d}.pt"

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch training metrics (empty for imported models)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ModelStore:
    """A directory of trained models keyed by :func:`store_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> StoredModel | None:
        """The complete entry ``key``, or None if it is absent or incomplete."""
        path = self.path(key)
        if not (path / COMPLETE).exists():
            return None
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ReprlabError(
                f"store entry {key} is damaged ({err}); remove it with `reprlab cache rm {key}`"
            ) from None
        return StoredModel(key=key, path=path, meta=meta)

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the exclusive lock of entry ``key`` (released when the process dies, too)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def is_locked(self, key: str) -> bool:
        """Whether another process holds the lock of ``key`` right now."""
        lock_path = self.root / f"{key}.lock"
        if not lock_path.exists():
            return False
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def obtain(
        self,
        key: str,
        meta: dict[str, Any],
        train: Callable[[TrainingFiles], tuple[Mapping[str, torch.Tensor], dict[str, Any]]],
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[StoredModel, bool]:
        """Return entry ``key``, training it first with ``train`` if it is missing.

        ``train(files)`` resumes from ``files.load_checkpoint()`` if there is one and returns
        (final weights, summary metrics). Only one process trains a key at a time; the others
        wait for the lock and then find the entry complete. Returns (entry, whether trained now).
        """
        found = self.get(key)
        if found is not None:
            return found, False
        with self.lock(key, on_wait):
            found = self.get(key)
            if found is not None:
                return found, False
            path = self.path(key)
            path.mkdir(parents=True, exist_ok=True)
            started = time.time()
            weights, summary = train(TrainingFiles(path))
            self._finalize(
                path, weights, {**meta, **summary, "train_seconds": time.time() - started}
            )
            shutil.rmtree(path / "work", ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        return entry, True

    def put(
        self, key: str, weights: Mapping[str, torch.Tensor], meta: dict[str, Any]
    ) -> StoredModel:
        """Write a complete entry ``key`` from given weights (e.g. an imported checkpoint)."""
        with self.lock(key):
            path = self.path(key)
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            self._finalize(path, weights, meta)
        entry = self.get(key)
        assert entry is not None
        return entry

    def _finalize(
        self, path: Path, weights: Mapping[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        atomic_torch_save(path / "model.pt", {k: v.detach().cpu() for k, v in weights.items()})
        meta = {**meta, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(path / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
        atomic_write_text(path / COMPLETE, "")

    def entries(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        """Every entry directory as (key, meta or None, status) where status is
        ``complete``, ``training`` (locked by a live process) or ``incomplete``."""
        if not self.root.exists():
            return []
        rows = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir()):
            key = path.name
            meta = None
            meta_path = path / "meta.json"
            if meta_path.exists():
                with contextlib.suppress(OSError, json.JSONDecodeError):
                    meta = json.loads(meta_path.read_text())
            if (path / COMPLETE).exists():
                status = "complete"
            elif self.is_locked(key):
                status = "training"
            else:
                status = "incomplete"
            rows.append((key, meta, status))
        return rows

    def resolve(self, name_or_key: str) -> list[str]:
        """Keys matching a key, a unique key prefix, or a recipe name."""
        keys = []
        for key, meta, _ in self.entries():
            if key.startswith(name_or_key) or (
                meta and meta.get("recipe", {}).get("name") == name_or_key
            ):
                keys.append(key)
        return keys

    def remove(self, key: str) -> None:
        """Delete entry ``key`` (refused while another process trains it)."""
        if self.is_locked(key):
            raise ReprlabError(f"store entry {key} is being trained by another process; try later")
        shutil.rmtree(self.path(key), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{key}.lock").unlink()

    def garbage_collect(self) -> list[str]:
        """Remove incomplete entries no process is training (e.g. killed runs); return their keys.

        Note: this discards the resumable checkpoint of an interrupted training.
        """
        removed = []
        for key, _, status in self.entries():
            if status == "incomplete":
                self.remove(key)
                removed.append(key)
        for path in self.root.glob("*.lock") if self.root.exists() else []:
            if not self.path(path.stem).exists() and not self.is_locked(path.stem):
                path.unlink(missing_ok=True)
        return removed
