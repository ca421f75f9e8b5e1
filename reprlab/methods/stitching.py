"""Model stitching: the front of one network, a trained affine stitch, the back of another.

Balogh & Jelasity, ICML 2023 ("On the Functional Similarity of Robust and Non-Robust Neural
Representations") connect the activation of network A at a layer to network B at a layer with a
1×1 convolution (affine, with bias), train only that layer with both donors frozen, and compare
the stitched model's clean and robust accuracy with B's. Variants: BatchNorm → 1×1 conv →
BatchNorm (Bansal et al. 2021), and the least-squares "direct matching" stitch (Csiszárik et al.
2021), used as an initialisation and also evaluated untrained.

Pure computation (tensors, modules and plain settings in; tensors and histories out): the stitch
layers (:class:`Stitch`), the least-squares solution (:class:`MomentAccumulator`,
:func:`solve_affine`, :func:`least_squares`), the stitched network (:class:`StitchedModel`, a
plain ``nn.Module`` that attacks and :func:`~reprlab.core.attacks.robust_accuracy` treat as any
model)
and the training of every stitch point at once (:func:`train_stitches`, on the one fit loop).

Cost of training P stitch points, per batch, in passes (forward F, backward B of a network part):
one at a time, point p costs F(front to its tap) + F+B(stitch) + F+B(end after its tap), so the
front runs P times; :func:`train_stitches` runs the front ONCE up to the deepest tap
(``features``) and each point's stitch and back half once, so it saves
Σ_p F(front to tap p) − F(front to the deepest tap). The back halves need no weight gradients
(the donors are frozen), only gradients with respect to their activations. Robust stitch training
(a fraction α of each batch replaced by PGD examples against each point's own stitched model)
adds, per point, K forward+backward passes of that stitched model on the αb adversarial images
and one front pass on them; those cannot be shared, since each point has its own adversary.
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.attacks import PGD
from reprlab.core.fit import EpochBatches, FitSettings, fit
from reprlab.errors import ReprlabError
from reprlab.methods.similarity import MinibatchCKA
from reprlab.models import Classifier
from reprlab.runtime import module_mode

STITCH_KINDS = ("conv", "bn_conv_bn")
"""``conv``: an affine 1×1 convolution with bias (a linear layer with bias for flat [n, d]
activations), as Balogh & Jelasity; ``bn_conv_bn``: BatchNorm → that map → BatchNorm (Bansal et
al. 2021)."""

INITS = ("random", "identity", "least_squares")
"""``random``: PyTorch's default initialisation (seeded per point); ``identity``: weight I and bias
0 (equal channel counts only); ``least_squares``: the direct-matching solution."""

DEFAULT_RIDGE = 1e-6


# --- shapes ------------------------------------------------------------------------------------


def incompatibility(front_shape: Sequence[int], end_shape: Sequence[int]) -> str | None:
    """Why an activation of per-example shape ``front_shape`` cannot be stitched to
    ``end_shape``, or None when it can.

    Conv maps [c, h, w] stitch to conv maps of the same h × w (a 1×1 convolution changes only the
    channels); flat [d] activations to flat ones of any width (a linear layer).
    """
    front, end = tuple(front_shape), tuple(end_shape)
    if len(front) == 3 and len(end) == 3:
        if front[1:] != end[1:]:
            return (
                f"spatial size {front[1]}x{front[2]} differs from {end[1]}x{end[2]} "
                "(a 1x1 stitch keeps the spatial size)"
            )
        return None
    if len(front) == 1 and len(end) == 1:
        return None
    return (
        f"shape {_show(front)} cannot be mapped to {_show(end)} (conv maps stitch to conv maps "
        "of the same size, flat activations to flat ones)"
    )


def _show(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


# --- the stitch layer --------------------------------------------------------------------------


class Stitch(nn.Module):
    """An affine map between two activations: ``post(map(pre(h)))``.

    ``map`` is a 1×1 convolution with bias on [n, c_in, h, w] (→ [n, c_out, h, w]) or a linear
    layer with bias on [n, d_in] (→ [n, d_out]); ``pre``/``post`` are BatchNorms for kind
    ``bn_conv_bn`` and identities for ``conv``. Built with PyTorch's default initialisation.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], kind: str = "conv"):
        super().__init__()
        if kind not in STITCH_KINDS:
            raise ReprlabError(f"unknown stitch kind '{kind}'; use one of {STITCH_KINDS}")
        reason = incompatibility(in_shape, out_shape)
        if reason is not None:
            raise ReprlabError(f"cannot stitch {_show(in_shape)} to {_show(out_shape)}: {reason}")
        self.kind = kind
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        c_in, c_out = self.in_shape[0], self.out_shape[0]
        self.flat = len(self.in_shape) == 1
        if self.flat:
            self.map: nn.Module = nn.Linear(c_in, c_out)
            norm: type[nn.Module] = nn.BatchNorm1d
        else:
            self.map = nn.Conv2d(c_in, c_out, kernel_size=1)
            norm = nn.BatchNorm2d
        batchnorm = kind == "bn_conv_bn"
        self.pre = norm(c_in) if batchnorm else nn.Identity()
        self.post = norm(c_out) if batchnorm else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.post(self.map(self.pre(h)))

    @property
    def weight(self) -> torch.Tensor:
        """The map's weight as a matrix [c_out, c_in] (a view)."""
        return self.map.weight.view(self.out_shape[0], self.in_shape[0])

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the map to ``h ↦ weight · h + bias`` (per pixel for conv maps)."""
        self.weight.copy_(weight.to(self.weight))
        self.map.bias.copy_(bias.to(self.map.bias))

    @torch.no_grad()
    def init_identity(self) -> None:
        """Weight I, bias 0 (and BatchNorms at their defaults): the identity map in eval mode
        for ``conv``. Needs equal channel counts."""
        c_in, c_out = self.in_shape[0], self.out_shape[0]
        if c_in != c_out:
            raise ReprlabError(
                f"identity init needs equal widths, got {c_in} -> {c_out} channels; use "
                "init=least_squares or init=random"
            )
        self.set_affine(torch.eye(c_in), torch.zeros(c_in))

    @torch.no_grad()
    def init_least_squares(self, solution: Mapping[str, torch.Tensor]) -> None:
        """Set the stitch to the direct-matching solution of :func:`solve_affine`.

        ``conv``: the map is the affine solution. ``bn_conv_bn``: each BatchNorm is set to the
        identity on the sample's statistics (running mean and variance = the sample's,
        γ = √(var + eps), β = mean, so it is the identity in eval mode and nearly so on batches
        of that distribution in train mode); the map in between is the affine solution.
        """
        self.set_affine(solution["weight"], solution["bias"])
        for norm, mean, var in (
            (self.pre, solution["mean_in"], solution["var_in"]),
            (self.post, solution["mean_out"], solution["var_out"]),
        ):
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                mean, var = mean.to(norm.running_mean), var.to(norm.running_var)
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.weight.copy_(torch.sqrt(var + norm.eps))
                norm.bias.copy_(mean)


def make_stitch(
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    *,
    kind: str = "conv",
    init: str = "random",
    seed: int = 0,
    solution: Mapping[str, torch.Tensor] | None = None,
) -> Stitch:
    """A :class:`Stitch` from ``in_shape`` to ``out_shape`` (per-example activation shapes).

    ``init``: ``random`` (PyTorch's default, drawn with ``seed`` without touching the global
    RNG), ``identity`` or ``least_squares`` (needs ``solution`` from :func:`solve_affine`).
    """
    if init not in INITS:
        raise ReprlabError(f"unknown stitch init '{init}'; use one of {INITS}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stitch = Stitch(in_shape, out_shape, kind)
    if init == "identity":
        stitch.init_identity()
    elif init == "least_squares":
        if solution is None:
            raise ValueError("init='least_squares' needs the solution of solve_affine")
        stitch.init_least_squares(solution)
    return stitch


def point_seed(seed: int, name: str) -> int:
    """A seed for stitch point ``name`` of a run seeded ``seed`` (the same whichever other
    points are trained with it)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


