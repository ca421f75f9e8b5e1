"""Projected gradient descent (PGD) attacks under L∞ and L2, over any differentiable objective.

Implements the attack of Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018: from a (random) start inside the ε-ball around a clean input, take ``steps``
gradient steps on a per-example objective, projecting back onto the ball and the image box [0, 1]
after each one. Inputs are images in pixel space (float, [0, 1]); the model normalises them itself,
so ε is in pixel units.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reprlab.errors import ReprlabError

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps perturbed inputs ``x_adv`` [n, ...] to a per-example objective [n], differentiable in
``x_adv``. An untargeted attack maximises it; a targeted attack minimises it."""

NORMS = ("linf", "l2")
MODEL_MODES = ("eval", "train", "keep")

# A step or projection divides by a per-example norm; zero norms (zero gradient, zero δ) must not.
_TINY = 1e-12


class AttackConfigError(ReprlabError, ValueError):
    """An attack setting out of its range (negative ε, unknown norm, ...).

    A :class:`~reprlab.errors.ReprlabError`, so the CLI prints it as one line, and a
    ``ValueError``, since it is an invalid argument value.
    """


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
    targeted:
        If true, ``y`` holds target labels and the attack *minimises* the objective (by default the
        cross-entropy to ``y``), i.e. pushes the prediction towards ``y``.
    keep_best:
        Return, per example, the best iterate over all steps and restarts (including the start and
        the final iterate) instead of the last one. Costs one extra forward pass per restart.
    model_mode:
        Mode of the model during the attack: ``"eval"`` (default; BatchNorm uses its running
        statistics, and they are not updated), ``"train"`` (BatchNorm uses and *updates* batch
        statistics) or ``"keep"`` (the caller's mode). The caller's mode of every submodule is
        restored afterwards.

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

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Attack ``x``; return ``x_adv`` (same shape, dtype, device; detached).

        ``generator`` drives the random start (so a start can be replayed); without it the global
        torch RNG is used. It may live on the CPU while ``x`` is on another device.
        """
        if not x.is_floating_point():
            raise ValueError(f"PGD needs floating-point images in [0, 1], got dtype {x.dtype}")
        if objective is None and y is None:
            raise ValueError("PGD with the default cross-entropy objective needs labels y")
        if self.eps == 0 or self.steps == 0:
            return x.detach().clone()

        clean = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        if objective is None:
            score = _cross_entropy_score(model, y.to(clean.device), self.targeted)
        else:
            score = _objective_score(objective, self.targeted)
        compare_iterates = self.keep_best or self.restarts > 1
        best = _BestIterate(clean) if compare_iterates else None

        step = self._stepper(clean)
        with _model_mode(model, self.model_mode), torch.enable_grad():
            for _ in range(self.restarts):
                x_adv = clean
                if self.random_start:
                    delta = sample_start(clean, self.norm, self.eps, generator)
                    x_adv = (clean + delta).clamp(0.0, 1.0)
                for _ in range(self.steps):
                    x_adv = x_adv.detach().requires_grad_(True)
                    values, success = score(x_adv)
                    (gradient,) = torch.autograd.grad(values.sum(), x_adv, allow_unused=True)
                    if gradient is None:  # the objective ignores the input: nothing to follow
                        gradient = torch.zeros_like(x_adv)
                    if self.keep_best:
                        best.offer(x_adv.detach(), values.detach(), success)
                    x_adv = step(x_adv.detach(), gradient)
                if compare_iterates:
                    with torch.no_grad():
                        values, success = score(x_adv)
                    best.offer(x_adv, values, success)

        result = best.x if compare_iterates else x_adv
        return result.detach().to(x.dtype)

    def _stepper(self, clean: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``step(x_adv, gradient)``: one ascent step, projected onto the ball and [0, 1]."""
        if self.norm == "linf":
            # Clamping to [max(x - ε, 0), min(x + ε, 1)] projects onto cube ∩ box in one pass.
            lower, upper = (clean - self.eps).clamp(min=0.0), (clean + self.eps).clamp(max=1.0)

            def linf_step(x_adv: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
                moved = torch.add(x_adv, gradient.sign(), alpha=self.step_size)
                return moved.clamp_(lower, upper)

            return linf_step

        def l2_step(x_adv: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
            gradient_norm = _per_example_norm(gradient)
            scale = self.step_size / torch.where(gradient_norm > 0, gradient_norm, 1.0)
            delta = _project_l2(torch.addcmul(x_adv - clean, gradient, scale), self.eps)
            return (clean + delta).clamp_(0.0, 1.0)

        return l2_step


def sample_start(
    x: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random start ``δ₀`` of ``x``'s shape, uniform in the ε-ball of ``norm``, one per example.

    Sampling recipe (a reference implementation can replay it draw for draw):

    - ``linf``: ``u = torch.rand(x.shape)``; ``δ₀ = ε · (2u - 1)``: uniform in the cube [-ε, ε]^d.
    - ``l2``: ``g = torch.randn(x.shape)``, then ``u = torch.rand(n)``;
      ``δ₀ = ε · u^(1/d) · g / ‖g‖₂`` per example, with d the number of elements per example:
      uniform in the ball (the radius has density ∝ r^(d-1)), not on its sphere.

    Draws come from ``generator`` (on its own device, then moved to ``x``'s device) or from the
    global torch RNG on ``x``'s device. ``δ₀`` is float32 (or ``x``'s dtype if wider) and not yet
    clamped so that ``x + δ₀`` stays in [0, 1].
    """
    if norm not in NORMS:
        raise AttackConfigError(f"unknown attack norm '{norm}'; use one of {NORMS}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    device = generator.device if generator is not None else x.device
    options = {"dtype": dtype, "device": device, "generator": generator}
    if norm == "linf":
        delta = eps * (2 * torch.rand(x.shape, **options) - 1)
    else:
        gaussian = torch.randn(x.shape, **options)
        direction = gaussian / _per_example_norm(gaussian).clamp_min(_TINY)
        per_example = x[0].numel() if x.shape[0] else 1
        radius = eps * torch.rand(x.shape[0], **options).pow(1.0 / per_example)
        delta = direction * radius.view(-1, *[1] * (x.dim() - 1))
    return delta.to(x.device)


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: PGD | None = None,
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> float:
    """Fraction in [0, 1] of examples the model classifies correctly after ``attack``.

    ``batches`` yields ``(x [n, ...] in [0, 1], y [n] int64 true labels)``; they are moved to the
    model's device. ``attack=None`` gives clean accuracy. The attack runs in its own
    ``model_mode``; predictions are made in eval mode; the caller's modes are restored. The attack
    must be untargeted: this measures robustness to any misclassification. ``progress`` shows a
    transient progress bar when stderr is a terminal.
    """
    if attack is not None and attack.targeted:
        raise AttackConfigError(
            "robust accuracy needs an untargeted attack; set the attack's targeted=false"
        )
    device = _model_device(model)
    correct: torch.Tensor | int = 0
    total = 0
    description = "clean accuracy" if attack is None else f"PGD-{attack.steps} {attack.norm}"
    for x, y in tqdm(batches, desc=description, disable=None if progress else True, leave=False):
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        inputs = x if attack is None else attack(model, x, y, generator=generator)
        with _model_mode(model, "eval"), torch.no_grad():
            predictions = model(inputs).argmax(dim=1)
        correct = correct + (predictions == y).sum()
        total += y.numel()
    if total == 0:
        raise ReprlabError("no examples to evaluate; check the evaluation split and sample size")
    return float(correct) / total


def _cross_entropy_score(
    model: nn.Module, y: torch.Tensor, targeted: bool
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Score = ±cross-entropy of ``model(x_adv)`` to ``y`` [n] float32, plus success [n] bool."""

    def score(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        predictions = logits.detach().argmax(dim=1)
        if targeted:
            return -loss, predictions == y
        return loss, predictions != y

    return score


def _objective_score(
    objective: Objective, targeted: bool
) -> Callable[[torch.Tensor], tuple[torch.Tensor, None]]:
    """Score = ±``objective(x_adv)`` [n] float32; a custom objective has no notion of success."""

    def score(x_adv: torch.Tensor) -> tuple[torch.Tensor, None]:
        values = objective(x_adv)
        if values.shape != x_adv.shape[:1]:
            raise ValueError(
                f"a PGD objective must return one value per example, shape {tuple(x_adv.shape[:1])}"
                f", got {tuple(values.shape)}"
            )
        if torch.is_grad_enabled() and x_adv.requires_grad and not values.requires_grad:
            raise ValueError("the PGD objective's output is not differentiable in its input")
        values = values.float()
        return (-values if targeted else values), None

    return score


class _BestIterate:
    """Per example, the highest-ranked candidate offered so far (see PGD, "Which iterate")."""

    def __init__(self, clean: torch.Tensor) -> None:
        n = clean.shape[0]
        self.x = clean.clone()
        self.score = torch.full((n,), -torch.inf, device=clean.device)
        self.success = torch.zeros(n, dtype=torch.bool, device=clean.device)

    def offer(self, x: torch.Tensor, score: torch.Tensor, success: torch.Tensor | None) -> None:
        better = score > self.score
        if success is not None:
            better = (success & ~self.success) | ((success == self.success) & better)
            self.success = torch.where(better, success, self.success)
        self.score = torch.where(better, score, self.score)
        self.x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.x)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each example of ``t`` [n, ...], shaped [n, 1, ...] to broadcast."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *[1] * (t.dim() - 1))


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each example of ``delta`` onto the L2 ball of radius ``eps``."""
    return delta * (eps / _per_example_norm(delta).clamp_min(_TINY)).clamp(max=1.0)


def _model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter or buffer; None for a model with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


@contextmanager
def _model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("eval", "train" or "keep"); restore every submodule's mode."""
    saved = [(module, module.training) for module in model.modules()]
    if mode == "eval":
        model.eval()
    elif mode == "train":
        model.train()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
