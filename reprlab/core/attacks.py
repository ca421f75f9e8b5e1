"""Projected gradient descent (PGD) attacks under L∞ and L2, over any differentiable objective.

Implements the attack of Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018: from a (random) start inside the ε-ball around a clean input, take ``steps``
gradient steps on a per-example objective, projecting back onto the ball and the image box [0, 1]
after each one. Inputs are images in pixel space (float, [0, 1]); the model normalises them itself,
so ε is in pixel units. :class:`PGD` is a preset of the one input-space optimiser,
:class:`reprlab.core.optimize.InputOptimizer` (``PGD.optimizer``), plus its objective
(cross-entropy,
or the Carlini–Wagner margin loss: PGD-CW) and the model's mode.

Every attack reprlab evaluates with follows one protocol (:class:`Attack`): an object called as
``attack(model, x, y, generator=...) -> x_adv`` with ``norm``, ``eps``, ``targeted``,
``describe()`` and ``settings()``. :class:`PGD` is one; :class:`reprlab.core.autoattack.AutoAttack`
(AutoAttack and APGD from the authors' code) is another. :func:`robust_accuracy` and
:func:`correct_under` take any of them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reprlab.core.optimize import NORMS, InputOptimizer, sample_start
from reprlab.errors import ReprlabError
from reprlab.runtime import MODES as MODEL_MODES
from reprlab.runtime import module_mode

__all__ = [
    "NORMS",
    "PGD",
    "PGD_LOSSES",
    "Attack",
    "AttackConfigError",
    "Objective",
    "correct_under",
    "margin",
    "preserved_buffers",
    "robust_accuracy",
    "sample_start",
]

PGD_LOSSES = ("ce", "cw")
"""PGD's default objectives: cross-entropy, or the Carlini–Wagner margin loss
``max_{j≠y} z_j − z_y`` on the logits z (Carlini & Wagner 2017; PGD-CW)."""

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps perturbed inputs ``x_adv`` [n, ...] to a per-example objective [n], differentiable in
``x_adv``. An untargeted attack maximises it; a targeted attack minimises it."""


class AttackConfigError(ReprlabError, ValueError):
    """An attack setting out of its range (negative ε, unknown norm, ...).

    A :class:`~reprlab.errors.ReprlabError`, so the CLI prints it as one line, and a
    ``ValueError``, since it is an invalid argument value.
    """


