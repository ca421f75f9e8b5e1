"""Standard and adversarial training of a classifier, on the fit loop.

Methods (:data:`TRAINING_METHODS`), each a step function for :func:`reprlab.core.fit.fit`:

- ``standard``: cross-entropy on clean batches;
- ``pgd_at``: cross-entropy on PGD adversarial examples (Madry et al., ICLR 2018);
- ``trades``: CE(f(x), y) + β·KL(f(x) ‖ f(x′)), x′ maximising that KL in the ball from
  x + 0.001·N(0, I) (Zhang et al., ICML 2019; their released ``trades_loss``);
- ``mart``: boosted CE on x′ (CE − log(1 − max_{j≠y} p_j(x′))) + λ·mean[KL(p(x) ‖ p(x′))·
  (1 − p_y(x))], x′ a CE-PGD example from x + 0.001·N(0, I) (Wang et al., ICLR 2020; their
  released ``mart_loss``).

Every inner maximisation runs on the one input optimiser (the adversary is a
:class:`reprlab.core.attacks.PGD`, whose ``model_mode`` is BatchNorm's mode while it attacks; it
leaves BatchNorm's running statistics as it found them). Pure computation:
:func:`train_classifier` takes a model, a loader and settings, runs :func:`reprlab.core.fit.fit`,
and
reports each finished epoch to a callback that decides what to keep. It never touches files.
Every source of randomness after initialisation (batch order, augmentation, the adversary's
random start) is drawn from generators seeded by (seed, epoch), so a run resumed
from an epoch checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core import distributed
from reprlab.core.attacks import PGD, preserved_buffers
from reprlab.core.fit import EpochBatches, FitSettings, fit
from reprlab.runtime import module_mode

TRAINING_METHODS = ("standard", "pgd_at", "trades", "mart")
TRADES_START_STD = 0.001
"""TRADES and MART start their inner maximisation from x + 0.001·N(0, I) (their released code)."""

__all__ = ["TRAINING_METHODS", "TrainSettings", "prepare_model", "train_classifier"]


@dataclass(frozen=True)
class TrainSettings(FitSettings):
    """Settings of one classifier training run: :class:`~reprlab.core.fit.FitSettings` plus the
    below.

    ``method`` (see the module docstring; None: ``pgd_at`` with an adversary, else
    ``standard``), ``adversary`` the inner maximiser (its ``model_mode`` is BatchNorm's mode while
    it attacks; its ``keep_best`` picks the last or the strongest iterate; for ``trades`` and
    ``mart`` with ``random_start`` it starts from x + 0.001·N(0, I) instead of a uniform point),
    ``beta`` TRADES' β or MART's λ. ``channels_last``: channels_last memory format on CUDA.
    ``compile``: the model's forward through ``torch.compile`` (for the adversary's passes and
    the training step). ``sync_batchnorm``: under data parallelism, BatchNorm statistics over
    the global batch (SyncBatchNorm) instead of each rank's shard. None of these three change
    what is learned beyond float rounding.
    """

    adversary: PGD | None = None
    channels_last: bool = True
    method: str | None = None
    beta: float = 0.0
    compile: bool = False
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        method = self.resolved_method
        if method not in TRAINING_METHODS:
            raise ValueError(f"unknown training method {method!r}; use one of {TRAINING_METHODS}")
        if (method == "standard") != (self.adversary is None):
            raise ValueError(f"training method {method!r} and adversary {self.adversary} clash")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def resolved_method(self) -> str:
        if self.method is not None:
            return self.method
        return "standard" if self.adversary is None else "pgd_at"


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
    what: str = "training",
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``settings.epochs`` epochs; return the per-epoch history.

    Parameters
    ----------
    loader:
        Yields (x [b,c,h,w] float in [0,1] on ``device``, y [b] int64) for each epoch number.
        Under an initialised process group of several ranks (:mod:`reprlab.core.distributed`) these
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
    One record per epoch: epoch, lr, train_loss, train_acc (clean accuracy on the training
    batches; for ``pgd_at`` measured in eval mode before the update), train_robust_acc (on the
    adversarial training examples, adversarial methods only), seconds, images_per_second, plus
    what ``evaluate`` returned. The model is left in eval mode.
    """
    model = prepare_model(model, device, settings.channels_last)
    channels_last = settings.channels_last and device.type == "cuda"
    memory_format = torch.channels_last if channels_last else None
    loss_of = _LOSSES[settings.resolved_method]
    adversary, beta = settings.adversary, settings.beta
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
        return loss_of(attacked, trained, x, y, adversary, beta, generator)

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
        what=what,
    )
    model.eval()
    return history


