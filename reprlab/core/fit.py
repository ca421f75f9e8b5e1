"""The one fit loop: train given modules' parameters, batch by batch, against frozen modules.

Every study that trains something runs this loop with its own step function: classifiers
(standard or PGD adversarial training, :func:`reprlab.core.training_methods.train_classifier`),
stitching layers
between two frozen networks, MI critics and downstream linear/MLP heads on frozen encoders.

Pure computation: modules, a loader and plain settings in; the per-epoch history out. It never
touches files: each finished epoch is handed to a callback with a resumable state. Every source
of randomness after initialisation is drawn from the loader (seeded per epoch) or from the
per-epoch generator given to the step function, so a run resumed from an epoch's state ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from reprlab.core import distributed
from reprlab.errors import ReprlabError
from reprlab.runtime import module_mode

log = logging.getLogger("reprlab")

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")
FROZEN_BN_MODES = ("eval", "train")

StepOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]
StepFn = Callable[[Any, torch.Generator], StepOutput]
"""``step(batch, generator) -> loss`` or ``(loss, stats)``: the mean loss of one batch (a scalar
tensor to minimise) and optional per-batch *sums* over its examples (e.g. the number classified
correctly). ``generator`` is the epoch's (see :func:`epoch_generator`)."""


class FitConfigError(ReprlabError, ValueError):
    """A fit setting out of its range (unknown optimiser or schedule, negative epochs, ...)."""


