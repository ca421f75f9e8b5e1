"""No data loss, no silent substitution: ``cache rm`` removes only what it is unambiguously told
to, a store entry's key is bound to its content (a copied or moved entry is refused by use and by
``cache verify``), runs never write into ``/``, a system directory or an earlier run, a write
failure is one line with the run recorded failed, and a sweep keeps its summary current."""

from __future__ import annotations

import errno
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from reprlab.cli import app as cli
from reprlab.errors import ReprlabError
from reprlab.io.runs import run_dir_problem
from reprlab.io.store import ArtifactStore, store_key


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def identity(name: str) -> dict:
    return {"kind": "model", "arch": "cnn_small", "recipe": name, "dataset": "synthetic"}


def fill(root: Path, names: list[str]) -> dict[str, str]:
    """One model-like entry per name, each under the key of its identity; name -> key."""
    store = ArtifactStore(root)
    keys = {}
    for i, name in enumerate(names):
        key = store_key(identity(name))
        meta = {"kind": "model", "recipe": {"name": name}, "identity": identity(name)}
        store.put(key, {"w": torch.full((4,), float(i))}, meta)
        keys[name] = key
    return keys


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_cli(capsys, *args: str) -> tuple[int, list[str], str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, [line for line in out.err.splitlines() if line.strip()], out.out


# --- cache rm ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", " "])
def test_cache_rm_empty_name_is_refused_and_the_store_unchanged(tmp_path, capsys, name) -> None:
    fill(tmp_path, ["a", "b", "c"])
    before = snapshot(tmp_path)
    code, err, _ = run_cli(capsys, "cache", "rm", name, "--store", str(tmp_path))
    assert code == 2 and len(err) == 1 and "--all" in err[0], err
    assert snapshot(tmp_path) == before


def test_cache_rm_ambiguous_prefix_lists_the_matches_and_removes_nothing(tmp_path, capsys) -> None:
    keys = fill(tmp_path, [f"m{i}" for i in range(40)])
    first = sorted(keys.values())[0][0]
    matching = sorted(k for k in keys.values() if k.startswith(first))
    assert len(matching) > 1, "40 random keys share a first hex digit"
    before = snapshot(tmp_path)
    code, err, _ = run_cli(capsys, "cache", "rm", first, "--store", str(tmp_path))
    assert code == 2 and len(err) == 1
    assert f"'{first}' matches {len(matching)} entries" in err[0] and matching[0] in err[0]
    assert "--yes" in err[0]
    assert snapshot(tmp_path) == before
    # A unique prefix removes exactly its entry; --yes removes every match; --all the rest.
    unique = keys["m0"][:12]
    assert run_cli(capsys, "cache", "rm", unique, "--store", str(tmp_path))[0] == 0
    assert not (tmp_path / keys["m0"]).exists() and len(list(tmp_path.glob("*/COMPLETE"))) == 39
    left = [k for k in matching if k != keys["m0"]]
    code, _, out = run_cli(capsys, "cache", "rm", first, "--yes", "--store", str(tmp_path))
    assert code == 0 and all(f"removed {k}" in out for k in left)
    assert len(list(tmp_path.glob("*/COMPLETE"))) == 39 - len(left)
    assert run_cli(capsys, "cache", "rm", "--all", "--store", str(tmp_path))[0] == 0
    assert list(tmp_path.glob("*/COMPLETE")) == []


def test_cache_rm_without_names_and_commands_on_a_missing_store(tmp_path, capsys) -> None:
    fill(tmp_path / "store", ["a"])
    code, err, _ = run_cli(capsys, "cache", "rm", "--store", str(tmp_path / "store"))
    assert code == 2 and len(err) == 1 and "--all" in err[0]
    for command in ("ls", "verify", "gc"):
        code, err, out = run_cli(capsys, "cache", command, "--store", str(tmp_path / "nowhere"))
        assert code == 2 and len(err) == 1 and "there is no store at" in err[0], (command, err)
        assert "empty" not in out and "intact" not in out
    assert not (tmp_path / "nowhere").exists()


# --- the key is bound to the content ---------------------------------------------------------


def test_an_entry_copied_under_another_key_is_refused_by_use_and_verify(tmp_path, capsys) -> None:
    keys = fill(tmp_path, ["cnn_small", "cnn_small_at"])
    std, rob = tmp_path / keys["cnn_small"], tmp_path / keys["cnn_small_at"]
    shutil.rmtree(std)
    shutil.copytree(rob, std)  # `cp -a` of the robust model's entry over the standard one's
    before = snapshot(tmp_path)
    store = ArtifactStore(tmp_path)
    with pytest.raises(ReprlabError) as caught:
        store.get(keys["cnn_small"])
    message = str(caught.value)
    assert f"store entry {keys['cnn_small']}" in message and keys["cnn_small_at"] in message
    assert "copied or moved" in message and f"reprlab cache rm {keys['cnn_small']}" in message
    assert store.get(keys["cnn_small_at"]) is not None, "the original is still fine"
    code, _, out = run_cli(capsys, "cache", "verify", "--store", str(tmp_path))
    assert code == 1 and "1 damaged" in out and keys["cnn_small"] in out
    assert snapshot(tmp_path) == before


def test_an_entry_whose_identity_is_not_its_key_is_refused(tmp_path) -> None:
    """Even with a matching ``key`` field, the identity must hash to the directory's key."""
    store = ArtifactStore(tmp_path)
    key = "0123456789abcdef"
    with pytest.raises(ReprlabError, match=f"hashes to {store_key(identity('x'))}"):
        store.put(key, {"w": torch.zeros(2)}, {"kind": "model", "identity": identity("x")})
    with pytest.raises(ReprlabError, match="edited, copied or moved"):
        store.get(key)


# --- run directories -----------------------------------------------------------------------


def test_run_dir_problem() -> None:
    assert "system directory" in run_dir_problem("/")
    assert "under the system directory /proc" in run_dir_problem("/proc/reprlab_x")
    assert "under the system directory /etc" in run_dir_problem("/etc/x/y")
    assert run_dir_problem("/usr/workspace/me/run") is None


BASE = ["dataset=synthetic", "model=cnn_small", "analysis=train", "progress=false"]


def test_an_earlier_run_is_never_overwritten(tmp_path, monkeypatch, capsys) -> None:
    earlier = tmp_path / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / "run.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for args in (
        [f"hydra.run.dir={earlier}"],
        ["-m", "seed=0,1", f"hydra.sweep.dir={earlier}"],
    ):
        code, err, _ = run_cli(capsys, "run", *BASE, *args)
        assert code == 2 and len(err) == 1 and "an earlier" in err[0], err
        assert snapshot(tmp_path) == before
    assert run_dir_problem(tmp_path / "empty") is None and run_dir_problem(tmp_path / "new") is None


