"""The artifact store: everything reprlab trains or computes once, keyed by what determines it.

An artifact is a trained classifier, or anything else an analysis produces once and reuses: a
stitch layer, an MI critic, a downstream head, a set of optimised inputs. Its key is a hash of
exactly the fields that determine it (for an artifact trained against models, their keys too),
so a second request finds it and trains nothing. Layout under the store root::

    <key>/meta.json      kind, identity (the key's fields), final metrics, provenance
    <key>/artifact.pt    the payload: tensors or a state_dict (loaded with weights_only=True)
    <key>/metrics.jsonl  one line of training metrics per epoch (when trained in epochs)
    <key>/snapshots/epoch_NNN.pt   payloads kept at chosen epochs (classifiers: for cka_epochs)
    <key>/work/last.pt   resumable checkpoint while training (removed once complete)
    <key>/COMPLETE       written last: an entry without it is never used
    <key>.lock           taken while a process produces the entry

The store only moves files; producing an artifact is a callback it is handed (see
:meth:`ArtifactStore.obtain`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab import atomic
from reprlab.errors import ReprlabError

KEY_FORMAT = 2
"""Bumped when the meaning of stored payloads changes. 2: every entry's payload is artifact.pt
and carries a kind."""

COMPLETE = "COMPLETE"
PAYLOAD = "artifact.pt"

Payload = Any
"""What an artifact stores: a tensor, or dicts/lists of tensors and plain values."""


def store_key(identity: Mapping[str, Any]) -> str:
    """A 16-hex-digit content key of ``identity``: the JSON-able fields that determine an
    artifact (for a classifier: architecture, dataset, training recipe, adversary, seed)."""
    payload = json.dumps({"format": KEY_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def _detached_cpu(payload: Payload) -> Payload:
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu()
    if isinstance(payload, Mapping):
        return {k: _detached_cpu(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(_detached_cpu(v) for v in payload)
    return payload


class TrainingFiles:
    """What a producing callback may write into its entry: checkpoints, snapshots, metrics."""

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
        atomic.torch_save(self.checkpoint_path, state)

    def save_snapshot(self, epoch: int, payload: Payload) -> None:
        """Keep the payload after ``epoch`` (1-based), e.g. a classifier's weights."""
        atomic.torch_save(
            self.entry / "snapshots" / f"epoch_{epoch:03d}.pt", _detached_cpu(payload)
        )

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with one JSON line per finished epoch (atomic)."""
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in history))


@dataclass(frozen=True)
class StoredArtifact:
    """A complete store entry."""

    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        """What the artifact is: ``model`` (a classifier), ``stitch``, ``critic``, ..."""
        return str(self.meta.get("kind", "model"))

    @property
    def payload_path(self) -> Path:
        return self.path / PAYLOAD

    def load(self, map_location: torch.device | str = "cpu") -> Payload:
        """The stored payload (tensors on ``map_location``)."""
        return load_weights(self.payload_path, map_location)

    def snapshot_epochs(self) -> list[int]:
        """Epochs whose payload was kept, ascending."""
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "snapshots").glob("*.pt"))

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:03d}.pt"

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch training metrics (empty for imported or untrained artifacts)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


Producer = Callable[[TrainingFiles], tuple[Payload, dict[str, Any]]]
"""``produce(files) -> (payload, summary)``: trains or computes an artifact, resuming from
``files.load_checkpoint()`` when there is one."""


class ArtifactStore:
    """A directory of artifacts keyed by :func:`store_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> StoredArtifact | None:
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
        return StoredArtifact(key=key, path=path, meta=meta)

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
        produce: Producer,
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[StoredArtifact, bool]:
        """Return entry ``key``, producing it first with ``produce`` if it is missing.

        ``meta`` should carry the artifact's ``kind`` and ``identity``. Only one process
        produces a key at a time; the others wait for the lock and then find the entry complete.
        Returns (entry, whether it was produced now).
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
            payload, summary = produce(TrainingFiles(path))
            self._finalize(
                path, payload, {**meta, **summary, "train_seconds": time.time() - started}
            )
            shutil.rmtree(path / "work", ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        return entry, True

    def put(self, key: str, payload: Payload, meta: dict[str, Any]) -> StoredArtifact:
        """Write a complete entry ``key`` from a given payload (e.g. an imported checkpoint)."""
        with self.lock(key):
            path = self.path(key)
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            self._finalize(path, payload, meta)
        entry = self.get(key)
        assert entry is not None
        return entry

    def _finalize(self, path: Path, payload: Payload, meta: dict[str, Any]) -> None:
        atomic.torch_save(path / PAYLOAD, _detached_cpu(payload))
        meta = {"kind": "model", **meta, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic.write_text(path / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
        atomic.write_text(path / COMPLETE, "")

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
        """Delete entry ``key`` (refused while another process produces it)."""
        if self.is_locked(key):
            raise ReprlabError(f"store entry {key} is being trained by another process; try later")
        shutil.rmtree(self.path(key), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{key}.lock").unlink()

    def garbage_collect(self) -> list[str]:
        """Remove incomplete entries no process is producing (e.g. killed runs); return their keys.

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
