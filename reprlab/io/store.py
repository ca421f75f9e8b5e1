"""The artifact store: everything reprlab trains or computes once, keyed by what determines it.

An artifact is a trained classifier, or anything else an analysis produces once and reuses: a
stitch layer, an MI critic, a downstream head, a set of optimised inputs. Its key is a hash of
exactly the fields that determine it (for an artifact trained against models, their keys too),
so a second request finds it and trains nothing. Layout under the store root::

    <key>/meta.json      kind, identity (the key's fields), final metrics, provenance, and the
                         sha256 and size of every file below (``files``)
    <key>/artifact.pt    the payload: tensors or a state_dict (loaded with weights_only=True)
    <key>/metrics.jsonl  one line of training metrics per epoch (when trained in epochs)
    <key>/snapshots/epoch_NNN.pt   payloads kept at chosen epochs (classifiers: for cka_epochs)
    <key>/work/last.pt   resumable checkpoint while training (removed once complete)
    <key>/COMPLETE       written last: ``sha256 <hex>`` of meta.json; an entry without it is
                         never used
    <key>.lock           taken while a process produces, imports or removes the entry

Integrity. Every file is hashed from the bytes written, when it is written (a snapshot when its
epoch ends, not when training finishes), so damage at any later time is caught: COMPLETE seals
meta.json, meta.json seals every payload, snapshot and metrics file. A run that finds an entry
verifies all of it before using any of it; a mismatch, a missing file, or non-finite weights
stop the run with one line naming the entry and ``reprlab cache rm <key>``. The resumable
checkpoint carries its own hash in a header (``work/last.pt`` is not a plain torch file) and the
hashes of the snapshots written so far; if it or one of them is damaged, training starts again
from scratch (a warning says so). Nothing is unpickled before its hash matched, and everything
is loaded with ``weights_only=True``.

Locking. A process producing, importing or removing entry ``<key>`` holds an exclusive
``flock(2)`` on ``<key>.lock``; the kernel releases it when the process dies, ``kill -9``
included, so there are no stale locks. Lock files are never unlinked (not by ``cache rm``, not by
``cache gc``): a process waiting on an unlinked file's inode and a newcomer locking a new file
at the same path would both "hold" the lock. As a second guard against a store deleted by hand,
:meth:`ArtifactStore.lock` checks after acquiring that the path still names the inode it locked
and retries otherwise. ``flock`` excludes processes on one machine on a local filesystem; across
machines on NFS it relies on Linux's emulation over POSIX locks, which needs the NFS lock
manager (``lockd``/``statd`` for NFSv3, built into NFSv4); without it (``nolock`` mounts) locks
are local to each client. Lustre and GPFS need their ``flock`` mount option. Readers take no
lock: a complete entry is immutable until removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reprlab.errors import ReprlabError
from reprlab.io import atomic

log = logging.getLogger("reprlab")

KEY_FORMAT = 3
"""Bumped when the meaning of stored entries changes. 2: every entry's payload is artifact.pt
and carries a kind. 3: every file of an entry is sealed by sha256 (meta.json ``files``, COMPLETE
holds meta.json's hash); model identities carry an architecture version."""

COMPLETE = "COMPLETE"
PAYLOAD = "artifact.pt"
META = "meta.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "work/last.pt"
_SEAL = b"reprlab-sealed sha256="
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}

Payload = Any
"""What an artifact stores: a tensor, or dicts/lists of tensors and plain values."""