# --- least squares ("direct matching") ---------------------------------------------------------


def as_rows(activation: torch.Tensor) -> torch.Tensor:
    """[n, c, h, w] → [n·h·w, c] (one row per pixel: a 1×1 conv maps each alike); [n, d] as is."""
    if activation.ndim == 4:
        return activation.permute(0, 2, 3, 1).reshape(-1, activation.shape[1])
    if activation.ndim == 2:
        return activation
    raise ValueError(f"expected [n, c, h, w] or [n, d] activations, got {tuple(activation.shape)}")


class MomentAccumulator:
    """Streaming float64 first and second moments of paired rows (a [m, p], b [m, q]).

    Memory is O((p + q)²) whatever the number of rows. Sums are of rows shifted by the first
    batch's means (the shifted-data algorithm), so large means do not cancel the covariances'
    digits.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift_a: torch.Tensor | None = None
        self._shift_b: torch.Tensor | None = None
        self._sum_a = self._sum_b = self._aa = self._ab = self._bb = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add paired rows ``a`` [m, p] and ``b`` [m, q] (any float dtype and device)."""
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"unpaired rows: {a.shape[0]} inputs, {b.shape[0]} targets")
        a, b = a.detach().double(), b.detach().double()
        if self._shift_a is None:
            self._shift_a, self._shift_b = a.mean(0), b.mean(0)
            self._sum_a = torch.zeros_like(self._shift_a)
            self._sum_b = torch.zeros_like(self._shift_b)
            self._aa = a.new_zeros(a.shape[1], a.shape[1])
            self._ab = a.new_zeros(a.shape[1], b.shape[1])
            self._bb = torch.zeros_like(self._shift_b)
        a, b = a - self._shift_a, b - self._shift_b
        self._sum_a += a.sum(0)
        self._sum_b += b.sum(0)
        self._aa += a.T @ a
        self._ab += a.T @ b
        self._bb += (b * b).sum(0)
        self.n += a.shape[0]

    def moments(self) -> dict[str, torch.Tensor]:
        """Means ``mean_a`` [p], ``mean_b`` [q], covariances ``cov_aa`` [p, p], ``cov_ab``
        [p, q] and variances ``var_b`` [q] (float64, divided by the number of rows), on the CPU."""
        if self.n == 0 or self._shift_a is None:
            raise ReprlabError("no activations were given to the least-squares stitch")
        da, db = self._sum_a / self.n, self._sum_b / self.n
        return {
            "mean_a": (self._shift_a + da).cpu(),
            "mean_b": (self._shift_b + db).cpu(),
            "cov_aa": (self._aa / self.n - torch.outer(da, da)).cpu(),
            "cov_ab": (self._ab / self.n - torch.outer(da, db)).cpu(),
            "var_b": (self._bb / self.n - db * db).clamp_min(0).cpu(),
        }


