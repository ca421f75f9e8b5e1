"""Standard and PGD adversarial training of a classifier (Madry et al. 2018).

Pure computation: the loop takes a model, a loader and settings, and reports each finished epoch
to a callback that decides what to keep. It never touches files. Every source of randomness after
initialisation (batch order, augmentation, the adversary's random start) is drawn from generators
seeded by (seed, epoch), so a run resumed from an epoch checkpoint ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reprlab.attacks import PGD

log = logging.getLogger("reprlab")


class EpochBatches(Protocol):
    """What the loop needs of a loader: batches per epoch, deterministic in the epoch number."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run.

    ``milestones`` are fractions of training at which a ``step`` schedule multiplies the learning
    rate by ``gamma``; ``cosine`` anneals to zero; both are applied per iteration. ``momentum`` is
    SGD's momentum or Adam's beta1. ``adversary`` None means standard training; otherwise every
    batch is replaced by its PGD adversarial examples (computed in eval mode, the PGD default).
    """

    epochs: int
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    adversary: PGD | None = None
    seed: int = 0
    mixed_precision: bool = True
    channels_last: bool = True


def lr_factor(settings: TrainSettings, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` ∈ [0, 1) of training."""
    if settings.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if settings.schedule == "step":
        return settings.gamma ** sum(progress >= m for m in settings.milestones)
    if settings.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {settings.schedule!r}")


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam (beta1 = momentum) with L2 weight decay."""
    params = model.parameters()
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(
            params,
            lr=settings.lr,
            betas=(settings.momentum, 0.999),
            weight_decay=settings.weight_decay,
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator of the adversary's random starts in ``epoch`` (distinct per seed, epoch)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (fp32 on CPU stays exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    training adversarially), seconds, images_per_second, plus what ``evaluate`` returned.
    """
    model = prepare_model(model, device, settings.channels_last)
    optimizer = make_optimizer(model, settings)
    steps_per_epoch = len(loader)
    total_steps = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(settings, step / total_steps)
    )
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = list(resume["history"])
        start_epoch = int(resume["epoch"]) + 1

    to_memory_format = (
        torch.channels_last if settings.channels_last and device.type == "cuda" else None
    )
    for epoch in range(start_epoch, settings.epochs + 1):
        model.train()
        generator = epoch_generator(settings.seed, epoch, device)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        lr = optimizer.param_groups[0]["lr"]
        bar = tqdm(
            loader.epoch(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{settings.epochs}",
            disable=not progress,
            leave=False,
        )
        for x, y in bar:
            if to_memory_format is not None:
                x = x.contiguous(memory_format=to_memory_format)
            with autocast(device, settings.mixed_precision):
                if settings.adversary is not None:
                    x = settings.adversary(model, x, y, generator=generator)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else float("nan"),
        }
        if evaluate is not None:
            model.eval()
            with autocast(device, settings.mixed_precision):
                record.update(evaluate(model, epoch))
            model.train()
        history.append(record)
        log.info(
            "epoch %d/%d: %s",
            epoch,
            settings.epochs,
            ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"),
        )
        if on_epoch_end is not None:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
            }
            on_epoch_end(state, record)
    model.eval()
    return history
