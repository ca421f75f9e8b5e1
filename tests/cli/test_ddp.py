"""Data-parallel training (trainer.devices > 1): DDP under torchrun, gloo on the CPU.

The science: DDP averages the ranks' gradients, and each rank's shard is a contiguous part of
the same seeded global batch, so an epoch in 2 processes equals one process on the global batch
up to float summation order (cnn_small has no BatchNorm).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import FAST, reprlab_env, run_reprlab
from torch import nn

from reprlab.core import distributed
from reprlab.core.fit import FitSettings, fit
from reprlab.data import TensorLoader
from reprlab.errors import ReprlabError

TRAIN = [*FAST, "analysis=train", "device=cpu"]


def _tiny_fit(rank: int, world: int, init: str, out: str) -> None:
    """One rank of a 2-process fit of a BatchNorm-free MLP (spawned by the test below)."""
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(96, 3, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (96,), generator=generator)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, seed=3, drop_last=True)
    net: nn.Module = model
    batches: object = loader
    if world > 1:
        net = distributed.wrap(model, torch.device("cpu"), sync_batchnorm=False)
        batches = distributed.ShardedBatches(loader, rank, world)

    def step(batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> object:
        x, y = batch
        logits = net(x)
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).sum()}

    settings = FitSettings(epochs=2, optimizer="sgd", lr=0.5, momentum=0.9, schedule="cosine")
    history = fit({"model": model}, step, batches, settings, device=torch.device("cpu"),
                  progress=False)  # fmt: skip
    if rank == 0:
        torch.save({"weights": model.state_dict(), "history": history}, out)
    if world > 1:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """fit with DDP over 2 gloo processes = fit in one process (weights within 1e-6, and the
    epoch records describe the global epoch: same loss, accuracy and example count)."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _tiny_fit(0, 1, "", str(one))
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_tiny_fit, args=(2, init, str(two)), nprocs=2, join=True)
    a, b = torch.load(one), torch.load(two)
    for key, value in a["weights"].items():
        assert torch.allclose(value, b["weights"][key], atol=1e-6, rtol=0), key
    assert not torch.equal(a["weights"]["1.weight"], _initial_first_layer())  # it trained
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-6)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)


def _initial_first_layer() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16)).state_dict()["1.weight"]


def test_sharded_batches_split_every_global_batch_contiguously() -> None:
    images = torch.arange(24, dtype=torch.float32).view(24, 1, 1, 1)
    loader = TensorLoader(images, torch.arange(24), batch_size=8, shuffle=True, seed=0)
    shards = [list(distributed.ShardedBatches(loader, r, 2).epoch(1)) for r in range(2)]
    for whole, left, right in zip(loader.epoch(1), *shards, strict=True):
        assert torch.equal(torch.cat([left[1], right[1]]), whole[1])
    odd = TensorLoader(images[:6], torch.arange(6), batch_size=3, shuffle=False)
    with pytest.raises(ValueError, match="does not split over 2 ranks"):
        list(distributed.ShardedBatches(odd, 0, 2).epoch(1))


def test_devices_beyond_the_machine_are_refused_in_one_line() -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(ReprlabError, match=f"trainer.devices={cores + 1} is more than"):
        distributed.check_devices(cores + 1, torch.device("cpu"))
    distributed.check_devices(1, torch.device("cpu"))


def test_a_gpu_index_with_several_devices_is_refused_not_ignored() -> None:
    from omegaconf import OmegaConf

    from reprlab.run.config import TrainerSpec, check_trainer

    trainer = TrainerSpec(devices=2, sync_batchnorm=False, bf16="auto", channels_last="auto",
                          compile="off")  # fmt: skip
    with pytest.raises(ReprlabError, match="CUDA_VISIBLE_DEVICES"):
        check_trainer(trainer, torch.device("cuda:1"), OmegaConf.create({}))


def _store_entry(root: Path) -> Path:
    (entry,) = [p for p in (root / "outputs" / "store").iterdir() if p.is_dir()]
    return entry


def _max_difference(a: Path, b: Path) -> float:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return max((x[k] - y[k]).abs().max().item() for k in x)


def _workers_alive(marker: str) -> list[int]:
    alive = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                alive.append(int(proc.name))
        except OSError:
            continue
    return alive