class EpochBatches(Protocol):
    """What the loop needs of a loader: batches per epoch, deterministic in the epoch number."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[Any]: ...


@dataclass(frozen=True)
class FitSettings:
    """Optimisation settings of one fit.

    ``optimizer``: ``"sgd"`` (``momentum``, optional ``nesterov``) or ``"adam"`` (β₁ =
    ``momentum``, β₂ = 0.999); both with L2 ``weight_decay``. ``schedule``, applied per iteration:
    ``"step"`` multiplies the learning rate by ``gamma`` at each of the ``milestones`` (fractions
    of training), ``"cosine"`` anneals it to zero, ``"constant"`` keeps it. ``seed`` seeds the
    per-epoch generators. ``mixed_precision``: bf16 autocast of the step on CUDA (a no-op
    elsewhere, so CPU runs stay exact fp32).
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
    seed: int = 0
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise FitConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise FitConfigError(f"unknown optimizer '{self.optimizer}'; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise FitConfigError(f"unknown schedule '{self.schedule}'; use one of {SCHEDULES}")
        if not self.lr > 0:
            raise FitConfigError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def adam(
        cls, epochs: int, lr: float, *, seed: int = 0, schedule: str = "constant"
    ) -> FitSettings:
        """Adam (β₁ 0.9, β₂ 0.999) without weight decay: how the MI critics, encoders and
        downstream heads of the vulnerability studies train (Zhu et al.: Adam, no decay)."""
        return cls(
            epochs=epochs, optimizer="adam", lr=lr, momentum=0.9, weight_decay=0.0,
            schedule=schedule, seed=seed,
        )  # fmt: skip


def lr_factor(settings: FitSettings, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` ∈ [0, 1) of training."""
    if settings.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if settings.schedule == "step":
        return settings.gamma ** sum(progress >= m for m in settings.milestones)
    if settings.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {settings.schedule!r}")


def make_optimizer(
    parameters: Iterable[nn.Parameter], settings: FitSettings
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam (beta1 = momentum) with L2 weight decay."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(
            parameters,
            lr=settings.lr,
            betas=(settings.momentum, 0.999),
            weight_decay=settings.weight_decay,
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def epoch_generator(seed: int, epoch: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """The generator of ``epoch``'s random draws in a step (distinct per seed and epoch, and per
    rank of a data-parallel run: rank 0 draws what a one-process run draws)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + epoch + rank * 7_919_000_003)
    return generator


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (fp32 on CPU stays exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    trainable: Mapping[str, nn.Module],
    step: StepFn,
    batches: EpochBatches,
    settings: FitSettings,
    *,
    device: torch.device,
    frozen: Mapping[str, nn.Module] | None = None,
    frozen_bn: str = "eval",
    evaluate: Callable[[int], Mapping[str, float]] | None = None,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    progress: bool = True,
    what: str = "training",
) -> list[dict[str, Any]]:
    """Train the parameters of ``trainable`` for ``settings.epochs`` epochs; return the history.

    Parameters
    ----------
    trainable:
        Named modules (already on ``device``) whose parameters the optimiser updates; they are in
        train mode during each epoch.
    step:
        ``step(batch, generator) -> loss | (loss, stats)`` for each batch of
        ``batches.epoch(epoch)`` (see :data:`StepFn`); runs under bf16 autocast on CUDA when
        ``settings.mixed_precision``. The loop then backpropagates, steps the optimiser and the
        schedule.
    frozen:
        Named modules the step uses but must not train: their parameters get
        ``requires_grad=False`` for the duration of the fit (restored afterwards), so no
        ``.grad`` accumulates on them. They are in eval mode, except their BatchNorm layers when
        ``frozen_bn="train"``, which then normalise with batch statistics and re-estimate their
        running statistics (the only state of a frozen module that changes).
    evaluate:
        ``evaluate(epoch) -> metrics`` after each epoch, merged into its record; run with all
        modules in eval mode and under the same autocast; the modes are restored after.
    resume:
        A state previously passed to ``on_epoch_end``; training continues after its epoch.
    on_epoch_end:
        ``on_epoch_end(state, record)`` after each epoch. ``state`` is resumable and holds only
        tensors and plain values: ``epoch``; ``modules`` (name -> state dict, for the trainable
        modules and, with ``frozen_bn="train"``, the frozen ones); ``optimizer``; ``scheduler``;
        ``history``.
    what:
        What is trained (e.g. ``model cnn_small_at``, ``critic of cnn_small at logits``): it
        leads each epoch's log line (:func:`epoch_line`) and the line that estimates the whole
        fit's time from its first batches (:class:`OverallEta`); the progress bar shows the time
        left over all epochs.

    Returns
    -------
    One record per epoch: ``epoch``, ``lr`` (at its start), ``train_loss`` (mean over its
    examples), ``train_<name>`` for each step stat (its sum over the epoch divided by the number
    of examples), ``seconds``, ``images_per_second``, then what ``evaluate`` returned. The number
    of examples of a batch is the length of its first tensor. The caller's train/eval modes of all
    modules are restored on return.

    Data parallel: run one fit per rank of an initialised process group, with ``step`` calling
    the DDP wrapper and ``batches`` the rank's shard (:mod:`reprlab.core.distributed`). The epoch's
    sums (loss, stats, examples) are then summed over the ranks, so every rank's record
    describes the global epoch; each rank's step generator is its own (rank 0's is a one-process
    run's).
    """
    frozen = dict(frozen or {})
    if frozen_bn not in FROZEN_BN_MODES:
        raise FitConfigError(f"unknown frozen_bn '{frozen_bn}'; use one of {FROZEN_BN_MODES}")
    if not trainable:
        raise FitConfigError("nothing to train: pass at least one trainable module")
    overlap = set(trainable) & set(frozen)
    if overlap:
        raise FitConfigError(f"modules {sorted(overlap)} are both trainable and frozen")
    parameters = _unique_parameters(trainable.values())
    frozen_parameters = _unique_parameters(frozen.values())
    if {id(p) for p in parameters} & {id(p) for p in frozen_parameters}:
        raise FitConfigError("a trainable module shares parameters with a frozen one")
    # What the state must hold: the trainable modules, and frozen ones whose BN statistics move.
    saved_modules = {**trainable, **(frozen if frozen_bn == "train" else {})}

    optimizer = make_optimizer(parameters, settings)
    steps_per_epoch = len(batches)
    total_steps = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda iteration: lr_factor(settings, iteration / max(total_steps, 1))
    )
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume is not None:
        missing = sorted(set(saved_modules) - set(resume["modules"]))
        if missing:
            raise FitConfigError(
                f"the resume state has no weights for {missing}; resume with the modules and "
                "frozen_bn of the run that saved it"
            )
        for name, module in saved_modules.items():
            module.load_state_dict(resume["modules"][name])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        history = list(resume["history"])
        start_epoch = int(resume["epoch"]) + 1

    all_modules = [*trainable.values(), *frozen.values()]
    eta = OverallEta((settings.epochs - start_epoch + 1) * steps_per_epoch)
    with (
        module_mode(*all_modules, mode="keep"),
        requires_grad_off(frozen_parameters),
    ):
        for epoch in range(start_epoch, settings.epochs + 1):
            _set_modes(trainable.values(), frozen.values(), frozen_bn)
            generator = epoch_generator(settings.seed, epoch, device, distributed.rank())
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            stat_sums: dict[str, torch.Tensor | float] = {}
            seen = 0
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(
                batches.epoch(epoch),
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{settings.epochs}",
                disable=not progress,
                leave=False,
            )
            for batch in bar:
                with autocast(device, settings.mixed_precision):
                    output = step(batch, generator)
                loss, stats = output if isinstance(output, tuple) else (output, {})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                n = _batch_size(batch)
                loss_sum += loss.detach() * n
                for name, value in stats.items():
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    stat_sums[name] = stat_sums[name] + value if name in stat_sums else value
                seen += n
                if eta.step():
                    log.info("%s: %s", what, eta.describe())
                bar.set_postfix_str(f"all epochs: {eta.left()} left", refresh=False)
            if distributed.active():  # the epoch's sums over every rank's shards
                loss_sum = distributed.all_reduce_sum(loss_sum)
                seen = int(distributed.all_reduce_sum(torch.tensor(seen, device=device)))
                stat_sums = {
                    name: distributed.all_reduce_sum(torch.as_tensor(value, device=device))
                    for name, value in stat_sums.items()
                }
            seconds = time.perf_counter() - started
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": loss_sum.item() / max(seen, 1),
            }
            for name, total in stat_sums.items():
                total = total.item() if isinstance(total, torch.Tensor) else total
                record[f"train_{name}"] = total / max(seen, 1)
            record["seconds"] = seconds
            record["images_per_second"] = seen / seconds if seconds > 0 else float("nan")
            if evaluate is not None:
                with (
                    module_mode(*all_modules, mode="eval"),
                    autocast(device, settings.mixed_precision),
                ):
                    record.update(evaluate(epoch))
            history.append(record)
            log.info("%s", epoch_line(what, epoch, settings.epochs, record))
            if on_epoch_end is not None:
                state = {
                    "epoch": epoch,
                    "modules": {name: m.state_dict() for name, m in saved_modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                }
                on_epoch_end(state, record)
    return history


def format_duration(seconds: float) -> str:
    """A duration rounded for a person: ``40 s``, ``12 min``, ``3 h 20 min``, ``4.2 days``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        whole = int(hours)
        return f"{whole} h {round((hours - whole) * 60):02d} min"
    days = hours / 24
    return f"{days:.1f} days" if days < 365 else f"{days / 365:.1f} years"


EPOCH_LINE_COLUMNS = 109
"""The widest epoch line :func:`epoch_line` writes: with the console's ``[HH:MM:SS] `` prefix,
the terminal stays within 120 columns."""


def epoch_line(what: str, epoch: int, epochs: int, record: Mapping[str, Any]) -> str:
    """One epoch's record as a log line of at most :data:`EPOCH_LINE_COLUMNS` characters, led by
    what is trained, e.g. ``critic of cnn_small at logits · epoch 3/5: loss -2.13, mi 2.13,
    heldout_mi 2.08 · 5.2 s``.

    Numbers have three significant digits; ``train_`` and ``eval_`` are dropped from the names;
    three or more statistics that share a prefix (one per stitch: ``acc_<point>``) are shown as
    their range, e.g. ``acc_* (11) 0.712-0.951``. The learning rate and throughput are left to
    the run's metrics file, which has every value; a line still too long is cut with ``…``.
    """
    stats = {
        k.removeprefix("train_").removeprefix("eval_"): v
        for k, v in record.items()
        if k not in ("epoch", "lr", "seconds", "images_per_second")
    }
    numeric = {k: float(v) for k, v in stats.items() if isinstance(v, float | int)}
    groups: dict[str, list[float]] = {}
    for key, value in numeric.items():
        if "_" in key:
            groups.setdefault(key.split("_", 1)[0], []).append(value)
    grouped = {prefix for prefix, values in groups.items() if len(values) >= 3}
    parts: list[str] = []
    shown: set[str] = set()
    for key, value in stats.items():
        prefix = key.split("_", 1)[0]
        if key in numeric and "_" in key and prefix in grouped:
            if prefix not in shown:
                shown.add(prefix)
                values = groups[prefix]
                parts.append(f"{prefix}_* ({len(values)}) {min(values):.3g}-{max(values):.3g}")
        elif key in numeric:
            parts.append(f"{key} {numeric[key]:.3g}")
        else:
            parts.append(f"{key} {value}")
    line = f"{what} · epoch {epoch}/{epochs}: {', '.join(parts)}"
    if "seconds" in record:
        seconds = float(record["seconds"])
        line += f" · {seconds:.0f} s" if seconds >= 10 else f" · {seconds:.1f} s"
    if len(line) > EPOCH_LINE_COLUMNS:
        line = line[: EPOCH_LINE_COLUMNS - 1] + "…"
    return line


class OverallEta:
    """The time left of a whole fit (every remaining epoch, held-out evaluations included), from
    the wall-clock time of the batches done so far.

    :meth:`step` after each batch returns True once, when the first estimate is due: after
    :attr:`FIRST_BATCHES` batches, or the first batch that took :attr:`FIRST_SECONDS` or more.
    """

    FIRST_BATCHES = 3
    FIRST_SECONDS = 10.0

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.done = 0
        self.started = time.perf_counter()
        self.announced = False

    def step(self) -> bool:
        self.done += 1
        due = (
            self.done >= min(self.FIRST_BATCHES, self.batches) or self.elapsed >= self.FIRST_SECONDS
        )
        if due and not self.announced:
            self.announced = True
            return True
        return False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def seconds_left(self) -> float:
        """Estimated seconds until the last batch of the last epoch."""
        return self.elapsed / max(self.done, 1) * (self.batches - self.done)

    def left(self) -> str:
        return format_duration(self.seconds_left())

    def describe(self) -> str:
        """E.g. ``about 3 h 20 min for its 7,800 batches here (the first 3: 1.54 s each)``."""
        per_batch = self.elapsed / max(self.done, 1)
        return (
            f"about {format_duration(per_batch * self.batches)} for its {self.batches:,} "
            f"batch{'es' if self.batches != 1 else ''} here "
            f"(the first {self.done}: {per_batch:.3g} s each)"
        )


def _set_modes(trainable: Iterable[nn.Module], frozen: Iterable[nn.Module], frozen_bn: str) -> None:
    """Trainable modules in train mode; frozen ones in eval mode, BatchNorm as ``frozen_bn``."""
    for module in trainable:
        module.train()
    for module in frozen:
        module.eval()
        if frozen_bn == "train":
            for sub in module.modules():
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    sub.train()


@contextlib.contextmanager
def requires_grad_off(parameters: list[nn.Parameter]) -> Iterator[None]:
    """``requires_grad=False`` on ``parameters`` for the block; each flag restored after.

    Frozen modules in a training step, and models whose *inputs* are optimised (a forward pass
    then keeps nothing for weight gradients)."""
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags, strict=True):
            p.requires_grad_(flag)


def _unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules`` in order, each shared one once."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def _batch_size(batch: Any) -> int:
    """Number of examples in ``batch``: a tensor's, or a sequence's or mapping's first tensor's."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0].shape[0]
    raise TypeError(
        "fit needs batches that are a tensor or start with one (to count examples), got "
        f"{type(batch).__name__}"
    )
