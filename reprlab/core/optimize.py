"""The one input-space optimiser: projected gradient steps on inputs in the [0, 1] image box.

Every study that optimises *inputs* against frozen networks runs this loop with its own objective:

- PGD attacks (Madry et al., ICLR 2018): ``sign`` steps in an L∞ ball or ``l2`` steps in an L2
  ball, maximising a per-example loss (:class:`reprlab.core.attacks.PGD` is a preset);
- representation inversion and STIR (Engstrom et al. 2019; Nanda et al., ICML 2022): ``l2`` steps
  in the box alone (ε = inf) from seed images, minimising a representation distance, keep-best;
- inversion under a budget (Engstrom et al. 2019, Fig. 4): the same inside an L2 ball around a
  source image;
- feature visualisation: maximise one coordinate, optionally through random :func:`jitter` and
  :func:`rotation` of the input (regularised visualisation);
- MI vulnerability (Zhu et al., ICML 2020): ``sign`` steps in an L∞ ball minimising one
  *batch-level* mutual-information estimate.

Computation only: tensors and callables in, tensors out. The optimiser knows nothing of models or
their train/eval modes (the caller sets them, e.g. with :func:`reprlab.runtime.module_mode`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reprlab.errors import ReprlabError

Objective = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
"""Maps inputs [n, ...] to the objective: per example, values [n] (or ``(values [n], success
[n] bool)``); batch-level, one scalar []. Differentiable in its input."""

Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
"""``transform(x, generator)``: a random, differentiable change of ``x`` [n, c, h, w] applied
before each objective evaluation (draws come from ``generator``, or the global RNG if None)."""

NORMS = ("linf", "l2")
STEP_RULES = ("sign", "l2", "grad", "adam")

# A step or projection divides by a per-example norm; zero norms (zero gradient, zero δ) must not.
_TINY = 1e-12
_ADAM_EPS = 1e-8


class OptimizeConfigError(ReprlabError, ValueError):
    """An optimiser setting out of its range or an impossible combination of settings.

    A :class:`~reprlab.errors.ReprlabError` (the CLI prints it as one line) and a ``ValueError``.
    """


@dataclass(frozen=True)
class OptimResult:
    """What :class:`InputOptimizer` returns.

    - ``x``: [n, ...] the returned inputs (the best iterate with ``keep_best``, else the last),
      detached, with the centre's shape, dtype and device, inside ball ∩ box.
    - ``value``: the objective at ``x`` as evaluated during the run ([n], or [] for a batch-level
      objective), float32 (or wider), detached; None when it was not evaluated (``keep_best``,
      ``restarts > 1``, ``trace`` and ``final_value`` all off).
    - ``success``: [n] bool at ``x`` when the objective reports success, else None.
    - ``trace``: with ``trace=True``, the objective at iterates 0 (the start) … ``steps``:
      [steps + 1, n] per example or [steps + 1] batch-level; else None.
    """

    x: torch.Tensor
    value: torch.Tensor | None
    success: torch.Tensor | None
    trace: torch.Tensor | None


@dataclass(frozen=True)
class InputOptimizer:
    r"""Projected gradient optimisation of inputs over ball ∩ [0, 1] box.

    Each step evaluates the objective at the current iterate ``x`` (after ``transform``, if any),
    takes its gradient ``g`` with respect to ``x`` (``torch.autograd.grad``: no parameter gets a
    ``.grad``), moves ``x`` by the step rule *towards better values* (up when ``maximize``, down
    otherwise) and projects onto the constraint:

    Step rules (α = ``step_size``; ``s = g`` when maximising, ``-g`` when minimising):

    - ``sign``: ``x + α·sign(s)`` (L∞ PGD);
    - ``l2``: ``x + α·s/‖s‖₂`` per example (a zero gradient gives no step);
    - ``grad``: ``x + α·s`` (raw gradient ascent/descent);
    - ``adam``: Adam (Kingma & Ba 2015) on the input, learning rate α, ``betas``, ε = 1e-8,
      bias-corrected; its moments restart with each restart. Its per-coordinate scaling and the
      Euclidean projection do not commute, so with an active L2 ball it settles near, not at,
      the constrained optimum; it is meant for the box (e.g. feature visualisation).

    Constraint: ``eps = inf`` (the default) is the [0, 1] box alone; a finite ``eps`` intersects it
    with the ``norm`` ball (``"linf"`` or ``"l2"``) of radius ``eps`` around the centre:

    - box: clamp to [0, 1];
    - ``linf``: clamp to [max(c - ε, 0), min(c + ε, 1)] (the exact projection onto cube ∩ box);
    - ``l2``: ``δ ← δ · min(1, ε/‖δ‖₂)`` for ``δ = x - c``, then clamp ``c + δ`` to [0, 1]. With
      the centre in the box, the clamp only shrinks each coordinate of δ, so the result is in
      ball ∩ box (it is not the exact Euclidean projection onto the intersection).

    Arguments
    ---------
    steps:
        Number of gradient steps (``0`` returns the start).
    step_size:
        α, in pixel units of [0, 1] images (L∞: per coordinate; ``l2``: Euclidean length).
    step:
        Step rule: ``"sign"``, ``"l2"``, ``"grad"`` or ``"adam"``.
    norm, eps:
        The ball; ``eps = math.inf`` means no ball (box only) and ``norm`` is then unused.
    maximize:
        Maximise the objective (default) or minimise it.
    random_start:
        Start from ``c + δ₀`` (clamped to [0, 1]), ``δ₀`` drawn by :func:`sample_start` from
        ``generator``; needs a finite ``eps``. Otherwise the start is the centre, or the ``start``
        tensor given to the call, projected onto ball ∩ box.
    restarts:
        Independent runs, each from a fresh random start (needs ``random_start``); per example the
        best result is kept (see "Ranking"). Needs a per-example objective and no ``trace``.
    clean_first:
        With ``random_start``: the *first* run starts from the centre (or ``start``) instead of a
        random point, the later restarts from random starts. With keep-best ranking the result
        is then never weaker than the no-start run (its iterates are among the candidates), nor
        than the random-start runs. Without ``random_start`` it changes nothing.
    keep_best:
        Return, per example, the best of all iterates (start and final iterate included) instead
        of the last one. Needs a per-example objective. Costs one extra forward per restart.
    batch_objective:
        The objective returns one scalar for the whole batch (e.g. an MI estimate); its gradient
        still moves each example. Incompatible with ``keep_best`` and ``restarts > 1``.
    transform:
        Applied to ``x`` before each evaluation (see :func:`jitter`, :func:`rotation`,
        :func:`compose`); the gradient flows through it; the returned ``x`` is untransformed.
    trace:
        Record the objective at every iterate (``OptimResult.trace``); costs one extra forward.
    final_value:
        Evaluate the objective at the returned ``x`` even when nothing else needs it (one extra
        forward; a last-iterate training adversary turns it off).
    stop_on_success:
        Per-example stopping: an example whose objective reports success at an iterate is frozen
        there (no later step moves it) for the rest of the run (or restart); the loop ends early
        once every example is frozen. Needs an objective that returns ``(values, success)``
        (e.g. feature manipulation: stop once coordinate j is the largest, Engstrom et al.
        2019). The success flag comes with the gradient's forward, so stopping costs nothing.
    betas:
        Adam's (β₁, β₂).

    Ranking (keep-best and restarts)
    --------------------------------
    Candidates are ranked per example by the objective (higher is better when maximising, lower
    when minimising). If the objective also returns a ``success`` flag [n] bool, an iterate that
    succeeds ranks above every iterate that does not. Ties keep the earlier candidate. The value
    of iterate ``t`` comes with its gradient, so keep-best costs only the final iterate's forward.
    With a ``transform``, values are those of the transformed inputs as evaluated.

    Precision and grad mode
    -----------------------
    The iterate, its updates and the values stay float32 (or the centre's dtype if wider) even
    when the objective runs under bfloat16 autocast. The loop enables gradients itself, so it
    works inside ``torch.no_grad()``.

    Example
    -------
    >>> target = encoder(x_target).detach()
    >>> def distance(x):  # Engstrom et al.'s inversion loss, per example
    ...     return (encoder(x) - target).norm(dim=1) / target.norm(dim=1)
    >>> invert = InputOptimizer(steps=1000, step_size=0.5, step="l2", maximize=False,
    ...                         keep_best=True)
    >>> result = invert(distance, seeds)          # box only, starting from the seeds
    >>> result.x, result.value                    # inverted images [n, ...], distances [n]
    """

    steps: int
    step_size: float
    step: str = "l2"
    norm: str = "l2"
    eps: float = math.inf
    maximize: bool = True
    random_start: bool = False
    restarts: int = 1
    clean_first: bool = False
    keep_best: bool = False
    batch_objective: bool = False
    transform: Transform | None = None
    trace: bool = False
    final_value: bool = True
    stop_on_success: bool = False
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.step not in STEP_RULES:
            raise OptimizeConfigError(f"unknown step rule '{self.step}'; use one of {STEP_RULES}")
        if self.norm not in NORMS:
            raise OptimizeConfigError(f"unknown norm '{self.norm}'; use one of {NORMS}")
        if not self.eps >= 0:
            raise OptimizeConfigError(f"eps must be >= 0 (math.inf: box only), got {self.eps}")
        if not self.step_size > 0:
            raise OptimizeConfigError(f"step_size must be > 0, got {self.step_size}")
        if self.steps < 0:
            raise OptimizeConfigError(f"steps must be >= 0, got {self.steps}")
        if self.restarts < 1:
            raise OptimizeConfigError(f"restarts must be >= 1, got {self.restarts}")
        if self.random_start and math.isinf(self.eps):
            raise OptimizeConfigError(
                "a random start needs a finite eps (the ball to draw it from); "
                "set eps, or random_start=false and pass start= seed images"
            )
        if self.restarts > 1 and not self.random_start:
            raise OptimizeConfigError(
                f"restarts={self.restarts} without random_start would repeat the same run; "
                "set random_start=true or restarts=1"
            )
        if self.batch_objective and (self.keep_best or self.restarts > 1):
            raise OptimizeConfigError(
                "keep_best and restarts compare iterates per example, which a batch-level "
                "objective cannot rank; set keep_best=false and restarts=1, or return one value "
                "per example"
            )
        if self.stop_on_success and self.batch_objective:
            raise OptimizeConfigError(
                "stop_on_success freezes examples one by one, which a batch-level objective "
                "cannot report; set stop_on_success=false or return per-example values"
            )
        if self.trace and self.restarts > 1:
            raise OptimizeConfigError("trace records one run; set restarts=1 to trace")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise OptimizeConfigError(f"Adam betas must lie in [0, 1), got {self.betas}")

    @property
    def bounded(self) -> bool:
        """Whether a ball constrains the iterates besides the box (``eps`` finite)."""
        return not math.isinf(self.eps)

    def __call__(
        self,
        objective: Objective,
        centre: torch.Tensor,
        *,
        start: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> OptimResult:
        """Optimise from ``centre`` [n, ...] (float, in [0, 1] when ``eps`` is finite).

        ``start``: seed images of ``centre``'s shape (projected onto ball ∩ box) instead of the
        centre; not with ``random_start``. ``generator`` drives the random start and the
        transform (it may live on the CPU while ``centre`` is on another device); without it the
        global torch RNG is used.
        """
        if not centre.is_floating_point():
            raise ValueError(f"the optimiser needs floating-point inputs, got dtype {centre.dtype}")
        if start is not None:
            if self.random_start and not self.clean_first:
                raise OptimizeConfigError(
                    "pass start= seed images or set random_start, not both (clean_first=true "
                    "starts the first run from them)"
                )
            if start.shape != centre.shape:
                raise ValueError(
                    f"start has shape {tuple(start.shape)}, the centre {tuple(centre.shape)}"
                )
        dtype = torch.promote_types(centre.dtype, torch.float32)
        clean = centre.detach().to(dtype)
        constraint = _Constraint(clean, self.norm, self.eps)
        rule = _StepRule(self.step, self.step_size, self.betas)
        evaluate = _Evaluation(
            objective, clean.shape[0], self.maximize, self.batch_objective, self.transform
        )
        compare_iterates = self.keep_best or self.restarts > 1
        best = _BestIterate(clean) if compare_iterates else None
        evaluate_last = compare_iterates or self.trace or self.final_value
        trace: list[torch.Tensor] = []
        value = success = None

        with torch.enable_grad():
            for run in range(self.restarts):
                if self.random_start and not (self.clean_first and run == 0):
                    delta = sample_start(clean, self.norm, self.eps, generator)
                    x = (clean + delta).clamp(0.0, 1.0)
                else:
                    seed = clean if start is None else start.detach().to(clean.device, dtype)
                    x = constraint.project(seed)
                rule.reset()
                frozen = None
                for _ in range(self.steps):
                    x = x.detach().requires_grad_(True)
                    score, value, success = evaluate(x, generator)
                    (gradient,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
                    if gradient is None:  # the objective ignores the input: nothing to follow
                        gradient = torch.zeros_like(x)
                    if self.keep_best:
                        best.offer(x.detach(), score.detach(), success)
                    if self.trace:
                        trace.append(value.detach())
                    if self.stop_on_success:
                        frozen = _frozen(frozen, success)
                        if bool(frozen.all()):
                            x = x.detach()
                            if self.trace:  # iterates after the stop equal the frozen one
                                trace.extend([value.detach()] * (self.steps - len(trace) + 1))
                            break
                        moved = constraint.move(x.detach(), *rule(gradient))
                        x = torch.where(_expand(frozen, x), x.detach(), moved)
                        continue
                    x = constraint.move(x.detach(), *rule(gradient))
                value = success = None
                if evaluate_last:
                    with torch.no_grad():
                        score, value, success = evaluate(x, generator)
                    if compare_iterates:
                        best.offer(x, score, success)
                    if self.trace and len(trace) <= self.steps:
                        trace.append(value)

        if compare_iterates:
            x, success = best.x, best.success if best.has_success else None
            value = best.score if self.maximize else -best.score
        return OptimResult(
            x=x.detach().to(centre.dtype),
            value=None if value is None else value.detach(),
            success=success,
            trace=torch.stack(trace) if self.trace else None,
        )


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
        raise OptimizeConfigError(f"unknown norm '{norm}'; use one of {NORMS}")
    if math.isinf(eps):
        raise OptimizeConfigError("a random start needs a finite eps (the ball to draw it from)")
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


# --- ready-made transforms (regularised feature visualisation) ----------------------------------


def jitter(pixels: int) -> Transform:
    """Shift the whole batch circularly by (dy, dx), each uniform in {-pixels, …, pixels}.

    One shift per evaluation for the batch (as Lucid's ``jitter``); exact (a permutation of the
    pixels), so its gradient is the inverse shift. Input [n, c, h, w].
    """
    if pixels < 0:
        raise OptimizeConfigError(f"jitter needs pixels >= 0, got {pixels}")

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else x.device
        dy, dx = torch.randint(-pixels, pixels + 1, (2,), generator=generator, device=device)
        return torch.roll(x, shifts=(int(dy), int(dx)), dims=(-2, -1))

    return transform


def rotation(degrees: float) -> Transform:
    """Rotate each image about its centre by its own angle, uniform in [-degrees, degrees].

    Bilinear resampling (``grid_sample``, border padding) of [n, c, h, w] inputs; differentiable.
    Values stay in [0, 1] (convex combinations of pixels).
    """
    if degrees < 0:
        raise OptimizeConfigError(f"rotation needs degrees >= 0, got {degrees}")

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape[0], generator=generator, device=device, dtype=torch.float32)
        angle = torch.deg2rad((2 * u - 1) * degrees).to(x.device)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(-1, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return transform


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` left to right, all drawing from the same generator."""

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for t in transforms:
            x = t(x, generator)
        return x

    return transform


# --- internals ----------------------------------------------------------------------------------


class _Constraint:
    """Ball ∩ box around ``centre``: ``project`` a start, ``move`` by a step and project."""

    def __init__(self, centre: torch.Tensor, norm: str, eps: float) -> None:
        self.centre, self.eps = centre, eps
        self.kind = "box" if math.isinf(eps) else norm
        if self.kind == "linf":
            # Clamping to [max(c - ε, 0), min(c + ε, 1)] projects onto cube ∩ box in one pass.
            self.lower = (centre - eps).clamp(min=0.0)
            self.upper = (centre + eps).clamp(max=1.0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "box":
            return x.clamp(0.0, 1.0)
        if self.kind == "linf":
            return torch.clamp(x, self.lower, self.upper)
        delta = _project_l2(x - self.centre, self.eps)
        return (self.centre + delta).clamp_(0.0, 1.0)

    def move(
        self, x: torch.Tensor, direction: torch.Tensor, scale: float | torch.Tensor
    ) -> torch.Tensor:
        """Project ``x + scale · direction`` (``scale`` a number or per-example [n, 1, ...])."""
        if self.kind == "l2":
            delta = _scaled_add(x - self.centre, direction, scale)
            return (self.centre + _project_l2(delta, self.eps)).clamp_(0.0, 1.0)
        moved = _scaled_add(x, direction, scale)
        if self.kind == "linf":
            return moved.clamp_(self.lower, self.upper)
        return moved.clamp_(0.0, 1.0)


def _scaled_add(
    base: torch.Tensor, direction: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return torch.addcmul(base, direction, scale)
    return torch.add(base, direction, alpha=scale)


class _StepRule:
    """``rule(g) -> (direction, scale)``: the ascent step on the score is ``scale · direction``."""

    def __init__(self, name: str, step_size: float, betas: tuple[float, float]) -> None:
        self.name, self.step_size, self.betas = name, step_size, betas
        self.reset()

    def reset(self) -> None:
        self.moments: tuple[torch.Tensor, torch.Tensor] | None = None
        self.count = 0

    def __call__(self, g: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        if self.name == "sign":
            return g.sign(), self.step_size
        if self.name == "l2":
            norm = _per_example_norm(g)
            return g, self.step_size / torch.where(norm > 0, norm, 1.0)
        if self.name == "grad":
            return g, self.step_size
        beta1, beta2 = self.betas
        if self.moments is None:
            self.moments = (torch.zeros_like(g), torch.zeros_like(g))
        first, second = self.moments
        first.mul_(beta1).add_(g, alpha=1 - beta1)
        second.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        self.count += 1
        denominator = (second / (1 - beta2**self.count)).sqrt_().add_(_ADAM_EPS)
        return first / denominator, self.step_size / (1 - beta1**self.count)


class _Evaluation:
    """``evaluate(x, generator) -> (score, value, success)``; score = ±value, higher is better."""

    def __init__(
        self,
        objective: Objective,
        n: int,
        maximize: bool,
        batch_objective: bool,
        transform: Transform | None,
    ) -> None:
        self.objective, self.maximize, self.transform = objective, maximize, transform
        self.shape = () if batch_objective else (n,)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        inputs = x if self.transform is None else self.transform(x, generator)
        output = self.objective(inputs)
        values, success = output if isinstance(output, tuple) else (output, None)
        if values.shape != self.shape:
            if self.shape:
                raise ValueError(
                    f"the objective must return one value per example, shape {self.shape}, got "
                    f"{tuple(values.shape)}; for one value per batch set batch_objective=true"
                )
            raise ValueError(
                f"a batch-level objective must return a scalar, got shape {tuple(values.shape)}"
            )
        if success is not None and (success.shape != self.shape or success.dtype != torch.bool):
            raise ValueError(
                f"the objective's success flag must be bool of shape {self.shape}, got "
                f"{success.dtype} {tuple(success.shape)}"
            )
        if torch.is_grad_enabled() and x.requires_grad and not values.requires_grad:
            raise ValueError("the objective's output is not differentiable in its input")
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        return (values if self.maximize else -values), values, success


class _BestIterate:
    """Per example, the highest-ranked candidate offered so far (see InputOptimizer, "Ranking")."""

    def __init__(self, clean: torch.Tensor) -> None:
        n = clean.shape[0]
        self.x = clean.clone()
        self.score = torch.full((n,), -torch.inf, device=clean.device)
        self.success = torch.zeros(n, dtype=torch.bool, device=clean.device)
        self.has_success = False

    def offer(self, x: torch.Tensor, score: torch.Tensor, success: torch.Tensor | None) -> None:
        better = score > self.score
        if success is not None:
            self.has_success = True
            better = (success & ~self.success) | ((success == self.success) & better)
            self.success = torch.where(better, success, self.success)
        self.score = torch.where(better, score, self.score)
        self.x = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x, self.x)


def _frozen(frozen: torch.Tensor | None, success: torch.Tensor | None) -> torch.Tensor:
    """The examples frozen after an iterate reported ``success`` (stop_on_success)."""
    if success is None:
        raise ValueError(
            "stop_on_success needs an objective that returns (values, success); this one "
            "returns values only"
        )
    return success.clone() if frozen is None else frozen | success


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example bool mask [n] shaped [n, 1, ...] to broadcast against ``like``."""
    return mask.view(-1, *[1] * (like.dim() - 1))


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each example of ``t`` [n, ...], shaped [n, 1, ...] to broadcast."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *[1] * (t.dim() - 1))


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each example of ``delta`` onto the L2 ball of radius ``eps``."""
    return delta * (eps / _per_example_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