@pytest.mark.slow
def test_ddp_epoch_equals_one_process_and_killed_ddp_resumes(workdir: Path) -> None:
    """Through `reprlab run`: one epoch with trainer.devices=2 (torchrun, gloo) gives the
    weights of one process within 1e-5, under the same store key, rank 0 writing the entry.
    Then a 2-process training killed (SIGKILL to `reprlab run`) after an epoch's checkpoint
    leaves no worker behind, and the next run resumes to the weights of an uninterrupted
    2-process run."""
    one, two = workdir / "one", workdir / "two"
    one.mkdir()
    two.mkdir()
    assert run_reprlab("run", *TRAIN, cwd=one).returncode == 0
    ddp = run_reprlab("run", *TRAIN, "trainer.devices=2", cwd=two)
    assert ddp.returncode == 0, ddp.stderr
    assert "training with 2 CPU (gloo) processes" in ddp.stdout + ddp.stderr
    entry_one, entry_two = _store_entry(one), _store_entry(two)
    assert entry_one.name == entry_two.name  # trainer.* is not in the key
    assert _max_difference(entry_one / "artifact.pt", entry_two / "artifact.pt") <= 1e-5
    meta = json.loads((entry_two / "meta.json").read_text())
    assert meta["trainer"]["devices"] == 2
    (record,) = [json.loads(p.read_text()) for p in (two / "outputs").rglob("run.json")]
    assert record["trainer"]["devices"] == 2 and record["models"]["model"]["trained_now"]
    (run_log,) = (two / "outputs").rglob("reprlab.log")
    assert "[reprlab rank 0][INFO]" in run_log.read_text()  # the workers log to the run's log

    epochs = ["model.train.epochs=4", "model.snapshot_epochs=[2,4]"]
    reference, killed = workdir / "reference", workdir / "killed"
    reference.mkdir()
    killed.mkdir()
    # The reference is an uninterrupted run of the same 2-process job: over 4 epochs, 2 processes
    # drift from 1 by float summation order (6.7e-5 measured), which is not what resuming tests.
    done = run_reprlab("run", *TRAIN, *epochs, "trainer.devices=2", cwd=reference)
    assert done.returncode == 0, done.stderr
    args = [sys.executable, "-m", "reprlab", "run", *TRAIN, *epochs, "trainer.devices=2"]
    process = subprocess.Popen(args, cwd=killed, env=reprlab_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    store = killed / "outputs" / "store"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if list(store.glob("*/work/last.pt")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    marker = str(store)
    deadline = time.time() + 60
    while _workers_alive(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert not _workers_alive(marker), "torchrun workers outlived the killed run"
    entry = _store_entry(killed)
    assert not (entry / "COMPLETE").exists()

    resumed = run_reprlab("run", *TRAIN, *epochs, "trainer.devices=2", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    expected = _store_entry(reference)
    for name in ("artifact.pt", "snapshots/epoch_002.pt", "snapshots/epoch_004.pt"):
        assert _max_difference(expected / name, entry / name) <= 1e-5, name
    history = [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


def _fixed_start_pgd(**kwargs: object) -> object:
    """A PGD that starts from a fixed per-example point (x + ε/2·sign(sin(1000·x))) instead of a
    random one: a function of the example alone, so a rank's shard starts where one process
    would, and TRADES' KL has a non-zero gradient there (at x itself it is exactly zero, and the
    sign of float noise would decide the steps)."""
    from reprlab.core.attacks import PGD

    class FixedStart(PGD):
        def __call__(self, model, x, y=None, *, start=None, **rest):
            if start is None:
                start = (x + 0.5 * self.eps * torch.sign(torch.sin(1000 * x))).clamp(0, 1)
            return super().__call__(model, x, y, start=start, **rest)

    return FixedStart(**kwargs)


def _robust_fit(rank: int, world: int, init: str, out: str, method: str) -> None:
    """One rank of a 2-process TRADES/MART training of a BatchNorm-free MLP: the adversary runs
    on each rank's replica, the loss's forward passes through DDP (spawned by the test below)."""
    from reprlab.core.training_methods import TrainSettings, train_classifier

    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(64, 3, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    loader = TensorLoader(images, labels, batch_size=16, shuffle=True, seed=3, drop_last=True)
    # No random start: the inner maximisation is then a function of the weights and the example
    # alone, so the ranks' shards see exactly the adversarial examples one process would.
    adversary = _fixed_start_pgd(
        eps=0.1, step_size=0.04, steps=3, random_start=False, keep_best=False
    )
    settings = TrainSettings(
        epochs=2, lr=0.5, schedule="cosine", adversary=adversary, method=method, beta=5.0
    )
    history = train_classifier(model, loader, settings, device=torch.device("cpu"), progress=False)
    if rank == 0:
        torch.save({"weights": model.state_dict(), "history": history}, out)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow  # tens of seconds on the 2-core CPU; `make test-all` runs it
@pytest.mark.parametrize("method", ["trades", "mart"])
def test_robust_methods_in_two_gloo_ranks_equal_one_process(tmp_path: Path, method: str) -> None:
    """TRADES and MART under DDP (attack on the unwrapped replica, training forward through the
    DDP wrapper): the same weights as one process on the global batch (within 1e-5), and the
    epoch records (loss, clean and robust training accuracy) describe the global epoch."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _robust_fit(0, 1, "", str(one), method)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_robust_fit, args=(2, init, str(two), method), nprocs=2, join=True)
    a, b = torch.load(one), torch.load(two)
    for key, value in a["weights"].items():
        assert torch.allclose(value, b["weights"][key], atol=1e-5, rtol=0), key
    assert not torch.equal(a["weights"]["1.weight"], _initial_first_layer())  # it trained
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=1e-9)
        assert rb["train_robust_acc"] == pytest.approx(ra["train_robust_acc"], abs=1e-9)