def store_key(identity: Mapping[str, Any]) -> str:
    """A 16-hex-digit content key of ``identity``: the JSON-able fields that determine an
    artifact (for a classifier: architecture and its version, dataset, training recipe,
    adversary, seed)."""
    payload = json.dumps({"format": KEY_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_cause(err: BaseException) -> str:
    """The cause of a failed ``torch.load`` as one whole line.

    torch's weights-only refusal opens with generic advice and names the cause (the unsupported
    global or opcode) further down; that cause is what the user needs.
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    marker = "WeightsUnpickler error:"
    if marker in text:
        lines = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if lines:
            return lines[0].split(". Please use")[0].rstrip(".")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _torch_load(data: bytes | Path, origin: str, map_location: torch.device | str) -> Any:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ReprlabError(
            f"cannot load {origin} as weights ({load_cause(err)}); it is corrupt or not a plain "
            "tensor checkpoint (pickled objects such as dill checkpoints are refused)"
        ) from None


def load_weights(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` of a file outside the store (e.g. one to import);
    a missing, corrupt or foreign file is a ReprlabError."""
    if not Path(path).exists():
        raise ReprlabError(f"checkpoint {path} does not exist")
    return _torch_load(Path(path), str(path), map_location)


def serialize(payload: Payload) -> bytes:
    """The bytes ``torch.save`` writes for ``payload`` (tensors detached, on the CPU)."""
    buffer = io.BytesIO()
    torch.save(_detached_cpu(payload), buffer)
    return buffer.getvalue()


def non_finite(payload: Payload, prefix: str = "") -> str | None:
    """The name of the first floating tensor in ``payload`` holding NaN or ±inf, else None."""
    if isinstance(payload, torch.Tensor):
        floating = payload.is_floating_point() or payload.is_complex()
        finite = not floating or bool(torch.isfinite(payload).all())
        return None if finite else (prefix or "the tensor")
    if isinstance(payload, Mapping):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in payload.items()]
    elif isinstance(payload, (list, tuple)):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(payload)]
    else:
        return None
    for name, value in items:
        found = non_finite(value, name)
        if found is not None:
            return found
    return None