def solve_affine(acc: MomentAccumulator, ridge: float = DEFAULT_RIDGE) -> dict[str, torch.Tensor]:
    """The least-squares affine map b ≈ W a + c over the accumulated rows (direct matching).

    Solves the ridge-regularised normal equations (Σ_aa + λI) Wᵀ = Σ_ab in float64, with
    λ = ``ridge`` · mean eigenvalue of Σ_aa, by :func:`torch.linalg.lstsq` with the SVD-based
    ``gelsd`` driver: rank-deficient activations (dead ReLU channels, constant pixels; Σ_aa
    singular) give the minimum-norm solution instead of an error, so this cannot crash where a
    plain inverse or Cholesky would. The bias is c = mean_b − W mean_a, so the fit is exact on
    the means. Normal equations because they stream: 1,000 CIFAR images at a 32×32 tap are a
    million rows, whose Gram matrix is only p×p.

    Returns float32 tensors: ``weight`` [q, p], ``bias`` [q], ``mean_in``/``var_in`` [p] (the
    inputs' statistics), ``mean_out``/``var_out`` [q] (the fitted outputs' statistics), and
    ``residual`` (mean squared error per target coordinate, a scalar) and ``r2`` (the fraction of
    the targets' variance explained).
    """
    m = acc.moments()
    cov_aa, cov_ab = m["cov_aa"], m["cov_ab"]
    p = cov_aa.shape[0]
    lam = ridge * max(float(torch.trace(cov_aa)) / p, 0.0)
    system = cov_aa + lam * torch.eye(p, dtype=torch.float64)
    weight_t = torch.linalg.lstsq(system, cov_ab, driver="gelsd").solution  # [p, q]
    weight = weight_t.T
    bias = m["mean_b"] - weight @ m["mean_a"]
    var_out = torch.einsum("qp,pr,qr->q", weight, cov_aa, weight).clamp_min(0)
    # Residual variance per target coordinate: var_b − 2 w·Σ_ab + w Σ_aa wᵀ.
    var_b = m["var_b"]
    residual = (var_b - 2 * torch.einsum("pq,pq->q", weight_t, cov_ab) + var_out).clamp_min(0)
    total = float(var_b.sum())
    r2 = 1.0 - float(residual.sum()) / total if total > 0 else 1.0
    return {
        "weight": weight.float(),
        "bias": bias.float(),
        "mean_in": m["mean_a"].float(),
        "var_in": torch.diagonal(cov_aa).clamp_min(0).float(),
        "mean_out": (weight @ m["mean_a"] + bias).float(),
        "var_out": var_out.float(),
        "residual": residual.mean().float(),
        "r2": torch.tensor(r2, dtype=torch.float32),
    }


