"""Mutual information between inputs and representations, its worst case, and what it bounds.

Zhu, Zhang & Evans, "Learning Adversarially Robust Representations via Worst-Case Mutual
Information Maximization", ICML 2020. For a representation ``g`` (a network cut at a tap):

- the mutual information I(X; g(X)) is estimated by a variational lower bound (Donsker–Varadhan,
  Jensen–Shannon or InfoNCE) whose critic T(x, z) is trained to tighten it; the estimate is the
  bound on held-out data after training (:func:`fit_mi`, :func:`estimate`);
- the worst-case MI, min over inputs X' each within an ε-ball of X of I(X'; g(X')), is found by
  alternating critic updates with a PGD search over the batch's inputs that *minimises* the
  batch's bound (one scalar per batch: the whole empirical distribution is perturbed), the
  encoder frozen in eval mode (:class:`WorstCase`); representation vulnerability
  RV_ε(g) = I(X; g(X)) − I_ε(X; g(X));
- Fano's inequality turns the worst-case MI into an upper bound on the adversarial accuracy of
  *any* classifier on g (:func:`fano_bound`); downstream heads (:func:`make_head`,
  :func:`fit_head`) measure the accuracy one actually reaches;
- the learning principle trains the encoder itself by maximising the (worst-case) bound
  (:func:`fit_mi` with ``train_encoder=True``).

The default critic is the authors' Deep-InfoMax local/global design (Hjelm et al., ICLR 2019;
their code: ``schzhu/learning-adversarially-robust-representations``): a small conv net on the
*detached* input image gives a feature vector per location, a 1×1 network on the representation
gives one vector, and T(x_i, z_j) at location l is their dot product, for all (image,
representation) pairs of the batch; the diagonal pairs are samples of the joint distribution, the
others of the product of marginals, and the bound is averaged over locations.

Computation only: tensors and modules in, tensors and numbers out. Every training loop runs on
:func:`reprlab.core.fit.fit`, every input search on :class:`reprlab.core.optimize.InputOptimizer`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.attacks import PGD
from reprlab.core.fit import EpochBatches, FitSettings, fit
from reprlab.core.optimize import NORMS, InputOptimizer
from reprlab.errors import ReprlabError
from reprlab.models import Classifier
from reprlab.runtime import module_mode

ESTIMATORS = ("dv", "jsd", "infonce")
"""``dv``: Donsker–Varadhan (MINE; the authors' default); ``jsd``: the Jensen–Shannon f-GAN bound
(Deep InfoMax's default; a divergence score, not the MI); ``infonce``: InfoNCE (van den Oord et
al. 2018; at most log N)."""

MI_ESTIMATORS = ("dv", "infonce")
"""The estimators whose value is a lower bound on the MI itself (so Fano's bound applies)."""

HEAD_KINDS = ("linear", "mlp")

CRITIC_SCOPES = ("local", "global")
"""What the Deep-InfoMax critic contrasts with the representation: each location of the image's
conv features (``local``, the authors') or their mean over locations (``global``)."""

Encode = Callable[[torch.Tensor], torch.Tensor]
"""``encode(x) -> z``: inputs [n, ...] to representations [n, ...], differentiable in ``x``."""


class MIConfigError(ReprlabError, ValueError):
    """An MI setting out of its range (unknown estimator, negative ε, batch of one, ...)."""


# --- bounds --------------------------------------------------------------------------------------


def _pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(joint scores [n, L], marginal scores [n(n-1), L], n) of critic scores [n, n(, L)].

    ``scores[i, j(, l)] = T(x_i, z_j)`` (at location l): the diagonal pairs an input with its own
    representation (a sample of the joint), the rest with another's (the product of marginals).
    """
    if scores.dim() == 2:
        scores = scores.unsqueeze(-1)
    if scores.dim() != 3 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"critic scores must be [n, n] or [n, n, L], got {tuple(scores.shape)}")
    n = scores.shape[0]
    if n < 2:
        raise MIConfigError("an MI bound needs a batch of at least 2 (no negatives with 1)")
    scores = scores.float()
    diagonal = torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores[diagonal], scores[~diagonal], n


def dv_bound(scores: torch.Tensor) -> torch.Tensor:
    r"""Donsker–Varadhan lower bound on the MI (nats) from critic scores [n, n] or [n, n, L].

    .. math:: I(X; Z) \ge \mathbb{E}_{P_{XZ}}[T] - \log \mathbb{E}_{P_X \otimes P_Z}[e^T]

    with the joint expectation over the n diagonal pairs and the marginal one over the n(n−1)
    off-diagonal pairs of the batch; per location, then averaged over locations. Exact for
    T = log dP_XZ/d(P_X⊗P_Z) + c; can exceed log n; a scalar float32 tensor.
    """
    joint, marginal, _ = _pairs(scores)
    log_mean_exp = torch.logsumexp(marginal, dim=0) - math.log(marginal.shape[0])
    return (joint.mean(0) - log_mean_exp).mean()


def jsd_bound(scores: torch.Tensor) -> torch.Tensor:
    r"""Jensen–Shannon (f-GAN) score from critic scores [n, n] or [n, n, L], in nats.

    .. math:: 2\log 2 - \mathbb{E}_{P_{XZ}}[\mathrm{softplus}(-T)]
              - \mathbb{E}_{P_X \otimes P_Z}[\mathrm{softplus}(T)]
              \le 2\,\mathrm{JSD}(P_{XZ} \,\|\, P_X \otimes P_Z) \le 2\log 2

    (Nowozin et al. 2016; Deep InfoMax's "JSD" mode, shifted so that independence gives 0). It
    grows monotonically with the dependence but estimates a divergence, not the MI.
    """
    joint, marginal, _ = _pairs(scores)
    score = 2 * math.log(2) - F.softplus(-joint).mean(0) - F.softplus(marginal).mean(0)
    return score.mean()


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    r"""InfoNCE lower bound on the MI (nats) from critic scores [n, n] or [n, n, L].

    .. math:: I(X; Z) \ge \frac1n \sum_i \log \frac{e^{T(x_i, z_i)}}{\frac1n \sum_j e^{T(x_i, z_j)}}

    (van den Oord et al. 2018): each input picks its representation among the batch's n; per
    location, then averaged. Never exceeds log n.
    """
    joint, _, n = _pairs(scores)
    full = scores.float() if scores.dim() == 3 else scores.float().unsqueeze(-1)
    log_normaliser = torch.logsumexp(full, dim=1)  # [n, L]: over the representations j
    return (joint - log_normaliser).mean(0).add(math.log(n)).mean()


_BOUNDS = {"dv": dv_bound, "jsd": jsd_bound, "infonce": infonce_bound}


def check_estimator(estimator: str) -> None:
    """Raise :class:`MIConfigError` unless ``estimator`` is one of :data:`ESTIMATORS`."""
    if estimator not in ESTIMATORS:
        raise MIConfigError(f"unknown MI estimator '{estimator}'; use one of {ESTIMATORS}")


def mi_bound(scores: torch.Tensor, estimator: str = "dv") -> torch.Tensor:
    """The bound ``estimator`` (see :data:`ESTIMATORS`) of critic scores; a scalar tensor."""
    check_estimator(estimator)
    return _BOUNDS[estimator](scores)


# --- critics -------------------------------------------------------------------------------------


def _identity_like_(weight: torch.Tensor) -> None:
    """Deep InfoMax's shortcut initialisation: ~U(±0.01) with ones on the diagonal (a noisy copy
    of the input), when there are at least as many outputs as inputs."""
    units, inputs = weight.shape[:2]
    if units < inputs:
        return
    with torch.no_grad():
        weight.uniform_(-0.01, 0.01)
        index = torch.arange(inputs)
        weight[index, index] = 1.0


class GlobalNet(nn.Module):
    """Deep InfoMax's 1×1 network on a vector: [n, d] -> [n, units].

    ``LayerNorm(block(z) + shortcut(z))`` with block = Linear (no bias) → BatchNorm → ReLU →
    Linear and a linear shortcut initialised as a noisy identity (Hjelm et al. 2019; the
    authors' ``MI1x1ConvNet`` applied to a 1×1 map).
    """

    def __init__(self, in_features: int, units: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(in_features, units, bias=False),
            nn.BatchNorm1d(units),
            nn.ReLU(),
            nn.Linear(units, units),
        )
        self.shortcut = nn.Linear(in_features, units, bias=False)
        _identity_like_(self.shortcut.weight)
        self.norm = nn.LayerNorm(units)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        return self.norm(self.block(z) + self.shortcut(z))


class LocalNet(nn.Module):
    """The authors' local critic net: images [n, c, h, w] -> features [n, units, h/4, w/4].

    Two conv 4×4 stride-2 layers (``channels``, no bias) with BatchNorm and ReLU, then the 1×1
    block of :class:`GlobalNet` at every location (1×1 convs, a noisy-identity shortcut,
    LayerNorm over the channels).
    """

    def __init__(self, in_channels: int, units: int, channels: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            previous = width
        self.convs = nn.Sequential(*layers)
        self.block = nn.Sequential(
            nn.Conv2d(previous, units, kernel_size=1, bias=False),
            nn.BatchNorm2d(units),
            nn.ReLU(),
            nn.Conv2d(units, units, kernel_size=1),
        )
        self.shortcut = nn.Conv2d(previous, units, kernel_size=1, bias=False)
        _identity_like_(self.shortcut.weight)
        self.norm = nn.LayerNorm(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)
        h = self.block(h) + self.shortcut(h)
        return self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DIMCritic(nn.Module):
    """Deep-InfoMax local/global critic: ``scores[i, j, l] = ⟨local(x_i)_l, global(z_j)⟩ / √units``.

    ``forward(x [n, c, h, w], z [n, ...]) -> scores [n, n, L]`` over all (image, representation)
    pairs of the batch and the L = (h/4)·(w/4) locations of the local features.
    ``scope="local"`` (the authors') scores every location, so a bound over the scores averages
    per-location estimates: the MI between an image *patch* and the representation, which is at
    most I(X; Z). ``scope="global"`` mean-pools the local features first (L = 1): the critic
    sees the whole image, and the bound estimates I(X; Z) itself, the quantity Fano's bound
    (:func:`fano_bound`) takes. The image is
    *detached* (as in the authors' code): gradients reach the input only through ``z``, so a
    search over inputs moves them by what the representation does. The 1/√units temperature
    (not in the authors' code, where scores start at ~√units) only rescales the initial scores;
    LayerNorm's learnt gains reach any other scale.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        representation_size: int,
        units: int = 2048,
        channels: Sequence[int] = (64, 128),
        scope: str = "local",
    ) -> None:
        super().__init__()
        if scope not in CRITIC_SCOPES:
            raise MIConfigError(f"unknown critic scope '{scope}'; use one of {CRITIC_SCOPES}")
        in_channels, height, width = image_shape
        if min(height, width) < 2 ** len(channels):
            raise MIConfigError(
                f"the local critic halves the image {len(channels)} times; {height}x{width} "
                "is too small"
            )
        self.local = LocalNet(in_channels, units, channels)
        self.glob = GlobalNet(representation_size, units)
        self.scale = 1.0 / math.sqrt(units)
        self.scope = scope

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        local = self.local(x.detach()).flatten(2)  # [n, units, L]
        if self.scope == "global":
            local = local.mean(2, keepdim=True)
        glob = self.glob(z.flatten(1))  # [n, units]
        return torch.einsum("iul,ju->ijl", local, glob) * self.scale


class SeparableCritic(nn.Module):
    """``scores[i, j] = ⟨f(x_i), g(z_j)⟩ / √units`` for vectors x [n, dx] and z [n, dz].

    ``f`` and ``g`` are :class:`GlobalNet` embeddings (Deep InfoMax's global design on both
    sides); used for estimator checks on vectors with a known MI.
    """

    def __init__(self, x_size: int, z_size: int, units: int = 128) -> None:
        super().__init__()
        self.f = GlobalNet(x_size, units)
        self.g = GlobalNet(z_size, units)
        self.scale = 1.0 / math.sqrt(units)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.f(x) @ self.g(z).T * self.scale


def representation_size(model: Classifier, tap: str) -> int:
    """Number of features of ``model``'s (flattened) activation at ``tap`` per example."""
    info = {t.name: t for t in model.probe().taps}
    if tap not in info:
        raise MIConfigError(f"unknown tap '{tap}' for {model.arch}")
    return math.prod(info[tap].shape)


# --- worst case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorstCase:
    """The search for the worst-case MI: PGD that *minimises* the batch's MI bound.

    ``eps``: radius of each input's ball (pixel units; ``norm`` ``"linf"`` as the authors, or
    ``"l2"``); ``steps`` steps of ``step_size`` (sign steps for L∞, normalised gradient steps for
    L2), no random start (the authors' defaults: L∞ ε = 8/255, 0.01, 7 steps). The objective is
    one scalar for the whole batch (``batch_objective``): its gradient moves every input, so the
    perturbation acts on the empirical distribution, not on one example at a time.
    """

    eps: float
    step_size: float = 0.01
    steps: int = 7
    norm: str = "linf"

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise MIConfigError(f"the worst-case search needs eps >= 0, got {self.eps}")
        if self.norm not in NORMS:
            raise MIConfigError(f"unknown norm '{self.norm}'; use one of {NORMS}")
        if self.steps < 0:
            raise MIConfigError(f"the worst-case search needs steps >= 0, got {self.steps}")
        if not self.step_size > 0:
            raise MIConfigError(f"the worst-case step_size must be > 0, got {self.step_size}")

    @property
    def optimizer(self) -> InputOptimizer:
        """This search as a preset of :class:`~reprlab.core.optimize.InputOptimizer`."""
        return InputOptimizer(
            steps=self.steps,
            step_size=self.step_size,
            step="sign" if self.norm == "linf" else "l2",
            norm=self.norm,
            eps=self.eps,
            maximize=False,
            batch_objective=True,
            final_value=True,
        )

    def __call__(
        self, encode: Encode, critic: nn.Module, x: torch.Tensor, estimator: str = "dv"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x' [n, ...] in the balls around ``x``, the bound at x' []) for the critic as it is.

        The caller sets the modes (the authors: everything in eval mode during the search).
        """
        result = self.optimizer(
            lambda inputs: mi_bound(critic(inputs, encode(inputs)), estimator), x
        )
        return result.x, result.value


# --- estimating and maximising ------------------------------------------------------------------


def _pair(batch: Any, encode: Encode | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, z) of a batch: z = the batch's second tensor without ``encode``, else None (to
    compute)."""
    if isinstance(batch, torch.Tensor):
        if encode is None:
            raise ValueError("without an encoder, batches must be (x, z) pairs")
        return batch, None
    return batch[0], (batch[1] if encode is None else None)


def estimate(
    critic: nn.Module,
    batches: Iterable[Any],
    estimator: str = "dv",
    *,
    encode: Encode | None = None,
    search: WorstCase | None = None,
) -> tuple[float, list[float]]:
    """The bound on ``batches`` (normal case, or worst case with ``search``) with the critic fixed.

    With ``encode``, batches are x [n, ...] or tuples starting with x, and z = encode(x);
    without, batches are (x, z) pairs of samples of the joint distribution. Returns (the mean of
    the per-batch bounds weighted by batch size, the per-batch bounds). Modes are the caller's
    (use eval mode for held-out estimates).
    """
    if search is not None and encode is None:
        raise ValueError("the worst-case search needs the encoder (encode=...)")
    values, sizes = [], []
    for batch in batches:
        x, z = _pair(batch, encode)
        if search is None:
            with torch.no_grad():
                value = mi_bound(critic(x, encode(x) if z is None else z), estimator)
        else:
            _, value = search(encode, critic, x, estimator)
        values.append(float(value))
        sizes.append(x.shape[0])
    if not values:
        raise MIConfigError("no batches to estimate the MI on")
    mean = sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
    return mean, values


def fit_mi(
    critic: nn.Module,
    batches: EpochBatches,
    settings: FitSettings,
    *,
    encoder: nn.Module | None = None,
    encode: Encode | None = None,
    estimator: str = "dv",
    search: WorstCase | None = None,
    train_encoder: bool = False,
    heldout: Sequence[Any] | None = None,
    device: torch.device,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    progress: bool = True,
    what: str = "critic",
) -> list[dict[str, Any]]:
    """Maximise the MI bound over the critic (and the encoder) on ``batches``.

    Without ``encoder``, batches are (x, z) samples of a joint distribution and the critic alone
    is trained (the MI between two given variables). With ``encoder`` and ``encode`` (which
    must compute the representation with ``encoder``), batches are x (or tuples starting with
    x) and z = encode(x). Each step (the authors' alternation): with ``search``, first replace
    the batch by the inputs that minimise its bound (:class:`WorstCase`, every module in eval
    mode), then take one optimiser step on ``-bound`` at those inputs. ``train_encoder=False``:
    the encoder is frozen in eval mode (estimating I or I_ε of a given representation);
    ``True``: encoder and critic are trained together (the learning principle: normal-case MI
    maximisation, i.e. Deep InfoMax, or worst-case MI maximisation with ``search``).

    History (per epoch, see :func:`reprlab.core.fit.fit`): ``train_mi`` (the mean bound on the
    training batches, at the searched inputs with ``search``) and, with ``heldout`` (a sequence
    of batches), ``heldout_mi``: the bound on them after the epoch, searched again against the
    epoch's critic in the worst case. The estimate of Zhu et al. is the last ``heldout_mi``.
    """
    check_estimator(estimator)
    if (encoder is None) != (encode is None):
        raise ValueError("pass both encoder and encode, or neither (batches of (x, z) pairs)")
    if encoder is None and (search is not None or train_encoder):
        raise ValueError("the worst-case search and encoder training need the encoder")
    modes = (critic,) if encoder is None else (encoder, critic)

    def step(batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x, z = _pair(batch, encode)
        if search is not None:
            with module_mode(*modes, mode="eval"):
                x, _ = search(encode, critic, x, estimator)
        if z is None:
            with contextlib.nullcontext() if train_encoder else torch.no_grad():
                z = encode(x)
        bound = mi_bound(critic(x, z), estimator)
        return -bound, {"mi": bound.detach() * x.shape[0]}

    def evaluate(epoch: int) -> dict[str, float]:
        value, _ = estimate(critic, heldout, estimator, encode=encode, search=search)
        return {"heldout_mi": value}

    modules: dict[str, nn.Module] = {"critic": critic}
    frozen: dict[str, nn.Module] = {}
    if encoder is not None:
        (modules if train_encoder else frozen)["encoder"] = encoder
    return fit(
        modules,
        step,
        batches,
        settings,
        device=device,
        frozen=frozen,
        evaluate=evaluate if heldout else None,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
        what=what,
    )


# --- what the worst case bounds ------------------------------------------------------------------


def label_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the empirical label distribution of ``labels`` [n] int64."""
    counts = torch.bincount(labels.flatten().cpu(), minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def fano_bound(mi: float, num_classes: int, entropy: float | None = None) -> float:
    r"""Fano upper bound on the (adversarial) accuracy of any classifier of Y from a representation.

    For labels Y with entropy H(Y) over k classes and a representation Z = g(X'), Fano's
    inequality gives H(Y | Z) ≤ log 2 + P_err·log k, and the Markov chain Y → X' → Z gives
    I(Y; Z) ≤ I(X'; Z), so

    .. math:: \mathrm{acc} \le 1 - \frac{H(Y) - I(X'; g(X')) - \log 2}{\log k}
              \;\overset{H(Y) = \log k}{=}\; \frac{I(X'; g(X')) + \log 2}{\log k}.

    An adversary moving each x into its ε-ball may realise any such X' (a map x ↦ x'), so with
    the worst-case MI I_ε = min over X' of I(X'; g(X')) it bounds the adversarial accuracy of
    every downstream classifier f∘g (Zhu et al. 2020, Theorem 3.4: AdvRisk_ε ≥ 1 − (I_ε +
    log 2)/log k for balanced classes). ``mi`` and ``entropy`` in nats (``entropy`` None: log k,
    balanced classes); negative MI estimates count as 0; the result is clipped to [0, 1]. With
    an *estimated* I_ε (a variational lower bound, minimised by a heuristic search) the result is
    an estimate of the bound, not a certificate.
    """
    if num_classes < 2:
        raise MIConfigError(f"Fano's bound needs at least 2 classes, got {num_classes}")
    log_k = math.log(num_classes)
    h = log_k if entropy is None else entropy
    accuracy = 1.0 - (h - max(mi, 0.0) - math.log(2)) / log_k
    return min(1.0, max(0.0, accuracy))


# --- downstream heads ---------------------------------------------------------------------------


def make_head(kind: str, in_features: int, num_classes: int, hidden: int = 200) -> nn.Module:
    """A downstream classifier on a representation [n, in_features] -> logits [n, num_classes].

    ``linear``: one linear layer; ``mlp``: the authors' Linear(hidden) → Dropout(0.1) →
    BatchNorm → ReLU → Linear.
    """
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.Dropout(0.1),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
    raise MIConfigError(f"unknown head '{kind}'; use one of {HEAD_KINDS}")


class OnRepresentation(nn.Module):
    """``head(model's activation at tap, flattened)``: a classifier on a frozen representation.

    Pixels in [0, 1] in, logits out; differentiable in the input, so the run's attack applies to
    the composition as to any model.
    """

    def __init__(self, model: Classifier, tap: str, head: nn.Module) -> None:
        super().__init__()
        self.model, self.tap, self.head = model, tap, head

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x, [self.tap], detach=False)[self.tap].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.represent(x))


def fit_head(
    classifier: OnRepresentation,
    batches: EpochBatches,
    settings: FitSettings,
    *,
    adversary: PGD | None = None,
    device: torch.device,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    progress: bool = True,
    what: str = "head",
) -> list[dict[str, Any]]:
    """Train ``classifier.head`` by cross-entropy with the representation frozen (eval mode).

    ``adversary`` None: standard training on clean batches (x, y); otherwise each batch is
    replaced by the adversary's examples against the whole composition (adversarial training of
    the head on a fixed representation, as the authors' ``train-classifier`` task). History as
    :func:`reprlab.core.fit.fit`, with ``train_acc``.
    """

    def step(batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch[0], batch[1]
        if adversary is not None:
            x = adversary(classifier, x, y, generator=generator)
        with torch.no_grad():
            features = classifier.represent(x)
        logits = classifier.head(features)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"acc": (logits.detach().argmax(1) == y).sum()}

    return fit(
        {"head": classifier.head},
        step,
        batches,
        settings,
        device=device,
        frozen={"model": classifier.model},
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
        what=what,
    )