def _detached_cpu(payload: Payload) -> Payload:
    if isinstance(payload, torch.Tensor):
        return payload.detach().cpu()
    if isinstance(payload, Mapping):
        return {k: _detached_cpu(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(_detached_cpu(v) for v in payload)
    return payload


@contextlib.contextmanager
def writing_to(root: Path) -> Iterator[None]:
    """Turn "cannot write here" (read-only, permission, disk full) into one ReprlabError line."""
    try:
        yield
    except OSError as err:
        if err.errno not in _UNWRITABLE:
            raise
        where = f" ({err.filename})" if err.filename and Path(err.filename) != Path(root) else ""
        raise ReprlabError(
            f"cannot write to the store at {root}: {err.strerror}{where}; make it writable, "
            "or point paths.store= (or REPRLAB_STORE) at a writable directory"
        ) from None


def _seal(data: bytes) -> bytes:
    return _SEAL + sha256(data).encode() + b"\n" + data


def _unseal(blob: bytes) -> bytes | None:
    """The body of a sealed file, or None when the header is missing or the hash differs."""
    if not blob.startswith(_SEAL):
        return None
    header, _, body = blob.partition(b"\n")
    if header[len(_SEAL) :].decode(errors="replace") != sha256(body):
        return None
    return body


class TrainingFiles:
    """What a producing callback may write into its entry: checkpoints, snapshots, metrics.

    Every file is hashed from the bytes written; the hashes travel in the resumable checkpoint
    (so a resumed training still knows them) and end up in meta.json.
    """

    def __init__(self, entry: Path, key: str = "", root: Path | None = None) -> None:
        self.entry = entry
        self.key = key or entry.name
        self.root = root if root is not None else entry.parent
        self.checkpoint_path = entry / CHECKPOINT
        self.metrics_path = entry / METRICS
        self.files: dict[str, dict[str, Any]] = {}
        self._metrics: bytes | None = None

    def _write(self, relative: str, data: bytes) -> None:
        with writing_to(self.root):
            atomic.write_bytes(self.entry / relative, data)
        self.files[relative] = {"sha256": sha256(data), "bytes": len(data)}

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved training state, or None when training starts from scratch.

        A damaged checkpoint, or a damaged snapshot or metrics file it vouches for, is thrown
        away with everything written so far (a warning says so): training starts again.
        """
        if not self.checkpoint_path.exists():
            return None
        body = _unseal(self.checkpoint_path.read_bytes())
        problem = "it does not match its own sha256" if body is None else None
        checkpoint = None
        if body is not None:
            try:
                checkpoint = _torch_load(body, str(self.checkpoint_path), "cpu")
            except ReprlabError as err:
                problem = str(err)
        if checkpoint is not None and problem is None:
            files = checkpoint.get("files", {}) if isinstance(checkpoint, dict) else None
            if not isinstance(files, dict) or "state" not in checkpoint:
                problem = "it is not a reprlab training checkpoint"
            else:  # metrics.jsonl is rewritten from the checkpoint's own copy below
                problem = _check_files(self.entry, {k: v for k, v in files.items() if k != METRICS})
        if problem is not None:
            log.warning(
                "the resumable checkpoint of store entry %s is damaged (%s); training from scratch",
                self.key,
                problem,
            )
            self.discard()
            return None
        self.files = {k: v for k, v in checkpoint["files"].items() if k != METRICS}
        self._metrics = checkpoint.get("metrics")
        if self._metrics is not None:
            # A run killed between an epoch's metrics and its checkpoint left newer metrics.
            self._write(METRICS, self._metrics)
        return checkpoint["state"]

    def discard(self) -> None:
        """Remove everything written so far (checkpoint, snapshots, metrics)."""
        with writing_to(self.root):
            for name in ("work", "snapshots"):
                shutil.rmtree(self.entry / name, ignore_errors=True)
            self.metrics_path.unlink(missing_ok=True)
        self.files, self._metrics = {}, None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace the resumable checkpoint with ``state`` (atomic, sealed by its sha256).

        Save it *after* the epoch's snapshot and metrics, so that a checkpoint never vouches for
        a file that was not written.
        """
        data = serialize({"state": state, "files": self.files, "metrics": self._metrics})
        with writing_to(self.root):
            atomic.write_bytes(self.checkpoint_path, _seal(data))

    def save_snapshot(self, epoch: int, payload: Payload) -> None:
        """Keep the payload after ``epoch`` (1-based), e.g. a classifier's weights."""
        self._write(f"snapshots/epoch_{epoch:03d}.pt", serialize(payload))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with one JSON line per finished epoch (atomic; the next
        checkpoint keeps a copy)."""
        self._metrics = "".join(json.dumps(r) + "\n" for r in history).encode()
        self._write(METRICS, self._metrics)


def _check_files(entry: Path, files: Mapping[str, Any]) -> str | None:
    """The first problem with the recorded ``files`` of ``entry`` (missing, size, sha256)."""
    for relative, record in sorted(files.items()):
        path = entry / relative
        if not isinstance(record, Mapping) or "sha256" not in record:
            return f"the record of {relative} in {META} is malformed"
        if not path.is_file():
            return f"{relative} is missing"
        size = path.stat().st_size
        if size != record.get("bytes", size):
            return f"{relative} has {size} bytes, {record['bytes']} were written"
        if file_sha256(path) != record["sha256"]:
            return f"{relative} does not match the sha256 recorded when it was written"
    return None


def _damaged(key: str, label: str | None, problem: str) -> ReprlabError:
    name = f" ({label})" if label else ""
    return ReprlabError(
        f"store entry {key}{name} is damaged: {problem}; remove it with "
        f"`reprlab cache rm {key}` and run again to retrain it (or re-import it)"
    )


def _label(meta: Mapping[str, Any] | None) -> str | None:
    if not meta:
        return None
    recipe = meta.get("recipe")
    name = recipe.get("name") if isinstance(recipe, Mapping) else None
    return name or meta.get("label")


@dataclass(frozen=True)
class StoredArtifact:
    """A complete store entry whose meta.json matched its COMPLETE seal."""

    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        """What the artifact is: ``model`` (a classifier), ``stitch``, ``critic``, ..."""
        return str(self.meta.get("kind", "model"))

    @property
    def label(self) -> str | None:
        """The recipe name or label it was stored under."""
        return _label(self.meta)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Relative path -> {"sha256", "bytes"} of every file, as written."""
        return dict(self.meta.get("files", {}))

    @property
    def payload_path(self) -> Path:
        return self.path / PAYLOAD

    @property
    def payload_sha256(self) -> str:
        return str(self.files[PAYLOAD]["sha256"])

    def damaged(self, problem: str) -> ReprlabError:
        """The one-line error for this entry with ``problem`` (names the remedy)."""
        return _damaged(self.key, self.label, problem)

    def verify(self) -> None:
        """Check every recorded file (presence, size, sha256); raise ReprlabError on the first
        problem."""
        problem = _check_files(self.path, self.files)
        if problem is not None:
            raise self.damaged(problem)

    def _load_file(self, relative: str, map_location: torch.device | str) -> Payload:
        record = self.files.get(relative)
        if record is None:
            raise self.damaged(f"{relative} is not recorded in {META}")
        try:
            data = (self.path / relative).read_bytes()
        except FileNotFoundError:
            raise self.damaged(f"{relative} is missing") from None
        if sha256(data) != record["sha256"]:
            raise self.damaged(f"{relative} does not match the sha256 recorded when it was written")
        try:
            payload = _torch_load(data, f"{self.path / relative}", map_location)
        except ReprlabError as err:
            raise self.damaged(str(err)) from None
        bad = non_finite(payload)
        if bad is not None:
            raise ReprlabError(
                f"store entry {self.key} ({self.label or self.kind}) holds non-finite values "
                f"(NaN or inf) in {bad} of {relative}; remove it with `reprlab cache rm "
                f"{self.key}` and retrain it with other settings"
            )
        return payload

    def load(self, map_location: torch.device | str = "cpu") -> Payload:
        """The stored payload (tensors on ``map_location``), checked against its sha256 and for
        non-finite values."""
        return self._load_file(PAYLOAD, map_location)

    def snapshot_epochs(self) -> list[int]:
        """Epochs whose payload was kept, ascending."""
        return sorted(
            int(Path(name).stem.split("_")[1])
            for name in self.files
            if name.startswith("snapshots/epoch_")
        )

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:03d}.pt"

    def load_snapshot(self, epoch: int, map_location: torch.device | str = "cpu") -> Payload:
        """The payload kept after ``epoch``, checked like :meth:`load`."""
        return self._load_file(f"snapshots/epoch_{epoch:03d}.pt", map_location)

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch training metrics (empty for imported or untrained artifacts)."""
        record = self.files.get(METRICS)
        if record is None:
            return []
        data = (self.path / METRICS).read_bytes() if (self.path / METRICS).exists() else b""
        if sha256(data) != record["sha256"]:
            raise self.damaged(f"{METRICS} does not match the sha256 recorded when it was written")
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


Producer = Callable[[TrainingFiles], tuple[Payload, dict[str, Any]]]
"""``produce(files) -> (payload, summary)``: trains or computes an artifact, resuming from
``files.load_checkpoint()`` when there is one."""


class ArtifactStore:
    """A directory of artifacts keyed by :func:`store_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def _lock_path(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    def get(self, key: str) -> StoredArtifact | None:
        """The complete entry ``key``, or None if it is absent or incomplete.

        Checks meta.json against the hash in COMPLETE (not the other files: see
        :meth:`StoredArtifact.verify`); a mismatch is a ReprlabError naming the remedy.
        """
        path = self.path(key)
        if not (path / COMPLETE).exists():
            return None
        meta, problem = _read_sealed_meta(path)
        if problem is not None:
            raise _damaged(key, _label(meta), problem)
        assert meta is not None
        return StoredArtifact(key=key, path=path, meta=meta)

    @contextlib.contextmanager
    def lock(
        self, key: str, on_wait: Callable[[], None] | None = None, *, wait: bool = True
    ) -> Iterator[None]:
        """Hold the exclusive lock of entry ``key`` (released when the process dies, too).

        ``wait=False`` raises ReprlabError instead of waiting when another process holds it.
        """
        path = self._lock_path(key)
        waited = False
        while True:
            with writing_to(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
                handle = open(path, "a+")  # noqa: SIM115 (closed below or after the yield)
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not wait:
                        raise ReprlabError(
                            f"store entry {key} is being produced by another process; try later"
                        ) from None
                    if on_wait is not None and not waited:
                        on_wait()
                    waited = True
                    fcntl.flock(handle, fcntl.LOCK_EX)
                if _same_file(path, handle):
                    break
            except BaseException:
                handle.close()
                raise
            handle.close()  # the path was unlinked or replaced while we waited: lock it anew
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def is_locked(self, key: str) -> bool:
        """Whether another process holds the lock of ``key`` right now (works read-only)."""
        try:
            handle = open(self._lock_path(key))  # noqa: SIM115
        except OSError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
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
        """Return entry ``key`` (verified), producing it first with ``produce`` if missing.

        ``meta`` should carry the artifact's ``kind`` and ``identity``; it is written to the
        entry before production starts (so ``cache ls`` describes an unfinished entry). Only one
        process produces a key at a time; the others wait for the lock and then find the entry
        complete. Returns (entry, whether it was produced now).
        """
        found = self.get(key)
        if found is None:
            with self.lock(key, on_wait):
                found = self.get(key)
                if found is None:
                    self._produce(key, meta, produce)
                    entry = self.get(key)
                    assert entry is not None
                    return entry, True
        found.verify()
        return found, False

    def _produce(self, key: str, meta: dict[str, Any], produce: Producer) -> None:
        path = self.path(key)
        with writing_to(self.root):
            path.mkdir(parents=True, exist_ok=True)
            started_meta = {"kind": "model", **meta, "status": "incomplete"}
            atomic.write_text(path / META, json.dumps(started_meta, indent=2, sort_keys=True))
        files = TrainingFiles(path, key, self.root)
        started = time.time()
        payload, summary = produce(files)
        self._finalize(
            path, payload, {**meta, **summary, "train_seconds": time.time() - started}, files
        )
        with writing_to(self.root):
            shutil.rmtree(path / "work", ignore_errors=True)

    def put(
        self, key: str, payload: Payload, meta: dict[str, Any], *, force: bool = False
    ) -> StoredArtifact:
        """Write a complete entry ``key`` from a given payload (e.g. an imported checkpoint).

        Refuses (ReprlabError) to replace a complete entry, or one holding a resumable
        checkpoint, unless ``force``; refuses while another process produces the entry.
        """
        with self.lock(key, wait=False):
            path = self.path(key)
            if not force:
                existing = self.describe_existing(key)
                if existing is not None:
                    raise ReprlabError(
                        f"store entry {key} already holds {existing}; replacing it would lose "
                        "it: pass --force to replace it, or `reprlab cache rm "
                        f"{key}` first"
                    )
            with writing_to(self.root):
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True)
            self._finalize(path, payload, meta, TrainingFiles(path, key, self.root))
        entry = self.get(key)
        assert entry is not None
        return entry

    def describe_existing(self, key: str) -> str | None:
        """What replacing entry ``key`` would lose ("a trained model (name)", ...), or None."""
        path = self.path(key)
        if (path / COMPLETE).exists():
            meta, _ = _read_sealed_meta(path)
            source = (meta or {}).get("source", "trained")
            name = _label(meta)
            return f"a{'n' if source == 'imported' else ''} {source} " + (
                f"model ({name})" if name else "entry"
            )
        if (path / CHECKPOINT).exists():
            return "a partly trained model (its resumable checkpoint)"
        return None

    def _finalize(
        self, path: Path, payload: Payload, meta: dict[str, Any], files: TrainingFiles
    ) -> None:
        data = serialize(payload)
        with writing_to(self.root):
            atomic.write_bytes(path / PAYLOAD, data)
            for stray in (path / "snapshots").glob("*"):  # not vouched for by any checkpoint
                if f"snapshots/{stray.name}" not in files.files:
                    stray.unlink()
            recorded = {**files.files, PAYLOAD: {"sha256": sha256(data), "bytes": len(data)}}
            meta = {
                "kind": "model",
                **meta,
                "key": path.name,
                "status": "complete",
                "format": KEY_FORMAT,
                "files": recorded,
                "completed": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            meta_bytes = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
            atomic.write_bytes(path / META, meta_bytes)
            atomic.write_text(path / COMPLETE, f"sha256 {sha256(meta_bytes)}\n")

    def entries(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        """Every entry directory as (key, meta or None, status) where status is ``complete``,
        ``damaged`` (its meta.json does not match COMPLETE), ``outdated`` (written by a reprlab
        before entries were hashed: its key is no longer asked for), ``training`` (locked by a
        live process) or ``incomplete``."""
        if not self.root.exists():
            return []
        rows = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir()):
            key = path.name
            if (path / COMPLETE).exists():
                meta, problem = _read_sealed_meta(path)
                status = "complete" if problem is None else "damaged"
                if problem is not None and (path / COMPLETE).stat().st_size == 0:
                    status = "outdated"  # format 2: an empty marker, no hashes; never used
            else:
                meta = None
                with contextlib.suppress(OSError, ValueError):
                    meta = json.loads((path / META).read_text())
                status = "training" if self.is_locked(key) else "incomplete"
            rows.append((key, meta if isinstance(meta, dict) else None, status))
        return rows

    def verify_all(self) -> list[tuple[str, str | None]]:
        """(key, problem or None) for every complete or damaged entry, each fully verified."""
        results = []
        for key, _, status in self.entries():
            if status not in ("complete", "damaged"):
                continue
            try:
                entry = self.get(key)
                assert entry is not None
                entry.verify()
                entry.load()
                for epoch in entry.snapshot_epochs():
                    entry.load_snapshot(epoch)
                entry.history()
            except ReprlabError as err:
                results.append((key, str(err)))
            else:
                results.append((key, None))
        return results

    def resolve(self, name_or_key: str) -> list[str]:
        """Keys ``name_or_key`` names: the key itself when an entry has it, else every key it
        prefixes and every entry of that recipe name (the caller decides whether several are
        meant)."""
        if name_or_key and (self.root / name_or_key).is_dir():
            return [name_or_key]
        keys = []
        for key, meta, _ in self.entries():
            if key.startswith(name_or_key) or (meta and _label(meta) == name_or_key):
                keys.append(key)
        return keys

    def remove(self, key: str) -> None:
        """Delete entry ``key`` under its lock (refused while another process produces it).

        The lock file stays (see the module docstring).
        """
        with self.lock(key, wait=False), writing_to(self.root):
            shutil.rmtree(self.path(key), ignore_errors=True)

    def garbage_collect(self) -> list[str]:
        """Remove incomplete entries no process is producing (e.g. killed runs) and outdated
        ones (no run uses them); return their keys.

        Note: this discards the resumable checkpoint of an interrupted training. Lock files stay.
        """
        removed = []
        for key, _, status in self.entries():
            if status not in ("incomplete", "outdated"):
                continue
            # A lock taken meanwhile (a run resuming it) means: leave it.
            with contextlib.suppress(ReprlabError), self.lock(key, wait=False):
                marker = self.path(key) / COMPLETE
                if not marker.exists() or marker.stat().st_size == 0:
                    with writing_to(self.root):
                        shutil.rmtree(self.path(key), ignore_errors=True)
                    removed.append(key)
        return removed


def _same_file(path: Path, handle: Any) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _read_sealed_meta(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta, None) when meta.json matches the hash in COMPLETE, else (meta or None, problem)."""
    try:
        seal = (path / COMPLETE).read_bytes()
    except OSError as err:
        return None, f"{COMPLETE} cannot be read ({err.strerror})"
    try:
        data = (path / META).read_bytes()
    except FileNotFoundError:
        return None, f"{META} is missing"
    except OSError as err:
        return None, f"{META} cannot be read ({err.strerror})"
    meta: Any = None
    with contextlib.suppress(ValueError):
        meta = json.loads(data)
    meta = meta if isinstance(meta, dict) else None
    if seal.strip() != f"sha256 {sha256(data)}".encode():
        what = f"{META} does not match the sha256 in {COMPLETE}"
        if not seal.startswith(b"sha256 "):
            what = f"{COMPLETE} does not hold the sha256 of {META}"
        return meta, what
    if meta is None:
        return None, f"{META} is not a JSON object"
    if not isinstance(meta.get("files"), dict) or PAYLOAD not in meta["files"]:
        return meta, f"{META} records no sha256 of {PAYLOAD}"
    return meta, _misplaced(path.name, meta)


def _misplaced(key: str, meta: Mapping[str, Any]) -> str | None:
    """Why the sealed ``meta`` does not belong under ``key`` (None when it does).

    The seal proves the files are the ones written, not *where*: an entry copied or moved under
    another key would pass it. So the key is bound to the content twice: meta.json records the
    key it was written under, and the key is recomputed from the identity it records.
    """
    recorded = meta.get("key")
    if recorded != key:
        if recorded is None:
            return f"{META} records no key, so it cannot be told apart from a copied entry"
        return (
            f"{META} was written for entry {recorded}: it was copied or moved here, and "
            "its weights are not this key's model"
        )
    identity = meta.get("identity")
    if isinstance(identity, Mapping) and store_key(identity) != key:
        return (
            f"the identity in {META} hashes to {store_key(identity)}, not to this key: the "
            "entry was edited, copied or moved"
        )
    return None
