"""AutoAttack and APGD from the authors' code (Croce & Hein, ICML 2020), behind reprlab's attack
protocol.

The attacks themselves are not re-implemented: :class:`AutoAttack` configures and runs
``pyautoattack`` (PyPI; MIT licence), which packages the authors' repository ``fra31/auto-attack``
— its APGD, FAB and Square code is the authors' line for line; only the driver class was
modernised (logging instead of prints, keyword arguments). What this module adds:

- reprlab's conventions: [0, 1] inputs to a model that normalises itself; the model in the
  attack's mode (eval by default) with its train/eval flags and buffers restored afterwards; no
  parameter accumulates ``.grad`` (FAB calls ``backward``: parameters are frozen meanwhile); the
  caller's global RNG untouched (the package reseeds torch's global generator with ``seed``);
- the number of target classes of APGD-T and FAB-T set to ``min(9, classes − 1)`` (Restricted
  ImageNet has 9 classes; the package assumes at least 10);
- per-stage robust accuracy (after APGD-CE, APGD-T, FAB-T, Square) and a progress bar per stage,
  by wrapping each component's ``perturb``: the package's own loop runs unchanged, so its result
  is the result of calling the package directly with the same model, images, seed and batch size;
- the package's warnings (randomised or dynamic defence, Square beating the gradient attacks,
  too many target classes) returned with the result.

Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square: the one reviewers ask for), ``plus``,
``rand`` (APGD-CE and APGD-DLR with 20-fold EOT, for randomised defences) and ``custom`` (the
components listed in ``attacks``: APGD-CE alone, APGD-DLR alone, ...).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from reprlab.core.attacks import AttackConfigError, preserved_buffers
from reprlab.core.optimize import NORMS
from reprlab.errors import ReprlabError
from reprlab.runtime import MODES as MODEL_MODES
from reprlab.runtime import module_mode

__all__ = ["AA_COMPONENTS", "AA_VERSIONS", "AutoAttack", "AutoAttackResult", "package_version"]

AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
PACKAGE = "pyautoattack"
_PACKAGE_NORMS = {"linf": "Linf", "l2": "L2"}
_NAMES = {
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "apgd-t": "APGD-T",
    "fab": "FAB",
    "fab-t": "FAB-T",
    "square": "Square",
}


def package_version() -> str | None:
    """The installed ``pyautoattack`` version, or None when it is not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class AutoAttackResult:
    """What :meth:`AutoAttack.run` returns for ``n`` examples.

    - ``x_adv`` [n, ...]: the package's adversarial examples (the clean image where no attack
      succeeded), on the input's device.
    - ``correct`` [n] bool (CPU): classified correctly after the whole ensemble.
    - ``clean_correct``: how many were classified correctly before it.
    - ``stages``: per component in the order run, the robust accuracy in [0, 1] after it (the
      ensemble's accuracy so far: each stage attacks only the points still robust).
    - ``seconds``: per component, seconds spent in it.
    - ``warnings``: the package's warnings (randomised defence, Square beating the gradient
      attacks, ...), one line each.
    """

    x_adv: torch.Tensor
    correct: torch.Tensor
    clean_correct: int
    stages: dict[str, float]
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AutoAttack:
    r"""AutoAttack (Croce & Hein, ICML 2020) or one of its components, via ``pyautoattack``.

    Arguments
    ---------
    norm, eps:
        ``"linf"`` or ``"l2"``, and the radius in pixel units of [0, 1] images.
    version:
        ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand`` or ``custom``.
    attacks:
        With ``custom``: the components to run, in order (from :data:`AA_COMPONENTS`), e.g.
        ``("apgd-ce",)``. Must be None otherwise (the version fixes them).
    seed:
        The package's seed: it reseeds torch before every component and batch (the caller's RNG
        state is restored afterwards), so a run is a fixed function of (model, images, seed,
        batch_size). The ``generator`` of the attack protocol is ignored.
    batch_size:
        The package's batch size (its ``bs``); points are re-batched before each component.
    target_classes:
        Target classes of APGD-T and FAB-T; None: ``min(9, classes − 1)`` from the model's
        output (the package's 9 assumes at least 10 classes).
    apgd_iterations, apgd_restarts:
        Override APGD's 100 iterations / the version's restarts (None keeps the package's).
    model_mode:
        The model's mode during the attack (see :class:`reprlab.core.attacks.PGD`); restored after,
        buffers included.
    progress:
        A progress bar per component (shown when stderr is a terminal). Not a setting.

    Called as ``attack(model, x, y) -> x_adv`` (the :class:`reprlab.core.attacks.Attack` protocol);
    ``whole_set`` asks callers to pass all examples at once, so the result equals the package's
    on the same set. :meth:`run` also returns per-stage accuracies.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    seed: int = 0
    batch_size: int = 500
    target_classes: int | None = None
    apgd_iterations: int | None = None
    apgd_restarts: int | None = None
    model_mode: str = "eval"
    progress: bool = field(default=True, compare=False)

    targeted = False
    whole_set = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise AttackConfigError(f"unknown attack norm '{self.norm}'; use one of {NORMS}")
        if not self.eps >= 0:
            raise AttackConfigError(f"attack eps must be >= 0, got {self.eps}")
        if self.version not in AA_VERSIONS:
            raise AttackConfigError(
                f"unknown AutoAttack version '{self.version}'; use one of {', '.join(AA_VERSIONS)}"
            )
        if self.version == "custom":
            if not self.attacks:
                raise AttackConfigError(
                    "AutoAttack version 'custom' needs attacks=[...], e.g. [apgd-ce]"
                )
            unknown = [a for a in self.attacks if a not in AA_COMPONENTS]
            if unknown:
                raise AttackConfigError(
                    f"unknown AutoAttack component(s) {unknown}; use {', '.join(AA_COMPONENTS)}"
                )
        elif self.attacks:
            raise AttackConfigError(
                f"AutoAttack version '{self.version}' fixes its attacks; set version=custom "
                "to choose them"
            )
        if self.batch_size < 1:
            raise AttackConfigError(f"AutoAttack batch_size must be >= 1, got {self.batch_size}")
        if self.target_classes is not None and self.target_classes < 1:
            raise AttackConfigError(
                f"AutoAttack target_classes must be >= 1, got {self.target_classes}"
            )
        for name in ("apgd_iterations", "apgd_restarts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AttackConfigError(f"AutoAttack {name} must be >= 1, got {value}")
        if self.model_mode not in MODEL_MODES:
            raise AttackConfigError(
                f"unknown attack model_mode '{self.model_mode}'; use one of {MODEL_MODES}"
            )

    # --- the protocol --------------------------------------------------------------------

    def describe(self) -> str:
        """``AutoAttack-standard linf``, or the component names of a custom run."""
        if self.version == "custom":
            return "+".join(_NAMES[a] for a in self.attacks or ()) + f" {self.norm}"
        return f"AutoAttack-{self.version} {self.norm}"

    def settings(self, num_classes: int | None = None) -> dict[str, Any]:
        """Every setting as plain values (for run.json): the package and its version, the seed,
        the components run and each component's parameters as the package is configured.
        ``num_classes`` resolves the number of target classes."""
        package = _package()
        configured = self._configure(package.AutoAttack(None, **self._package_arguments("cpu")))
        targets = self._targets(num_classes) if num_classes is not None else self.target_classes
        return {
            "attack": "autoattack",
            "package": f"{PACKAGE} {package_version()}",
            "version": self.version,
            "components": list(configured.attacks_to_run),
            "norm": self.norm,
            "eps": self.eps,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "target_classes": targets if targets is not None else "min(9, classes - 1)",
            "apgd": {
                "iterations": configured.apgd.n_iter,
                "restarts": configured.apgd.n_restarts,
                "eot_iter": configured.apgd.eot_iter,
                "rho": configured.apgd.thr_decr,
            },
            "apgd_t": {
                "iterations": configured.apgd_targeted.n_iter,
                "restarts": configured.apgd_targeted.n_restarts,
            },
            "fab": {"iterations": configured.fab.n_iter, "restarts": configured.fab.n_restarts},
            "square": {"queries": configured.square.n_queries, "p_init": configured.square.p_init},
            "model_mode": self.model_mode,
        }

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The adversarial examples of ``x`` (see :meth:`run`); ``generator`` is ignored."""
        return self.run(model, x, y, progress=self.progress).x_adv

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, progress: bool = True
    ) -> AutoAttackResult:
        """Run the ensemble on ``x`` [n, ...] in [0, 1] with true labels ``y`` [n].

        The package's ``run_standard_evaluation(x, y, batch_size=batch_size)``, unchanged,
        inside reprlab's conventions (module docstring); per-stage accuracies and seconds are
        read off each component's calls.
        """
        if not x.is_floating_point():
            raise ValueError(f"AutoAttack needs floating-point images in [0, 1], got {x.dtype}")
        n = x.shape[0]
        y = y.to(x.device)
        if n == 0:
            raise ReprlabError("no examples to attack")
        package = _package()
        with self._conventions(model, x.device) as warnings:
            with torch.no_grad():
                logits = [model(chunk) for chunk in x.split(self.batch_size)]
            predictions = torch.cat([chunk.max(dim=1)[1] for chunk in logits])
            clean_correct = int((predictions == y).sum().item())
            attack = self._configure(
                package.AutoAttack(model, **self._package_arguments(x.device)),
                num_classes=logits[0].shape[1],
            )
            if self.eps == 0:
                x_adv, y_adv = x.detach().clone(), predictions
                stages: dict[str, float] = {}
                seconds: dict[str, float] = {}
            else:
                tracker = _StageTracker(model, clean_correct, n, self.eps, progress)
                tracker.components = list(attack.attacks_to_run)
                tracker.instrument(attack)
                try:
                    x_adv, y_adv = attack.run_standard_evaluation(
                        x.detach(), y.detach(), batch_size=self.batch_size
                    )
                finally:
                    tracker.close()
                stages, seconds = tracker.accuracies(), tracker.seconds
        return AutoAttackResult(
            x_adv=x_adv.detach().to(x.dtype),
            correct=(y_adv == y).cpu(),
            clean_correct=clean_correct,
            stages=stages,
            seconds=seconds,
            warnings=warnings,
        )

    # --- internals -----------------------------------------------------------------------

    def _package_arguments(self, device: torch.device | str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "norm": _PACKAGE_NORMS[self.norm],
            "eps": self.eps,
            "seed": self.seed,
            "version": self.version,
            "device": device,
        }
        if self.version == "custom":
            arguments["attacks"] = list(self.attacks or ())
        return arguments

    def _targets(self, num_classes: int) -> int:
        if self.target_classes is not None:
            if self.target_classes > num_classes - 1:
                raise AttackConfigError(
                    f"AutoAttack target_classes={self.target_classes} exceeds the "
                    f"{num_classes - 1} other classes of this model; lower it or leave it null"
                )
            return self.target_classes
        return min(9, num_classes - 1)

    def _configure(self, attack: Any, num_classes: int | None = None) -> Any:
        """Apply reprlab's overrides to a constructed package ``AutoAttack``."""
        if num_classes is not None:
            targets = self._targets(num_classes)
            attack.apgd_targeted.n_target_classes = targets
            attack.fab.n_target_classes = targets
        if self.apgd_iterations is not None:
            attack.apgd.n_iter = self.apgd_iterations
            attack.apgd_targeted.n_iter = self.apgd_iterations
        if self.apgd_restarts is not None:
            attack.apgd.n_restarts = self.apgd_restarts
        return attack

    @contextlib.contextmanager
    def _conventions(self, model: nn.Module, device: torch.device) -> Iterator[list[str]]:
        """Mode, buffers, frozen parameters, the caller's RNG, and the package's warnings."""
        parameters = list(model.parameters())
        flags = [p.requires_grad for p in parameters]
        keep = contextlib.nullcontext() if self.model_mode == "eval" else preserved_buffers(model)
        devices = [device] if device.type == "cuda" else []
        handler = _WarningCollector()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(handler)
        try:
            for p in parameters:
                p.requires_grad_(False)
            with keep, module_mode(model, mode=self.model_mode), torch.random.fork_rng(devices):
                yield handler.lines
        finally:
            logger.removeHandler(handler)
            for p, flag in zip(parameters, flags, strict=True):
                p.requires_grad_(flag)