# --- the stitched network ----------------------------------------------------------------------


class StitchedModel(nn.Module):
    """``end.back(stitch(front.front(x, front_tap)), end_tap)``: pixels in [0, 1] to logits.

    A plain module: attacks, :func:`~reprlab.core.attacks.robust_accuracy` and the mode helpers
    treat
    it as any classifier (its parameters are the donors' and the stitch's; nothing here trains).
    ``front`` and ``end`` may be the same network (a model stitched with itself).
    """

    def __init__(
        self, front: Classifier, front_tap: str, stitch: nn.Module, end: Classifier, end_tap: str
    ) -> None:
        super().__init__()
        self.front, self.stitch, self.end = front, stitch, end
        self.front_tap, self.end_tap = front_tap, end_tap

    def stitched(self, x: torch.Tensor) -> torch.Tensor:
        """The stitch's output: the activation that replaces the end model's at ``end_tap``."""
        return self.stitch(self.front.front(x, self.front_tap))

    def activation(self, x: torch.Tensor, later: str) -> torch.Tensor:
        """The stitched network's activation at the end model's block tap ``later`` (at or after
        ``end_tap``)."""
        return self.end.between(self.stitched(x), self.end_tap, later)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.end.back(self.stitched(x), self.end_tap)


def next_tap(model: Classifier, tap: str) -> str:
    """The block tap after ``tap`` (the layer after a stitch there); ``tap`` itself if last."""
    taps = model.block_taps
    index = taps.index(tap)
    return taps[min(index + 1, len(taps) - 1)]


# --- donors' BatchNorm statistics ---------------------------------------------------------------

FRONT, BACK = "front", "back"
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def donor_batchnorms(model: Classifier, tap: str, side: str) -> dict[str, nn.Module]:
    """The BatchNorm layers a stitched model uses on one side of block tap ``tap``: the stages up
    to and including it (``side="front"``) or after it (``"back"``), by state_dict prefix."""
    index = model.block_taps.index(tap)
    stages = model.stages[: index + 1] if side == FRONT else model.stages[index + 1 :]
    found: dict[str, nn.Module] = {}
    for _, paths in stages:
        for path in paths:
            for name, sub in model.net.get_submodule(path).named_modules(prefix=f"net.{path}"):
                if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
                    found[name] = sub
    return found


