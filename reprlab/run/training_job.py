"""The training job: train one model recipe into its store entry, resuming where it stopped.

Called by the run context when the store misses a model. It builds the loaders (carving the
recipe's validation split out of the training data when it has one), the settings and the
held-out monitor, keeps the best-robust-validation weights when the recipe asks (Rice et al.
2020), and hands checkpoints, snapshots and metrics to the entry's files; the loop itself is
:func:`reprlab.core.training_methods.train_classifier`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from reprlab.core import distributed
from reprlab.core.attacks import PGD, robust_accuracy
from reprlab.core.training_methods import train_classifier
from reprlab.data import DatasetInfo, TensorLoader, dataset_info, load_tensors, make_loader
from reprlab.errors import ReprlabError
from reprlab.io.store import TrainingFiles
from reprlab.run.config import DatasetSpec, ModelRecipe, ValidationSpec
from reprlab.run.plan import estimate, measure_pass
from reprlab.run.recipes import build_for, monitor_attack, train_settings
from reprlab.runtime import SpeedSwitches, seeded_generator

log = logging.getLogger("reprlab")


DEFAULT_SPEED = SpeedSwitches(bf16=True, channels_last=True, compile=False)
"""What training did before the switches existed: bf16 and channels_last on CUDA only."""


@dataclass(frozen=True)
class Trainer:
    """How the training job runs (``trainer.*``, resolved for the run's device): the number of
    data-parallel processes, SyncBatchNorm, and the speed switches. Never in a store key."""

    devices: int = 1
    sync_batchnorm: bool = False
    speed: SpeedSwitches = field(default_factory=lambda: DEFAULT_SPEED)

    def record(self) -> dict[str, Any]:
        """As recorded in run.json and the store entry's meta.json."""
        speed = asdict(self.speed)
        return {"devices": self.devices, "sync_batchnorm": self.sync_batchnorm, **speed}


@dataclass(frozen=True)
class Monitor:
    """Held-out metrics after every epoch: clean and PGD accuracy on a fixed sample of
    ``examples`` test images drawn with ``seed``. The attack is the recipe's own
    (:func:`reprlab.run.recipes.monitor_attack`). A recipe with a validation split monitors on it
    instead, with its own settings (:func:`validation_monitor`), and only then can the numbers
    choose weights (the best-robust checkpoint)."""

    examples: int
    batch_size: int
    attack: PGD
    seed: int
    split: str = "test"

    def settings(self) -> dict[str, Any]:
        """What the monitor's numbers mean, as recorded in the store entry's meta.json."""
        attack = {k: v for k, v in self.attack.settings().items() if k != "attack"}
        return {
            "split": self.split,
            "examples": self.examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "attack": attack,
        }

    @property
    def names(self) -> tuple[str, str]:
        """The history's keys of (clean, robust) accuracy."""
        if self.split == "validation":
            return "val_clean_acc", "val_robust_acc"
        return "eval_clean_acc", f"eval_pgd{self.attack.steps}_acc"


def validation_monitor(spec: ModelRecipe, dataset: DatasetSpec) -> Monitor:
    """The monitor of a recipe with a validation split: every setting from the recipe (so from
    its key), the attack its own threat (:func:`reprlab.run.recipes.monitor_attack`)."""
    v = spec.validation
    assert v is not None
    return Monitor(
        examples=v.examples,
        batch_size=v.batch_size,
        attack=monitor_attack(spec, dataset, v.attack_steps),
        seed=v.seed,
        split="validation",
    )


def split_indices(n: int, validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices of ``range(n)``: disjoint, together all of it, ascending.

    The validation indices are the first ``validation`` of a permutation drawn with ``seed``
    (so the split is a fixed function of (n, validation, seed) and never touches the global
    RNG). Raises ReprlabError unless 0 < validation < n.
    """
    if not 0 < validation < n:
        raise ReprlabError(
            f"a validation split of {validation} images needs a training set larger than that, "
            f"and this one has {n}; lower model.validation.examples"
        )
    order = torch.randperm(n, generator=seeded_generator(seed))
    return order[validation:].sort().values, order[:validation].sort().values


def _split_loaders(
    spec: ModelRecipe,
    validation: ValidationSpec,
    dataset: DatasetSpec,
    info: DatasetInfo,
    device: torch.device,
) -> tuple[TensorLoader, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The training loader without the validation images, and the validation batches."""
    if not info.in_memory:
        raise ReprlabError(
            f"a validation split of {dataset.name} (streamed from disk) is not supported yet; "
            "set model.validation=null"
        )
    images, labels = load_tensors(
        dataset.name, dataset.root, "train", limit=dataset.train_limit, seed=spec.seed
    )
    train, held_out = split_indices(len(labels), validation.examples, validation.seed)
    loader = TensorLoader(
        images[train],
        labels[train],
        batch_size=spec.train.batch_size,
        shuffle=True,
        augment=info.augment if spec.train.augment else "none",
        seed=spec.seed,
        device=device,
        drop_last=True,
    )
    batches = TensorLoader(
        images[held_out],
        labels[held_out],
        batch_size=validation.batch_size,
        shuffle=False,
        device=device,
    )
    return loader, list(batches.epoch(0))


def train_recipe(
    spec: ModelRecipe,
    dataset: DatasetSpec,
    info: DatasetInfo,
    files: TrainingFiles,
    *,
    device: torch.device,
    monitor: Monitor,
    num_workers: int,
    progress: bool,
    trainer: Trainer = Trainer(),
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``spec`` on ``dataset`` into store entry ``files``; return (weights, summary).

    Resumes from the entry's checkpoint when one is there; writes a checkpoint and the metrics
    after every epoch and keeps the weights of ``spec.snapshot_epochs``. The summary records the
    monitor's settings (``monitor``) next to its final numbers, and how it was trained
    (``trainer``).

    ``trainer.devices > 1``: the training runs in that many processes under ``torchrun``
    (:func:`train_in_processes`); rank 0 writes the entry's files, this process (which holds
    the entry's lock) waits and returns the weights of the last checkpoint. Inside such a
    process (an initialised process group) every rank trains its shard; only rank 0's ``files``
    write.
    """
    if trainer.devices > 1 and not distributed.active():
        announce(spec, dataset, device, monitor, trainer)
        return train_in_processes(
            spec, dataset, files, device=device, monitor=monitor, num_workers=num_workers,
            progress=progress, trainer=trainer,
        )  # fmt: skip
    model = build_for(spec, info)
    validation = spec.validation
    if validation is not None:
        loader, monitor_batches = _split_loaders(spec, validation, dataset, info, device)
        monitor = validation_monitor(spec, dataset)
    else:
        loader = make_loader(
            dataset.name,
            dataset.root,
            "train",
            batch_size=spec.train.batch_size,
            train=True,
            augment=spec.train.augment,
            seed=spec.seed,
            device=device,
            limit=dataset.train_limit,
            num_workers=num_workers,
        )
        monitor_batches = list(
            make_loader(
                dataset.name,
                dataset.root,
                "test",
                batch_size=monitor.batch_size,
                train=False,
                seed=monitor.seed,
                device=device,
                limit=monitor.examples,
                num_workers=num_workers,
            ).epoch(0)
        )
    if len(loader) == 0:
        raise ReprlabError(
            f"fewer training images than model.train.batch_size={spec.train.batch_size}; "
            "lower the batch size or raise dataset.train_limit"
        )
    if not distributed.active():
        images = len(loader) * spec.train.batch_size
        announce(spec, dataset, device, monitor, trainer, images=images)
    clean_name, robust_name = monitor.names

    def evaluate(net: torch.nn.Module, epoch: int) -> dict[str, float]:
        generator = seeded_generator(monitor.seed, device)
        return {
            clean_name: robust_accuracy(net, monitor_batches, None, progress=False),
            robust_name: robust_accuracy(
                net, monitor_batches, monitor.attack, generator=generator, progress=False
            ),
        }

    snapshots = set(spec.snapshot_epochs)
    keep_best = validation is not None and validation.keep_best
    best: dict[str, Any] | None = None

    def on_epoch_end(state: dict[str, Any], record: dict[str, Any]) -> None:
        nonlocal best
        if keep_best and (best is None or record[robust_name] > best["accuracy"]):
            weights = {k: v.detach().clone() for k, v in state["model"].items()}
            best = {"epoch": record["epoch"], "accuracy": record[robust_name], "model": weights}
        # The checkpoint last: it vouches for the snapshot and metrics written before it, and a
        # run killed before it redoes this epoch (rewriting both). It carries the best weights.
        if record["epoch"] in snapshots:
            files.save_snapshot(record["epoch"], state["model"])
        files.write_metrics(state["history"])
        files.save_checkpoint({**state, "best": best} if keep_best else state)

    resume = distributed.broadcast(files.load_checkpoint())  # rank 0 reads, all resume
    if resume is not None:
        log.info("model %s: resuming after epoch %d", spec.name, resume["epoch"])
        best = resume.pop("best", None)
    history = train_classifier(
        model,
        loader,
        replace(
            train_settings(spec),
            mixed_precision=trainer.speed.bf16,
            channels_last=trainer.speed.channels_last,
            compile=trainer.speed.compile,
            sync_batchnorm=trainer.sync_batchnorm,
        ),
        device=device,
        evaluate=evaluate,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
        what=f"model {spec.name}",
    )
    if keep_best and best is not None:
        # The best epoch's weights are kept as its snapshot (cka_epochs compares it with the
        # last); meta.json names the epoch, so `model.checkpoint=best` finds them.
        files.save_snapshot(best["epoch"], best["model"])
        log.info(
            "model %s: best robust validation accuracy %.4f at epoch %d",
            spec.name,
            best["accuracy"],
            best["epoch"],
        )
    return model.state_dict(), _summary(history, monitor, trainer, best)


def announce(
    spec: ModelRecipe,
    dataset: DatasetSpec,
    device: torch.device,
    monitor: Monitor,
    trainer: Trainer,
    images: int | None = None,
) -> None:
    """Log what will train (recipe and threat, dataset, images, epochs, the adversary's passes)
    and its estimated cost on ``device`` (:func:`reprlab.run.plan.estimate`), before training.
    ``images``: an epoch's training images as the loader holds them."""
    cost = estimate(
        spec,
        dataset,
        device,
        monitor_examples=monitor.examples,
        monitor_batch_size=monitor.batch_size,
        monitor_steps=monitor.attack.steps,
        devices=trainer.devices,
        images=images,
        measure=False,
    )
    log.info("training %s", cost.what())
    info = dataset_info(dataset.name)
    measured = measure_pass(spec, info, device, spec.train.batch_size)
    log.info("model %s: %s", spec.name, replace(cost, pass_cost=measured).cost())


def _summary(
    history: list[dict[str, Any]],
    monitor: Monitor,
    trainer: Trainer,
    best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The store entry's training summary; ``best`` (epoch, accuracy) of a recipe keeping its
    best-robust-validation weights."""
    summary: dict[str, Any] = {
        "final": history[-1] if history else {},
        "epochs_trained": len(history),
        "monitor": monitor.settings(),
        "trainer": trainer.record(),
    }
    if best is not None:
        summary["best"] = {"epoch": best["epoch"], monitor.names[1]: best["accuracy"]}
    return summary


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Ask Linux to SIGTERM this process when its parent dies (torchrun then stops its
    workers), so a killed run leaves no training processes writing into the entry."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def train_in_processes(
    spec: ModelRecipe,
    dataset: DatasetSpec,
    files: TrainingFiles,
    *,
    device: torch.device,
    monitor: Monitor,
    num_workers: int,
    progress: bool,
    trainer: Trainer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``spec`` with ``trainer.devices`` DDP processes under ``torchrun`` (NCCL on CUDA,
    gloo on the CPU); return (weights, summary) from the checkpoint rank 0 wrote last.

    The job is handed over as JSON in the entry's ``work/`` directory; the workers run
    :mod:`reprlab.run.ddp`. A killed parent takes torchrun (and so the workers) with it; a run
    started again resumes from the last checkpoint, in one process or several.
    """
    job = {
        "recipe": asdict(spec),
        "dataset": asdict(dataset),
        "monitor": {
            "examples": monitor.examples,
            "batch_size": monitor.batch_size,
            "attack_steps": monitor.attack.steps,
            "seed": monitor.seed,
        },
        "entry": str(files.entry),
        "key": files.key,
        "root": str(files.root),
        "device_type": device.type,
        "num_workers": num_workers,
        "progress": progress,
        "trainer": {**trainer.record(), "devices": trainer.devices},
        # the run's log files (Hydra's reprlab.log): the workers append their lines to them too
        # (rank 0 from INFO up, the other ranks their warnings)
        "log_files": [
            h.baseFilename
            for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler)
        ],
    }
    path = files.entry / "work" / "ddp_job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job, indent=1))
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if device.type == "cpu":  # share the cores between the gloo processes
        threads = max(1, (os.cpu_count() or 1) // trainer.devices)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={trainer.devices}", "-m", "reprlab.run.ddp", str(path),
    ]  # fmt: skip
    log.info(
        "model %s: training with %d %s processes (torchrun, DDP)",
        spec.name,
        trainer.devices,
        "GPU" if device.type == "cuda" else "CPU (gloo)",
    )
    process = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
    try:
        code = process.wait()
    finally:
        if process.poll() is None:  # interrupted: stop the workers before the lock goes
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if code != 0:
        raise RuntimeError(
            f"distributed training of {spec.name} failed (torchrun exit {code}); the workers' "
            "errors are above; run again to resume from the last finished epoch"
        )
    state = files.load_checkpoint()
    if state is None or int(state["epoch"]) != spec.train.epochs:
        raise RuntimeError(
            f"distributed training of {spec.name} ended without the checkpoint of epoch "
            f"{spec.train.epochs}"
        )
    if spec.validation is not None:  # the workers monitored the validation split
        monitor = validation_monitor(spec, dataset)
    return state["model"], _summary(list(state["history"]), monitor, trainer, state.get("best"))
