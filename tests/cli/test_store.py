"""The model store: hit/miss, locking, atomicity, garbage collection, corrupt files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from reprlab.errors import ReprlabError
from reprlab.io import atomic
from reprlab.io.store import ArtifactStore, TrainingFiles, load_weights, store_key

WEIGHTS = {"w": torch.arange(6.0).reshape(2, 3)}


def counting_trainer(calls: list, weights=WEIGHTS, delay: float = 0.0):
    def train(files):
        calls.append(files.load_checkpoint())
        time.sleep(delay)
        return weights, {"final": {"eval_clean_acc": 0.5}}

    return train


def test_key_is_order_independent_and_content_sensitive() -> None:
    assert store_key({"a": 1, "b": [1, 2]}) == store_key({"b": [1, 2], "a": 1})
    assert store_key({"a": 1}) != store_key({"a": 2})
    assert len(store_key({"a": 1})) == 16


def test_miss_trains_once_then_hits(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    calls: list = []
    entry, trained = store.obtain("k1", {"recipe": {"name": "m"}}, counting_trainer(calls))
    assert trained and len(calls) == 1
    again, trained_again = store.obtain("k1", {}, counting_trainer(calls))
    assert not trained_again and len(calls) == 1
    assert again.meta["final"]["eval_clean_acc"] == 0.5 and "train_seconds" in again.meta
    assert torch.equal(load_weights(entry.payload_path)["w"], WEIGHTS["w"])
    assert not (entry.path / "work").exists()


def test_entry_without_completion_marker_is_never_used(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    half = tmp_path / "k2"
    half.mkdir()
    atomic.torch_save(half / "artifact.pt", {"w": torch.zeros(1)})  # weights, but no COMPLETE
    assert store.get("k2") is None
    calls: list = []
    entry, trained = store.obtain("k2", {}, counting_trainer(calls))
    assert trained and torch.equal(load_weights(entry.payload_path)["w"], WEIGHTS["w"])


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)

    def dies_after_one_epoch(files):
        files.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(1)}})
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.obtain("k3", {}, dies_after_one_epoch)
    assert store.get("k3") is None
    calls: list = []
    store.obtain("k3", {}, counting_trainer(calls))
    assert calls[0]["epoch"] == 1


def test_concurrent_requests_train_once(tmp_path: Path) -> None:
    calls: list = []
    results: list = []

    def request():
        store = ArtifactStore(tmp_path)  # each thread opens the lock file itself, like a process
        results.append(store.obtain("k4", {}, counting_trainer(calls, delay=0.5)))

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(trained for _, trained in results) == [False, False, True]


def test_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "artifact.pt"
    with pytest.raises((AttributeError, TypeError, RuntimeError)):
        atomic.torch_save(target, {"f": lambda: None})  # cannot be pickled
    assert os.listdir(tmp_path) == []


def test_corrupt_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ReprlabError, match="cannot load"):
        load_weights(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module, not plain tensors
    with pytest.raises(ReprlabError, match="refused") as refused:
        load_weights(path)
    message = str(refused.value)
    # torch's cause, which sits below its generic advice, is named whole, on one line
    assert "Unsupported global: GLOBAL torch.nn.modules.linear.Linear" in message
    assert "\n" not in message and "Please use" not in message


def test_gc_removes_only_incomplete_unlocked_entries(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.obtain("done", {}, counting_trainer([]))
    (tmp_path / "stale").mkdir()
    assert store.garbage_collect() == ["stale"]
    assert store.get("done") is not None and not (tmp_path / "stale").exists()


def test_remove_by_recipe_name(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.obtain("abc123", {"recipe": {"name": "cnn_small"}}, counting_trainer([]))
    assert store.resolve("cnn_small") == ["abc123"] and store.resolve("abc") == ["abc123"]
    store.remove("abc123")
    assert store.get("abc123") is None


def test_any_kind_of_artifact_is_stored_once_with_its_kind(tmp_path: Path) -> None:
    """A non-classifier artifact (here a stitch-like payload with nested tensors) keyed by the
    keys of the models it depends on: produced once, loaded back exactly, listed with its kind."""
    store = ArtifactStore(tmp_path)
    identity = {"kind": "stitch", "front": "aaaa", "end": "bbbb", "tap": "layer2.0"}
    key = store_key(identity)
    payload = {"stitch": {"weight": torch.randn(4, 4, 1, 1)}, "bn": [torch.ones(3)], "n": 7}
    calls: list = []

    def produce(files):
        calls.append(files.load_checkpoint())
        return payload, {"final": {"accuracy": 0.9}}

    entry, produced = store.obtain(key, {"kind": "stitch", "identity": identity}, produce)
    again, produced_again = store.obtain(key, {"kind": "stitch"}, produce)
    assert produced and not produced_again and len(calls) == 1
    assert entry.kind == "stitch" and again.meta["identity"]["front"] == "aaaa"
    loaded = again.load()
    assert torch.equal(loaded["stitch"]["weight"], payload["stitch"]["weight"])
    assert loaded["n"] == 7 and torch.equal(loaded["bn"][0], torch.ones(3))
    assert [(k, m["kind"], s) for k, m, s in store.entries()] == [(key, "stitch", "complete")]
    assert store_key({**identity, "end": "cccc"}) != key, "the end model's key is part of the key"


def test_cache_ls_shows_the_kind_of_every_entry(tmp_path: Path) -> None:
    from helpers import run_reprlab

    store = ArtifactStore(tmp_path / "store")
    store.put("a" * 16, {"w": torch.zeros(1)}, {"kind": "critic", "label": "critic of m"})
    listed = run_reprlab("cache", "ls", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "critic" in listed.stdout and "critic of m" in listed.stdout


def test_files_get_the_users_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.torch_save(tmp_path / "b.pt", {"w": torch.zeros(1)})
    finally:
        os.umask(previous)
    for name in ("a.txt", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_resume_keeps_a_checkpoint_that_is_older_than_the_metrics(tmp_path: Path) -> None:
    """Killed between an epoch's metrics and its checkpoint: that is no damage; the training
    resumes and the metrics are those of the checkpoint."""
    files = TrainingFiles(tmp_path / "entry")
    files.save_snapshot(1, {"w": torch.ones(2)})
    files.write_metrics([{"epoch": 1}])
    files.save_checkpoint({"epoch": 1})
    files.save_snapshot(2, {"w": torch.ones(2)})
    files.write_metrics([{"epoch": 1}, {"epoch": 2}])  # killed here
    resumed = TrainingFiles(tmp_path / "entry")
    assert resumed.load_checkpoint() == {"epoch": 1}
    assert (tmp_path / "entry" / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert set(resumed.files) == {"snapshots/epoch_001.pt", "metrics.jsonl"}


def test_a_damaged_snapshot_makes_the_training_start_again(tmp_path: Path) -> None:
    files = TrainingFiles(tmp_path / "entry")
    files.save_snapshot(1, {"w": torch.ones(2)})
    files.save_checkpoint({"epoch": 1})
    snapshot = tmp_path / "entry" / "snapshots" / "epoch_001.pt"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    snapshot.write_bytes(bytes(data))
    assert TrainingFiles(tmp_path / "entry").load_checkpoint() is None
    assert not snapshot.exists() and not (tmp_path / "entry" / "work").exists()