# --- write failures ------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_run_recorded_failed(tmp_path, monkeypatch, capsys) -> None:
    """The figure writer hits ENOSPC: one line naming the file, exit 2, run.json ``failed``."""
    from reprlab.io import runs

    def full(self, name, figure, dpi=150):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / f"{name}.png"))

    monkeypatch.setattr(runs.RunDirectory, "save_figure", full)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:  # a single run's Hydra job exits with the code
        cli.main(
            [
                "run",
                *BASE,
                "dataset.train_limit=256",
                "model.train.epochs=1",
                "model.snapshot_epochs=[1]",
                "monitor.examples=50",
                "monitor.attack_steps=1",
                f"hydra.run.dir={run_dir}",
            ]
        )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert ended.value.code == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and ".png" in err[0] and "writable" in err[0]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]


def test_a_damaged_model_is_refused_before_any_run_directory(tmp_path, monkeypatch, capsys) -> None:
    """Store damage is found by the checks before Hydra starts: one line, nothing written."""
    from reprlab.cli.run import compose_config
    from reprlab.run.config import dataset_spec, recipe, recipe_dataset
    from reprlab.run.recipes import build_for, model_identity

    store_dir, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    cfg = compose_config([*BASE, f"paths.store={store_dir}"])
    spec = recipe(cfg.model)
    dataset = recipe_dataset(spec, dataset_spec(cfg.dataset))
    ident = model_identity(spec, dataset)
    key = store_key(ident)
    from reprlab.data import dataset_info

    weights = build_for(spec, dataset_info(dataset.name)).state_dict()
    meta = {"kind": "model", "recipe": {"name": spec.name}, "identity": ident}
    ArtifactStore(store_dir).put(key, weights, meta)
    payload = store_dir / key / "artifact.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    monkeypatch.chdir(work)
    code, err, _ = run_cli(capsys, "run", *BASE, f"paths.store={store_dir}")
    assert code == 2 and len(err) == 1 and f"store entry {key}" in err[0], err
    assert "does not match the sha256" in err[0]
    assert list(work.iterdir()) == [], "nothing written"


def test_mnist_labels_out_of_range_are_one_line(tmp_path) -> None:
    """A label file holding 10 (MNIST has 0..9) is corrupt data, not an IndexError later."""
    import os

    import numpy as np

    from reprlab.data import load_tensors
    from reprlab.data.mnist_offline import write_idx_labels

    real = Path(os.environ.get("REPRLAB_DATA", "outputs/data")).resolve() / "MNIST" / "raw"
    if not (real / "t10k-images-idx3-ubyte").exists():
        pytest.skip("MNIST is not on disk (REPRLAB_DATA)")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).symlink_to(real / name)
    labels = np.zeros(10000, dtype=np.uint8)
    labels[5] = 10
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ReprlabError, match=r"corrupt: its test labels span 0..10, not 0..9"):
        load_tensors("mnist", tmp_path, "test")


def test_a_sweep_killed_part_way_leaves_the_summary_of_what_finished(tmp_path) -> None:
    """summary.csv is rewritten as each job ends, so even ``kill -9`` of the sweep's process
    leaves the table of the jobs that finished."""
    import subprocess
    import sys
    import time

    from helpers import reprlab_env

    tiny = [*BASE, "dataset.train_limit=256", "model.train.epochs=1", "model.snapshot_epochs=[1]",
            "monitor.examples=50", "monitor.attack_steps=1"]  # fmt: skip
    sweep = subprocess.Popen(
        [sys.executable, "-m", "reprlab", "run", "-m", *tiny, "seed=0,1", "hydra.sweep.dir=s"],
        cwd=tmp_path,
        env=reprlab_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (tmp_path / "s" / "1" / "run.json").exists() and time.monotonic() < deadline:
        assert sweep.poll() is None, "the sweep ended before its second job started"
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=60)
    table = (tmp_path / "s" / "summary.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("0,train,completed"), table
