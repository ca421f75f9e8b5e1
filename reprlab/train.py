"""Standard and PGD adversarial training of a classifier (Madry et al. 2018), on the fit loop.

Pure computation: :func:`train_classifier` takes a model, a loader and settings, runs
:func:`reprlab.fit.fit` with a cross-entropy step (on PGD adversarial examples when the settings
carry an adversary), and reports each finished epoch to a callback that decides what to keep. It
never touches files. Every source of randomness after initialisation (batch order, augmentation,
the adversary's random start) is drawn from generators seeded by (seed, epoch), so a run resumed
from an epoch checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprlab import distributed
from reprlab.attacks import PGD
from reprlab.fit import (
    EpochBatches,
    FitSettings,
    autocast,
    epoch_generator,
    fit,
    lr_factor,
    make_optimizer,
)

__all__ = [
    "EpochBatches",
    "TrainSettings",
    "autocast",
    "epoch_generator",
    "lr_factor",
    "make_optimizer",
    "prepare_model",
    "train_classifier",
]


@dataclass(frozen=True)
class TrainSettings(FitSettings):
    """Settings of one classifier training run: :class:`~reprlab.fit.FitSettings` plus the below.

    ``adversary`` None means standard training; otherwise every batch is replaced by its PGD
    adversarial examples (computed with the adversary's ``model_mode``, eval for recipes, and its
    last or best iterate as it says; recipes use the last, as Madry et al.). ``channels_last``:
    channels_last memory format on CUDA. ``compile``: the model's forward through
    ``torch.compile`` (for the adversary's passes and the training step). ``sync_batchnorm``:
    under data parallelism, BatchNorm statistics over the global batch (SyncBatchNorm) instead
    of each rank's shard. None of these change what is learned beyond float rounding.
    """

    adversary: PGD | None = None
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = False


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move ``model`` to ``device``; use channels_last memory on CUDA when asked."""
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def train_classifier(
    model: nn.Module,
    loader: EpochBatches,
    settings: TrainSettings,
    *,
    device: torch.device,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``settings.epochs`` epochs; return the per-epoch history.

    Parameters
    ----------
    loader:
        Yields (x [b,c,h,w] float in [0,1] on ``device``, y [b] int64) for each epoch number.
        Under an initialised process group of several ranks (:mod:`reprlab.distributed`) these
        are the global batches: each rank trains on its shard through DDP.
    evaluate:
        ``evaluate(model, epoch)`` -> metrics merged into the epoch's record (e.g. held-out clean
        and PGD accuracy). Called with the model in eval mode; train mode is restored after.
    resume:
        A state previously passed to ``on_epoch_end``; training continues after its epoch.
    on_epoch_end:
        ``on_epoch_end(state, record)`` after each epoch. ``state`` is resumable (model, optimizer,
        scheduler, epoch, history) and holds only tensors and plain Python values.

    Returns
    -------
    One record per epoch: epoch, lr, train_loss, train_acc (on the adversarial batches when
    training adversarially), seconds, images_per_second, plus what ``evaluate`` returned. The
    model is left in eval mode.
    """
    model = prepare_model(model, device, settings.channels_last)
    channels_last = settings.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else None
    adversary = settings.adversary
    # The adversary attacks the replica itself (its backward must not sync gradients); the
    # training step goes through DDP when several ranks train.
    attacked: nn.Module = torch.compile(model) if settings.compile else model
    trained: nn.Module = attacked
    if distributed.active():
        trained = distributed.wrap(model, device, settings.sync_batchnorm)
        if settings.compile:
            trained = torch.compile(trained)
        loader = distributed.ShardedBatches(loader, distributed.rank(), distributed.world_size())

    def step(
        batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        if adversary is not None:
            x = adversary(attacked, x, y, generator=generator)
        logits = trained(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (logits.detach().argmax(1) == y).sum()}

    def report(state: dict[str, Any], record: dict[str, Any]) -> None:
        on_epoch_end(_classifier_state(state), record)

    history = fit(
        {"model": model},
        step,
        loader,
        settings,
        device=device,
        evaluate=None if evaluate is None else lambda epoch: evaluate(model, epoch),
        resume=None if resume is None else _fit_state(resume),
        on_epoch_end=None if on_epoch_end is None else report,
        progress=progress,
    )
    model.eval()
    return history


def _classifier_state(state: dict[str, Any]) -> dict[str, Any]:
    """A fit state as a classifier checkpoint: the model's weights under ``model``."""
    return {
        "epoch": state["epoch"],
        "model": state["modules"]["model"],
        "optimizer": state["optimizer"],
        "scheduler": state["scheduler"],
        "history": state["history"],
    }


def _fit_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A classifier checkpoint (see :func:`_classifier_state`) as a fit state."""
    return {**checkpoint, "modules": {"model": checkpoint["model"]}}