@runtime_checkable
class Attack(Protocol):
    """What every attack offers (PGD, PGD-CW, APGD, AutoAttack).

    ``attack(model, x, y, generator=None) -> x_adv``: ``x`` [n, ...] float in [0, 1], ``y`` [n]
    int64 labels; returns ``x_adv`` of ``x``'s shape, dtype and device, detached, inside the
    ``norm`` ball of radius ``eps`` around ``x`` and in [0, 1]. The model is run in the attack's
    mode and its train/eval flags and BatchNorm buffers are as before afterwards; no parameter
    accumulates ``.grad``. ``generator`` drives the attack's random draws where it takes them
    from one (PGD); attacks with their own seed (AutoAttack) ignore it. ``describe()`` is a short
    name (``PGD-20 linf``), ``settings()`` every setting as plain values (for run.json).
    An attack with ``whole_set = True`` wants all examples in one call (it batches internally),
    so that its result does not depend on how the caller split them.
    """

    norm: str
    eps: float
    targeted: bool

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...

    def describe(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (BatchNorm running statistics and batch counts) on exit.

    An attack that runs the model in train mode makes BatchNorm update its running statistics
    with every forward pass; this snapshot keeps the model as it was, so a later evaluation (the
    next radius of a sweep) sees the same model.
    """
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


@dataclass(frozen=True)
class PGD:
    r"""Projected gradient descent under the L∞ or L2 norm (Madry et al., ICLR 2018).

    Each step moves the input along the objective's gradient ``g`` with respect to the input, then
    projects the perturbation ``δ = x_adv - x`` onto the ε-ball and clamps ``x + δ`` to [0, 1]:

    - ``linf``: ``x_adv ← x_adv + step_size · sign(g)``, then ``δ ← clip(δ, -ε, ε)``.
    - ``l2``: ``x_adv ← x_adv + step_size · g / ‖g‖₂`` (per example; a zero gradient gives no
      step), then ``δ ← δ · min(1, ε / ‖δ‖₂)``.

    Clamping to [0, 1] after the projection only shrinks every coordinate of ``δ``, so the result
    lies in the ball and in the image box.

    Arguments
    ---------
    norm:
        ``"linf"`` or ``"l2"``.
    eps:
        Radius of the ball, in pixel units of [0, 1] images (e.g. 8/255 for CIFAR-10 L∞,
        0.5 for CIFAR-10 L2). ``eps == 0`` returns the input unchanged.
    step_size:
        Length of one step in the same units (L∞: per coordinate; L2: Euclidean).
    steps:
        Number of gradient steps. ``steps == 0`` returns the input unchanged.
    random_start:
        Start from ``x + δ₀`` instead of ``x``, with ``δ₀`` drawn by :func:`sample_start`:
        uniform in the cube for ``linf``, uniform in the *ball* (not on its sphere, unlike the
        ``robustness`` library) for ``l2``; then clamped to [0, 1].
    restarts:
        Independent runs from fresh random starts; per example the best result is returned (see
        "Which iterate is returned"). Restarts beyond the first need ``random_start``.
    clean_first:
        With ``random_start``: the first run starts from the clean input, the later restarts
        from random starts; the result is never weaker than the no-start attack. (In 784
        dimensions an L2 start uniform in the ball lies almost on its sphere, which weakens a
        single-restart attack by several points: 64.0% vs 62.3% vs 60.6% on the standard MNIST
        CNN at L2 1.5 for in-ball, torchattacks' and no start.)
    loss:
        The default objective: ``"ce"`` (cross-entropy) or ``"cw"`` (the Carlini–Wagner margin
        ``max_{j≠y} z_j − z_y`` on the logits: PGD-CW). Ignored with a custom ``objective``.
    targeted:
        If true, ``y`` holds target labels and the attack *minimises* the objective (by default the
        cross-entropy to ``y``), i.e. pushes the prediction towards ``y``.
    keep_best:
        Return, per example, the best iterate over all steps and restarts (including the start and
        the final iterate) instead of the last one. Costs one extra forward pass per restart.
    model_mode:
        Mode of the model during the attack: ``"eval"`` (default; BatchNorm uses its running
        statistics, and they are not updated), ``"train"`` (BatchNorm normalises with batch
        statistics) or ``"keep"`` (the caller's mode). The caller's mode of every submodule is
        restored afterwards, and outside ``"eval"`` so are the model's buffers (BatchNorm's
        running statistics, see :func:`preserved_buffers`): an attack leaves the model as it
        found it.

    Which iterate is returned
    -------------------------
    Candidates are ranked per example by the attacker's score: the objective (untargeted) or its
    negative (targeted). With the default cross-entropy objective an iterate that *succeeds*
    (untargeted: misclassified; targeted: classified as the target) ranks above every iterate
    that does not, so adding steps (same start) or restarts never raises robust accuracy. Ties keep
    the earlier candidate. The score of iterate ``t`` comes with its gradient, so keep-best costs
    only the forward pass of the final iterate.

    Shapes
    ------
    - model: ``[n, ...] -> logits [n, k]`` on [0, 1] pixel input (only needed by the default
      objective and for its mode; a custom objective calls what it needs).
    - x: ``[n, ...]`` float in [0, 1]; y: ``[n]`` int64 class indices (true labels, or targets
      if ``targeted``); may be None with a custom objective, which ignores it.
    - returns ``x_adv``: same shape, dtype and device as ``x``, detached, with
      ``‖x_adv - x‖ ≤ eps`` and ``0 ≤ x_adv ≤ 1``.

    Gradients are taken with ``torch.autograd.grad`` with respect to the input only: no parameter
    accumulates ``.grad``. The attack runs with gradients enabled even inside ``torch.no_grad()``.
    Under ``torch.autocast`` the model may run in bfloat16; the input, its updates and the scores
    stay in float32 (or ``x``'s dtype if wider).

    Example
    -------
    >>> attack = PGD(norm="linf", eps=8 / 255, step_size=2 / 255, steps=10)
    >>> x_adv = attack(model, images, labels)
    >>> distance = lambda x_adv: (features(x_adv) - features(images)).norm(dim=1)
    >>> x_far = PGD(norm="l2", eps=0.5, step_size=0.1)(model, images, objective=distance)
    """

    norm: str = "linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    keep_best: bool = True
    model_mode: str = "eval"
    clean_first: bool = False
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise AttackConfigError(f"unknown attack norm '{self.norm}'; use one of {NORMS}")
        if not self.eps >= 0:
            raise AttackConfigError(f"attack eps must be >= 0, got {self.eps}")
        if not self.step_size > 0:
            raise AttackConfigError(f"attack step_size must be > 0, got {self.step_size}")
        if self.steps < 0:
            raise AttackConfigError(f"attack steps must be >= 0, got {self.steps}")
        if self.restarts < 1:
            raise AttackConfigError(f"attack restarts must be >= 1, got {self.restarts}")
        if self.restarts > 1 and not self.random_start:
            raise AttackConfigError(
                f"attack restarts={self.restarts} without random_start would repeat the same run; "
                "set random_start=true or restarts=1"
            )
        if self.model_mode not in MODEL_MODES:
            raise AttackConfigError(
                f"unknown attack model_mode '{self.model_mode}'; use one of {MODEL_MODES}"
            )
        if self.loss not in PGD_LOSSES:
            raise AttackConfigError(f"unknown PGD loss '{self.loss}'; use one of {PGD_LOSSES}")

    def describe(self) -> str:
        """``PGD-20 linf`` or ``PGD-CW-20 l2``."""
        name = "PGD-CW" if self.loss == "cw" else "PGD"
        return f"{name}-{self.steps} {self.norm}"

    def settings(self) -> dict[str, Any]:
        """Every setting, as plain values (recorded in run.json)."""
        return {
            "attack": "pgd",
            "loss": self.loss,
            "norm": self.norm,
            "eps": self.eps,
            "step_size": self.step_size,
            "steps": self.steps,
            "random_start": self.random_start,
            "clean_first": self.clean_first,
            "restarts": self.restarts,
            "targeted": self.targeted,
            "keep_best": self.keep_best,
            "model_mode": self.model_mode,
        }

    @property
    def optimizer(self) -> InputOptimizer:
        """This attack as a preset of :class:`~reprlab.core.optimize.InputOptimizer` (objective
        apart).

        ``sign`` steps in the L∞ ball or ``l2`` steps in the L2 ball, maximising (untargeted) or
        minimising (targeted) the objective; the last iterate is evaluated only when iterates are
        compared (``keep_best`` or ``restarts > 1``).
        """
        return InputOptimizer(
            steps=self.steps,
            step_size=self.step_size,
            step="sign" if self.norm == "linf" else "l2",
            norm=self.norm,
            eps=self.eps,
            maximize=not self.targeted,
            random_start=self.random_start,
            restarts=self.restarts,
            clean_first=self.clean_first,
            keep_best=self.keep_best,
            final_value=self.keep_best or self.restarts > 1,
        )

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attack ``x``; return ``x_adv`` (same shape, dtype, device; detached).

        ``generator`` drives the random start (so a start can be replayed); without it the global
        torch RNG is used. It may live on the CPU while ``x`` is on another device. ``start``:
        a given start (projected onto ball ∩ box) instead of ``x``, e.g. TRADES' ``x + 0.001·N(0,
        I)``; only without ``random_start`` (or as the first run with ``clean_first``).
        """
        if not x.is_floating_point():
            raise ValueError(f"PGD needs floating-point images in [0, 1], got dtype {x.dtype}")
        if objective is None and y is None:
            raise ValueError("PGD with the default cross-entropy objective needs labels y")
        if self.eps == 0 or self.steps == 0:
            return x.detach().clone()
        if objective is None:
            loss = _cross_entropy if self.loss == "ce" else _margin_objective
            objective = loss(model, y.to(x.device), self.targeted)
        keep = contextlib.nullcontext() if self.model_mode == "eval" else preserved_buffers(model)
        with keep, module_mode(model, mode=self.model_mode):
            return self.optimizer(objective, x, start=start, generator=generator).x


def correct_under(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: Attack | None = None,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Per example, whether the model classifies it correctly after ``attack``: bool [N], CPU.

    ``batches`` yields ``(x [n, ...] in [0, 1], y [n] int64 true labels)``; they are moved to the
    model's device. ``attack=None`` gives clean correctness. Any :class:`Attack` works; an attack
    with ``whole_set`` gets all examples in one call. The attack runs in its own mode;
    predictions are made in eval mode; the caller's modes are restored. The attack must be
    untargeted: this measures robustness to any misclassification. Combining the vectors of
    several attacks with ``&`` gives the per-example worst case over them. ``progress`` shows a
    transient progress bar when stderr is a terminal.
    """
    if attack is not None and attack.targeted:
        raise AttackConfigError(
            "robust accuracy needs an untargeted attack; set the attack's targeted=false"
        )
    device = _model_device(model)
    if attack is not None and getattr(attack, "whole_set", False):
        pairs = list(batches)
        if pairs:
            batches = [(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))]
    description = "clean accuracy" if attack is None else attack.describe()
    correct = []
    for x, y in tqdm(batches, desc=description, disable=None if progress else True, leave=False):
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        inputs = x if attack is None else attack(model, x, y, generator=generator)
        with module_mode(model, mode="eval"), torch.no_grad():
            predictions = model(inputs).argmax(dim=1)
        correct.append((predictions == y).cpu())
    if not correct:
        raise ReprlabError("no examples to evaluate; check the evaluation split and sample size")
    return torch.cat(correct)


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: Attack | None = None,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> float:
    """Fraction in [0, 1] of examples the model classifies correctly after ``attack``.

    The mean of :func:`correct_under` (same arguments and conventions); ``attack=None`` gives
    clean accuracy.
    """
    return float(
        correct_under(model, batches, attack, generator=generator, progress=progress).float().mean()
    )


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` per example: [n] from logits [n, k].

    Positive exactly when some other class outscores ``y`` (misclassified, ties aside).
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    return others.amax(dim=1) - true


def _cross_entropy(
    model: nn.Module, y: torch.Tensor, targeted: bool
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Cross-entropy of ``model(x_adv)`` to ``y`` [n] float32, plus success [n] bool.

    Success is misclassification (untargeted) or classification as the target (targeted).
    """

    def objective(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        predictions = logits.detach().argmax(dim=1)
        return loss, (predictions == y) if targeted else (predictions != y)

    return objective


def _margin_objective(
    model: nn.Module, y: torch.Tensor, targeted: bool
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The CW margin of ``model(x_adv)`` to ``y`` [n] float32, plus success [n] bool.

    Untargeted, PGD maximises it; targeted (``y`` the targets), PGD minimises it, which raises the
    target's logit above every other.
    """

    def objective(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x_adv)
        value = margin(logits.float(), y)
        predictions = logits.detach().argmax(dim=1)
        return value, (predictions == y) if targeted else (predictions != y)

    return objective


def _model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter or buffer; None for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device