def bn_buffers(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The running statistics of BatchNorm ``modules`` as state_dict entries (the tensors)."""
    return {
        f"{prefix}.{attr}": getattr(m, attr)
        for prefix, m in modules.items()
        for attr in _BN_BUFFERS
    }


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares its parameters but owns its buffers (BatchNorm running
    statistics), so re-estimating them leaves ``model`` untouched."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


@torch.no_grad()
def with_buffers(model: Classifier, buffers: Mapping[str, torch.Tensor]) -> Classifier:
    """``model`` itself when ``buffers`` is empty, else a :func:`shared_copy` holding them."""
    if not buffers:
        return model
    twin = shared_copy(model)
    for key, value in buffers.items():
        target = twin.get_buffer(key)
        target.copy_(value.to(target.device))
    return twin


class BufferBank(nn.Module):
    """Named tensors (a state_dict's keys, dots allowed) kept as buffers, so they travel in a
    module's state_dict (checkpoints) and move with ``.to``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.keys = list(tensors)
        for key, value in tensors.items():
            self.register_buffer(key.replace(".", "__"), value.detach().clone())

    def get(self, key: str) -> torch.Tensor:
        return getattr(self, key.replace(".", "__"))

    def items(self) -> dict[str, torch.Tensor]:
        return {key: self.get(key) for key in self.keys}


@contextlib.contextmanager
def _swapped(modules: Mapping[str, nn.Module], bank: BufferBank) -> Iterator[None]:
    """Point ``modules``' running-statistics attributes at ``bank``'s tensors for the block (no
    copies: a train-mode forward updates the bank's tensors in place)."""
    saved = [(m, attr, getattr(m, attr)) for m in modules.values() for attr in _BN_BUFFERS]
    for prefix, m in modules.items():
        for attr in _BN_BUFFERS:
            setattr(m, attr, bank.get(f"{prefix}.{attr}"))
    try:
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


# --- training every stitch point at once -------------------------------------------------------


@dataclass(frozen=True)
class StitchPoint:
    """Where a stitch goes: the front model's block tap and the end model's; ``name`` keys it."""

    name: str
    front_tap: str
    end_tap: str


class _Trainee(nn.Module):
    """What one stitch point trains and keeps: its stitch, and (BatchNorm re-estimated) the
    donors' running statistics it sees, private to this point."""

    def __init__(self, stitch: Stitch, front_bank: BufferBank, end_bank: BufferBank) -> None:
        super().__init__()
        self.stitch, self.front_bank, self.end_bank = stitch, front_bank, end_bank


@dataclass
class TrainedStitches:
    """The result of :func:`train_stitches`: per-epoch ``history`` and, per point, the donors'
    BatchNorm statistics its stitched model uses (``front_bn``, ``end_bn``: state_dict entries
    of the front and end models; empty when they stayed frozen)."""

    history: list[dict[str, Any]]
    front_bn: dict[str, dict[str, torch.Tensor]]
    end_bn: dict[str, dict[str, torch.Tensor]]


def train_stitches(
    front: Classifier,
    end: Classifier,
    points: Sequence[StitchPoint],
    stitches: Mapping[str, Stitch],
    batches: EpochBatches,
    settings: FitSettings,
    *,
    device: torch.device,
    frozen_bn: str = "train",
    adversary: PGD | None = None,
    alpha: float = 0.0,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Any = None,
    progress: bool = True,
    what: str = "stitches",
) -> TrainedStitches:
    """Train the stitch of every point in ``points`` (in place) with ONE pass of the front model
    per batch, by :func:`reprlab.core.fit.fit`; the donors stay frozen.

    Each batch: the front runs once up to the deepest front tap (``features``); each point's
    stitch and the end model's back half after its tap run on that point's activation; the loss
    is the SUM of the points' cross-entropies. The points share no trainable parameter, so the
    sum's gradient for each stitch is its own loss's gradient, and Adam/SGD update each
    parameter from its own gradient: every stitch follows exactly the trajectory it would follow
    trained alone on the same batches (the tests check it). Random inits and adversaries' random
    starts are seeded per point name (:func:`point_seed`), never by position.

    ``frozen_bn="eval"``: the donors' BatchNorms use their stored statistics. ``"train"`` (the
    authors' default): they normalise with batch statistics and re-estimate running ones, on
    param-sharing copies (the given models are untouched); each point's end back half swaps in
    its own running statistics, so no point's statistics see another's activations.

    ``adversary`` with ``alpha`` ∈ (0, 1]: the first round(α·b) images of each batch are replaced
    by PGD examples against that point's stitched model (robust stitch training). With
    ``frozen_bn="train"`` the front then runs per point on its own mixed batch (batch statistics
    depend on it), with that point's own front statistics.

    ``resume``/``on_epoch_end``/``what``: as :func:`reprlab.core.fit.fit` (the state's modules are
    named by point).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ReprlabError(f"alpha={alpha} is invalid: the adversarial fraction must be in [0, 1]")
    names = [p.name for p in points]
    if len(set(names)) != len(names) or set(names) != set(stitches):
        raise ValueError("give one stitch per point, with distinct point names")
    robust = adversary is not None and alpha > 0
    reestimate = frozen_bn == "train"
    if reestimate:
        front_run, end_run = shared_copy(front), shared_copy(end)
    else:
        front_run, end_run = front, end
    shared = not (robust and reestimate)
    front_bns = {p.name: donor_batchnorms(front_run, p.front_tap, FRONT) for p in points}
    end_bns = {p.name: donor_batchnorms(end_run, p.end_tap, BACK) for p in points}
    trainees = {
        p.name: _Trainee(
            stitches[p.name],
            BufferBank(bn_buffers(front_bns[p.name]) if reestimate and not shared else {}),
            BufferBank(bn_buffers(end_bns[p.name]) if reestimate else {}),
        ).to(device)
        for p in points
    }
    stitched = {
        p.name: StitchedModel(front_run, p.front_tap, stitches[p.name], end_run, p.end_tap)
        for p in points
    }
    front_taps = list(dict.fromkeys(p.front_tap for p in points))
    generators: dict[str, torch.Generator] = {}
    epoch_seed: list[int] = []

    def point_generator(generator: torch.Generator, name: str) -> torch.Generator:
        if epoch_seed != [generator.initial_seed()]:  # a new epoch: fresh per-point streams
            epoch_seed[:] = [generator.initial_seed()]
            generators.clear()
        if name not in generators:
            generators[name] = torch.Generator(device=generator.device)
            generators[name].manual_seed(point_seed(epoch_seed[0], name))
        return generators[name]

    def step(batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator):
        x, y = batch
        n_adv = round(alpha * len(y)) if robust else 0
        features = None
        if shared:
            with torch.no_grad():
                features = front_run.features(x, front_taps)
        total = x.new_zeros(())
        stats: dict[str, torch.Tensor] = {}
        for p in points:
            trainee = trainees[p.name]
            with (
                _swapped(end_bns[p.name], trainee.end_bank)
                if reestimate
                else contextlib.nullcontext(),
                _swapped(front_bns[p.name], trainee.front_bank)
                if reestimate and not shared
                else contextlib.nullcontext(),
            ):
                x_adv = None
                if n_adv:
                    x_adv = adversary(
                        stitched[p.name],
                        x[:n_adv],
                        y[:n_adv],
                        generator=point_generator(generator, p.name),
                    )
                with torch.no_grad():
                    if features is not None:
                        h = features[p.front_tap]
                        if x_adv is not None:
                            h = torch.cat([front_run.front(x_adv, p.front_tap), h[n_adv:]])
                    else:
                        inputs = x if x_adv is None else torch.cat([x_adv, x[n_adv:]])
                        h = front_run.front(inputs, p.front_tap)
                logits = end_run.back(trainee.stitch(h), p.end_tap)
            loss = F.cross_entropy(logits.float(), y)
            total = total + loss
            stats[f"acc_{p.name}"] = (logits.detach().argmax(1) == y).sum()
        return total, stats

    frozen = {"front": front_run, "end": end_run}
    history = fit(
        trainees,
        step,
        batches,
        settings,
        device=device,
        frozen=frozen,
        frozen_bn=frozen_bn,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
        what=what,
    )
    front_bn, end_bn = {}, {}
    for p in points:
        if not reestimate:
            front_bn[p.name], end_bn[p.name] = {}, {}
            continue
        bank = trainees[p.name].front_bank
        source = bn_buffers(front_bns[p.name]) if shared else bank.items()
        front_bn[p.name] = {k: v.detach().clone() for k, v in source.items()}
        end_bn[p.name] = {
            k: v.detach().clone() for k, v in trainees[p.name].end_bank.items().items()
        }
    return TrainedStitches(history=history, front_bn=front_bn, end_bn=end_bn)


# --- least squares over a sample, every point at once -------------------------------------------


@torch.no_grad()
def least_squares(
    front: Classifier,
    end: Classifier,
    points: Sequence[StitchPoint],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    ridge: float = DEFAULT_RIDGE,
) -> dict[str, dict[str, torch.Tensor]]:
    """Direct matching (Csiszárik et al. 2021) at every point: the affine map from the front
    model's activation at ``front_tap`` to the end model's own activation at ``end_tap`` on the
    same images, by :func:`solve_affine` (per pixel for conv maps). One pass over ``batches``
    (x, y) with both models in eval mode; point name -> solution."""
    accumulators = {p.name: MomentAccumulator() for p in points}
    front_taps = list(dict.fromkeys(p.front_tap for p in points))
    end_taps = list(dict.fromkeys(p.end_tap for p in points))
    with _eval_mode(front, end):
        for x, _ in batches:
            a = front.features(x, front_taps)
            b = end.features(x, end_taps)
            for p in points:
                accumulators[p.name].update(as_rows(a[p.front_tap]), as_rows(b[p.end_tap]))
    return {name: solve_affine(acc, ridge) for name, acc in accumulators.items()}


def _eval_mode(*modules: nn.Module) -> contextlib.AbstractContextManager:
    return module_mode(*modules, mode="eval")


# --- evaluation against the end model -----------------------------------------------------------


@torch.no_grad()
def predictions(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Predicted labels [N] of ``model`` (eval mode) over ``batches`` (x, y), in order."""
    with _eval_mode(model):
        return torch.cat([model(x).argmax(1) for x, _ in batches])


@torch.no_grad()
def compare_with_end(
    stitched: StitchedModel,
    end: Classifier,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    end_predictions: torch.Tensor,
    *,
    later: str,
) -> dict[str, float]:
    """Clean accuracy of ``stitched``, its agreement with the end model's predictions, and the
    CKA of its activation at the end model's block tap ``later`` with the end model's own there.

    One pass over ``batches`` (x, y), both in eval mode. CKA: linear, flattened activations,
    unbiased minibatch HSIC (Nguyen et al. 2021) over the batches (batches under 4 examples are
    left out of it). Returns ``accuracy``, ``agreement`` (fractions) and ``cka``.
    """
    cka = MinibatchCKA(["stitched"], ["end"], kernel="linear", unbiased=True)
    correct = agree = total = 0
    offset = 0
    with _eval_mode(stitched, end):
        for x, y in batches:
            h = stitched.activation(x, later)
            predicted = stitched.end.back(h, later).argmax(1)
            reference = end_predictions[offset : offset + len(y)].to(predicted.device)
            offset += len(y)
            correct += int((predicted == y).sum())
            agree += int((predicted == reference).sum())
            total += len(y)
            if len(y) >= 4:
                cka.update([h.flatten(1)], [end.front(x, later).flatten(1)])
    try:
        value = float(cka.compute()[0, 0]) if cka.n_batches else float("nan")
    except ReprlabError:  # a constant activation: CKA is undefined
        value = float("nan")
    return {"accuracy": correct / total, "agreement": agree / total, "cka": value}
