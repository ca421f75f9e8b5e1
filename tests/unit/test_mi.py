"""MI estimators, worst-case MI and Fano's bound (reprlab.methods.mi; Zhu et al. 2020).

Science checks: the bounds against independent loops; the DV/InfoNCE estimates of trained
critics against the known MI of correlated Gaussians, I = −(d/2)·log(1 − ρ²) (an untrained
critic fails the same check); the JSD score increasing with the MI; the worst-case search never
raising the bound and doing nothing at ε = 0; Fano's bound at known points.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from reprlab.core.fit import FitSettings
from reprlab.core.representation import Representation
from reprlab.data import dataset_info, load_tensors
from reprlab.methods import mi
from reprlab.models import build_model

CPU = torch.device("cpu")


class Pairs:
    """(x, z) batches of fixed tensors, reshuffled per epoch (an EpochBatches)."""

    def __init__(self, x: torch.Tensor, z: torch.Tensor, batch_size: int) -> None:
        self.x, self.z, self.batch_size = x, z, batch_size

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def epoch(self, epoch: int):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[index], self.z[index]


def gaussians(n: int, d: int, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)


def true_mi(d: int, rho: float) -> float:
    return -d / 2 * math.log(1 - rho**2)


def trained_estimate(
    estimator: str, d: int, rho: float, *, epochs: int = 10, batch: int = 256, train: bool = True
) -> float:
    torch.manual_seed(0)
    x, z = gaussians(8192, d, rho, 1)
    heldout = list(Pairs(*gaussians(4096, d, rho, 2), batch).epoch(0))
    critic = mi.SeparableCritic(d, d, units=64)
    settings = FitSettings(
        epochs=epochs, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant"
    )
    if train:
        mi.fit_mi(
            critic, Pairs(x, z, batch), settings, estimator=estimator, device=CPU, progress=False
        )
    critic.eval()
    value, _ = mi.estimate(critic, heldout, estimator)
    return value


def log_ratio_scores(x: torch.Tensor, z: torch.Tensor, rho: float) -> torch.Tensor:
    """The optimal critic log p(x, z)/(p(x)p(z)) of 1-d unit Gaussians, for all pairs [n, n]."""
    xi, zj = x[:, None], z[None, :]
    s = 1 - rho**2
    return -0.5 * math.log(s) - (rho**2 * xi**2 - 2 * rho * xi * zj + rho**2 * zj**2) / (2 * s)


def test_bounds_match_independent_loops() -> None:
    torch.manual_seed(0)
    scores = torch.randn(5, 5, 3, dtype=torch.float64)
    n, locs = 5, 3
    dv, js, nce = [], [], []
    for loc in range(locs):
        joint = [float(scores[i, i, loc]) for i in range(n)]
        marg = [float(scores[i, j, loc]) for i in range(n) for j in range(n) if i != j]
        dv.append(sum(joint) / n - math.log(sum(math.exp(t) for t in marg) / len(marg)))
        sp = lambda t: math.log1p(math.exp(t))  # noqa: E731
        js.append(
            2 * math.log(2) - sum(sp(-t) for t in joint) / n - sum(sp(t) for t in marg) / len(marg)
        )
        nce.append(
            sum(
                scores[i, i, loc].item()
                - math.log(sum(math.exp(scores[i, j, loc].item()) for j in range(n)) / n)
                for i in range(n)
            )
            / n
        )
    assert mi.dv_bound(scores).item() == pytest.approx(sum(dv) / locs, abs=1e-5)
    assert mi.jsd_bound(scores).item() == pytest.approx(sum(js) / locs, abs=1e-5)
    assert mi.infonce_bound(scores).item() == pytest.approx(sum(nce) / locs, abs=1e-5)


def test_optimal_critic_gives_the_true_mi() -> None:
    rho = 0.8
    x, z = gaussians(3000, 1, rho, 0)
    scores = log_ratio_scores(x[:, 0], z[:, 0], rho)
    truth = true_mi(1, rho)  # 0.51 nats; the sample's standard error is about 0.02
    assert mi.dv_bound(scores).item() == pytest.approx(truth, rel=0.1)
    assert mi.infonce_bound(scores).item() == pytest.approx(truth, rel=0.1)
    # The bounds ignore a constant shift (DV, InfoNCE) and are lower bounds: a worse critic
    # (scaled scores) gives less.
    assert mi.dv_bound(scores + 3.0).item() == pytest.approx(mi.dv_bound(scores).item(), abs=1e-4)
    assert mi.dv_bound(0.5 * scores).item() < mi.dv_bound(scores).item()


def test_batch_of_one_and_unknown_estimator_are_refused() -> None:
    with pytest.raises(mi.MIConfigError, match="at least 2"):
        mi.dv_bound(torch.zeros(1, 1))
    with pytest.raises(mi.MIConfigError, match="unknown MI estimator"):
        mi.mi_bound(torch.zeros(3, 3), "mine")
    with pytest.raises(mi.MIConfigError, match="eps >= 0"):
        mi.WorstCase(eps=-0.1)


def test_dv_estimate_of_trained_critic_is_within_15_percent_and_untrained_is_not() -> None:
    truth = true_mi(2, 0.8)
    assert trained_estimate("dv", 2, 0.8, epochs=8) == pytest.approx(truth, rel=0.15)
    # The untrained critic (Deep InfoMax's noisy-identity start already scores x·z) fails it.
    assert trained_estimate("dv", 2, 0.8, train=False) < 0.85 * truth


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9, 0.95])
def test_dv_and_infonce_track_the_true_mi(rho: float) -> None:
    truth = true_mi(2, rho)
    assert trained_estimate("dv", 2, rho) == pytest.approx(truth, rel=0.15)
    nce = trained_estimate("infonce", 2, rho)
    assert 0.85 * min(truth, math.log(256)) <= nce <= min(truth, math.log(256)) + 0.05


@pytest.mark.slow
def test_infonce_is_capped_by_log_batch() -> None:
    # d = 4, ρ = 0.95: I = 4.7 nats > log 8 = 2.08; InfoNCE saturates just below log N.
    nce = trained_estimate("infonce", 4, 0.95, batch=8, epochs=4)
    assert 0.85 * math.log(8) <= nce <= math.log(8) + 1e-6


@pytest.mark.slow
def test_jsd_score_increases_with_the_mi() -> None:
    scores = [trained_estimate("jsd", 2, rho, epochs=6) for rho in (0.3, 0.6, 0.8, 0.95)]
    assert all(a < b for a, b in itertools.pairwise(scores)), scores
    assert all(s <= 2 * math.log(2) for s in scores)


# --- the critic's scope: a patch or the whole image ---------------------------------------------


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32×32 images whose four 16×16 quadrants are each dark or bright (plus noise), and z the
    four bits as ±1: I(X; Z) = H(Z) = 4·log 2, but one quadrant carries only log 2 of it."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, 4), generator=g).float()
    x = 0.2 + 0.6 * bits.view(n, 1, 2, 2).repeat_interleave(16, 2).repeat_interleave(16, 3)
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, 2 * bits - 1


def test_global_critic_sees_the_whole_image_and_the_local_one_a_patch() -> None:
    x, z = quadrant_images(2048, 1)
    heldout = list(Pairs(*quadrant_images(1024, 2), 128).epoch(0))
    settings = FitSettings(
        epochs=6, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant"
    )
    estimates = {}
    for scope in mi.CRITIC_SCOPES:
        torch.manual_seed(0)
        critic = mi.DIMCritic((1, 32, 32), 4, units=32, channels=(8, 16), scope=scope)
        history = mi.fit_mi(
            critic, Pairs(x, z, 128), settings, heldout=heldout, device=CPU, progress=False
        )
        estimates[scope] = history[-1]["heldout_mi"]
    truth = 4 * math.log(2)
    # Each local feature's 10-pixel receptive field sees (mostly) one quadrant: about log 2.
    assert estimates["local"] < 0.8, estimates
    # Pooled over the image, the critic reaches most of the 4 bits (a lower bound: never above).
    assert 0.65 * truth < estimates["global"] < truth + 0.1, estimates
    with pytest.raises(mi.MIConfigError, match="critic scope"):
        mi.DIMCritic((1, 32, 32), 4, units=8, channels=(8,), scope="patch")


# --- worst case on a real (tiny) encoder ---------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_and_critic():
    torch.manual_seed(0)
    images, _ = load_tensors("synthetic", "unused", "test", limit=192, seed=0)
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    info = dataset_info("synthetic")
    model = build_model(
        "cnn_small",
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    ).eval()
    critic = mi.DIMCritic(
        x.shape[1:], mi.representation_size(model, "logits"), units=32, channels=(8, 16)
    )
    batches = [x[i : i + 64] for i in range(0, 192, 64)]

    class Loader:
        def __len__(self) -> int:
            return len(batches)

        def epoch(self, e: int):
            return iter(batches)

    mi.fit_mi(
        critic,
        Loader(),
        FitSettings(epochs=3, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant"),
        encoder=model,
        encode=Representation(model, "logits"),
        device=CPU,
        progress=False,
    )
    return model, critic.eval(), batches


def test_worst_case_search_lowers_the_bound_and_is_the_identity_at_eps_zero(
    encoder_and_critic,
) -> None:
    model, critic, batches = encoder_and_critic
    encode = Representation(model, "logits")
    normal, per_batch = mi.estimate(critic, batches, encode=encode)
    worst, worst_batches = mi.estimate(
        critic, batches, encode=encode, search=mi.WorstCase(eps=0.1, step_size=0.03, steps=5)
    )
    assert worst < normal - 0.01
    assert all(w <= v + 1e-5 for w, v in zip(worst_batches, per_batch, strict=True))
    zero, _ = mi.estimate(critic, batches, encode=encode, search=mi.WorstCase(eps=0.0))
    assert zero == pytest.approx(normal, abs=1e-5)
    # The search stays in the ball and the box.
    x = batches[0]
    moved, _ = mi.WorstCase(eps=0.1, step_size=0.03, steps=5)(encode, critic, x)
    assert (moved - x).abs().max() <= 0.1 + 1e-6
    assert moved.min() >= 0 and moved.max() <= 1


def test_fano_bound_known_points() -> None:
    log2, log10 = math.log(2), math.log(10)
    assert mi.fano_bound(0.0, 10) == pytest.approx(log2 / log10)
    assert mi.fano_bound(-1.0, 10) == pytest.approx(log2 / log10)  # negative estimates count as 0
    assert mi.fano_bound(1.0, 10) == pytest.approx((1.0 + log2) / log10)
    assert mi.fano_bound(log10 - log2, 10) == pytest.approx(1.0)
    assert mi.fano_bound(50.0, 10) == 1.0
    # With label entropy H < log k: 1 - (H - I - log 2) / log k.
    assert mi.fano_bound(0.0, 10, entropy=1.0) == pytest.approx(1 - (1.0 - log2) / log10)
    with pytest.raises(mi.MIConfigError):
        mi.fano_bound(0.0, 1)