class _WarningCollector(logging.Handler):
    """Keeps the package's warning lines (its checks log them on the ``auto-attack`` logger)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0])


class _StageTracker:
    """Wraps each component's ``perturb``: counts the points it breaks, times it, and shows one
    progress bar per component. The package's loop is untouched; the extra forward pass per
    batch (the same prediction the loop makes next) draws no random numbers."""

    def __init__(
        self, model: nn.Module, clean_correct: int, n: int, eps: float, progress: bool
    ) -> None:
        self.model, self.n, self.eps, self.progress = model, n, eps, progress
        self.robust = clean_correct
        self.order: list[str] = []
        self.remaining: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.bar: Any = None
        self.components: list[str] = []

    def instrument(self, attack: Any) -> None:
        self._wrap(attack.apgd, lambda: "apgd-ce" if attack.apgd.loss == "ce" else "apgd-dlr")
        self._wrap(attack.apgd_targeted, lambda: "apgd-t")
        self._wrap(attack.fab, lambda: "fab-t" if attack.fab.targeted else "fab")
        self._wrap(attack.square, lambda: "square")

    def _wrap(self, component: Any, name_of: Any) -> None:
        original = component.perturb

        def perturb(x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            name = name_of()
            self._enter(name)
            started = time.perf_counter()
            adversarial = original(x, y, *args, **kwargs)
            with torch.no_grad():
                broken = int((~y.eq(self.model(adversarial).max(dim=1)[1])).sum().item())
            self.seconds[name] += time.perf_counter() - started
            self.robust -= broken
            self.remaining[name] = self.robust
            self.bar.update(len(y))
            return adversarial

        component.perturb = perturb

    def _enter(self, name: str) -> None:
        if self.order and self.order[-1] == name:
            return
        self.close()
        self.order.append(name)
        self.seconds[name] = 0.0
        self.remaining[name] = self.robust
        self.bar = tqdm(
            total=self.robust,
            desc=f"AutoAttack {_NAMES[name]} ε={self.eps:.4g}",
            unit="img",
            disable=None if self.progress else True,
            leave=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def accuracies(self) -> dict[str, float]:
        """Robust accuracy after each component; components the package skipped (no robust
        point left) keep the accuracy reached before them."""
        result = {name: self.remaining[name] / self.n for name in self.order}
        for name in self.components:
            result.setdefault(name, self.robust / self.n)
        return result


def _package() -> Any:
    """The ``pyautoattack.autoattack`` module; a one-line error when it is not installed."""
    try:
        import pyautoattack.autoattack as package
    except ImportError:
        raise ReprlabError(
            "AutoAttack needs the pyautoattack package: pip install pyautoattack==0.2.0 "
            "(pinned in constraints.txt)"
        ) from None
    return package