# --- the step functions: (attacked, trained, x, y, adversary, beta, generator) -> (loss, stats) --
#
# ``attacked`` is the replica the inner maximisation (and every no-grad pass) runs on: its
# backward never synchronises gradients. ``trained`` is the same weights behind DDP when several
# ranks train (else ``attacked`` itself): the loss's forward passes go through it, so the one
# backward of the step all-reduces the parameter gradients.


StepResult = tuple[torch.Tensor, dict[str, torch.Tensor]]


def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).sum()


def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct clean predictions in eval mode, without gradients or BatchNorm updates."""
    with torch.no_grad(), module_mode(model, mode="eval"):
        return _correct(model(x), y)


def _standard(
    attacked: nn.Module,
    trained: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adversary: PGD | None,
    beta: float,
    generator: torch.Generator,
) -> StepResult:
    logits = trained(x)
    return F.cross_entropy(logits, y), {"acc": _correct(logits, y)}


def _pgd_at(
    attacked: nn.Module,
    trained: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adversary: PGD | None,
    beta: float,
    generator: torch.Generator,
) -> StepResult:
    x_adv = adversary(attacked, x, y, generator=generator)
    logits = trained(x_adv)
    stats = {"acc": _clean_correct(attacked, x, y), "robust_acc": _correct(logits, y)}
    return F.cross_entropy(logits, y), stats


def _small_normal_start(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x + TRADES_START_STD * noise.to(x.device)


def _inner_start(
    adversary: PGD, x: torch.Tensor, generator: torch.Generator
) -> tuple[PGD, torch.Tensor | None]:
    """TRADES/MART: their 0.001·N(0, I) start when the recipe asks for a random start."""
    if not adversary.random_start:
        return adversary, None
    return replace(adversary, random_start=False), _small_normal_start(x, generator)


def _trades(
    attacked: nn.Module,
    trained: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adversary: PGD | None,
    beta: float,
    generator: torch.Generator,
) -> StepResult:
    inner, start = _inner_start(adversary, x, generator)
    with (
        torch.no_grad(),
        preserved_buffers(attacked),
        module_mode(attacked, mode=inner.model_mode),
    ):
        target = F.softmax(attacked(x).float(), dim=1)

    def kl_to_clean(x_adv: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(attacked(x_adv).float(), dim=1)
        return F.kl_div(log_q, target, reduction="none").sum(dim=1)

    x_adv = inner(attacked, x, objective=kl_to_clean, generator=generator, start=start)
    logits, logits_adv = trained(x), trained(x_adv)
    robust = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1),
        F.softmax(logits.float(), dim=1),
        reduction="batchmean",
    )
    loss = F.cross_entropy(logits, y) + beta * robust
    return loss, {"acc": _correct(logits, y), "robust_acc": _correct(logits_adv, y)}


def _mart(
    attacked: nn.Module,
    trained: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adversary: PGD | None,
    beta: float,
    generator: torch.Generator,
) -> StepResult:
    inner, start = _inner_start(adversary, x, generator)
    x_adv = inner(attacked, x, y, generator=generator, start=start)
    logits, logits_adv = trained(x), trained(x_adv)
    adv_probs = F.softmax(logits_adv.float(), dim=1)
    top2 = adv_probs.argsort(dim=1)[:, -2:]
    other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boosted = F.cross_entropy(logits_adv.float(), y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), other
    )
    nat_probs = F.softmax(logits.float(), dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    loss = boosted + beta * (kl * (1.0000001 - true_probs)).mean()
    return loss, {"acc": _correct(logits, y), "robust_acc": _correct(logits_adv, y)}


_LOSSES = {"standard": _standard, "pgd_at": _pgd_at, "trades": _trades, "mart": _mart}


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
