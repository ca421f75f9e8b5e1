"""PGD (reprlab.core.attacks) against a small CNN trained here on a generated, learnable image task.

The task: 10 classes, each a fixed random binary 1×16×16 template (pixel values 0.35 or 0.65)
plus Gaussian noise (σ = 0.3), clamped to [0, 1]. A two-conv CNN learns it to ~99% in well under a
second; an L∞ attack of ε = 0.05 roughly halves its accuracy and ε = 0.1 breaks it.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.attacks import PGD, AttackConfigError, robust_accuracy, sample_start
from reprlab.errors import ReprlabError
from reprlab.models.base import Body, Classifier, sequential_stages

NUM_CLASSES = 10
SHAPE = (1, 16, 16)
PIXELS = 16 * 16


def _make_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    templates_rng = torch.Generator().manual_seed(1234)
    templates = 0.35 + 0.3 * (torch.rand(NUM_CLASSES, *SHAPE, generator=templates_rng) > 0.5)
    rng = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=rng)
    x = (templates[y] + 0.3 * torch.randn(n, *SHAPE, generator=rng)).clamp(0.0, 1.0)
    return x, y


def _tiny_cnn() -> Classifier:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 4, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, NUM_CLASSES),
    )
    stages = sequential_stages(net, {"hidden": "7", "logits": "8"})
    body = Body(net=net, stages=stages, representation="hidden")
    return Classifier("tiny_cnn", body, mean=[0.5], std=[0.25], image_size=16)


@pytest.fixture(scope="module")
def model() -> Classifier:
    """The trained CNN, in eval mode, parameters' .grad None."""
    x, y = _make_task(3000, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        classifier = _tiny_cnn()
        optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
        for _ in range(3):
            for batch in torch.randperm(len(x)).split(100):
                loss = F.cross_entropy(classifier(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    classifier.zero_grad(set_to_none=True)
    return classifier.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """1000 held-out examples: one example is 0.1 points of accuracy."""
    return _make_task(1000, seed=2)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hidden(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The penultimate representation [n, 32] (output of the ReLU after the first linear)."""
    return model.net[:8](model.normalize(x))


def _linf(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).abs().amax(dim=1)


def _l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


# --- an independent reference: Madry et al.'s update rule, written out ---------------------------


def _reference_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Last iterate of PGD on the summed cross-entropy, x_{t+1} = Π(x_t + α · direction(∇)).

    Π for L∞ clamps each pixel to [max(0, x - ε), min(1, x + ε)] (the exact projection onto the
    cube ∩ box); for L2 it rescales δ with ``torch.renorm`` and then clamps to [0, 1]. The random
    start replays the recipe documented in :func:`reprlab.core.attacks.sample_start`.
    """
    x_adv = x.clone()
    if generator is not None:
        if norm == "linf":
            x_adv = x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)
        else:
            gaussian = torch.randn(x.shape, generator=generator)
            radius = eps * torch.rand(len(x), generator=generator) ** (1 / x[0].numel())
            unit = gaussian / gaussian.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x_adv = x + radius.view(-1, 1, 1, 1) * unit
        x_adv = x_adv.clamp(0, 1)
    lower, upper = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        F.cross_entropy(model(x_adv), y, reduction="sum").backward()
        gradient = x_adv.grad
        with torch.no_grad():
            if norm == "linf":
                x_adv = torch.min(torch.max(x_adv + step_size * gradient.sign(), lower), upper)
            else:
                g_norm = gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                stepped = x_adv + step_size * gradient / (g_norm + 1e-12)
                delta = (stepped - x).renorm(p=2, dim=0, maxnorm=eps)
                x_adv = (x + delta).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return x_adv.detach()


# --- the attack works and agrees with the reference ----------------------------------------------


def test_model_learns_the_task(model, data):
    assert _accuracy(model, *data) >= 0.95


def test_pgd_breaks_the_model_where_random_noise_of_the_same_size_does_not(model, data):
    x, y = data
    eps = 0.1
    corners = x + eps * torch.randint(0, 2, x.shape, generator=_seeded()).mul(2).sub(1)
    assert _accuracy(model, corners.clamp(0, 1), y) >= 0.9
    x_adv = PGD(eps=eps, step_size=0.025, steps=10)(model, x, y, generator=_seeded())
    assert _accuracy(model, x_adv, y) <= 0.05


@pytest.mark.parametrize(
    ("norm", "eps", "random_start"),
    [("linf", 0.05, False), ("linf", 0.05, True), ("l2", 0.5, False), ("l2", 0.5, True)],
)
@pytest.mark.parametrize("keep_best", [False, True])
def test_robust_accuracy_matches_reference_pgd(model, data, norm, eps, random_start, keep_best):
    x, y = data
    step_size, steps = eps / 4, 10
    reference = _reference_pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        step_size=step_size,
        steps=steps,
        generator=_seeded(7) if random_start else None,
    )
    attack = PGD(norm, eps, step_size, steps, random_start=random_start, keep_best=keep_best)
    ours = attack(model, x, y, generator=_seeded(7))
    reference_accuracy = _accuracy(model, reference, y)
    assert 0.2 < reference_accuracy < 0.8  # a regime where a wrong attack would show
    assert abs(_accuracy(model, ours, y) - reference_accuracy) <= 0.005
    if not keep_best:  # same start and rule: the same points, up to rounding grown over 10 steps
        assert (ours - reference).abs().amax() <= 1e-3


def test_random_start_is_replayed_by_the_generator(model, data):
    x, y = data
    attack = PGD(eps=0.05, step_size=0.0125, steps=3)
    assert torch.equal(
        attack(model, x, y, generator=_seeded(3)), attack(model, x, y, generator=_seeded(3))
    )
    assert not torch.equal(
        attack(model, x, y, generator=_seeded(3)), attack(model, x, y, generator=_seeded(4))
    )


# --- monotonicity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "grid"),
    [("linf", [0.0, 0.02, 0.04, 0.06, 0.1]), ("l2", [0.0, 0.25, 0.5, 0.75, 1.0])],
)
def test_robust_accuracy_does_not_increase_with_eps(model, data, norm, grid):
    # Tolerance 0.3 points (3 of 1000 examples): runs at different ε follow different trajectories,
    # so PGD, a local search, may find an adversarial example at ε and miss it at a larger ε.
    x, y = data
    accuracies = [
        robust_accuracy(model, [data], PGD(norm, eps, eps / 4 or 1.0, 10), generator=_seeded())
        for eps in grid
    ]
    assert accuracies[0] == pytest.approx(_accuracy(model, x, y))
    assert all(later <= earlier + 0.003 for earlier, later in itertools.pairwise(accuracies))
    assert accuracies[-1] < accuracies[0] - 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_does_not_increase_with_steps(model, data, norm):
    # Tolerance 0: with the same start, the K-step trajectory is a prefix of the K'-step one, so
    # keep-best (which ranks misclassified iterates first) chooses from a superset of candidates.
    eps = 0.03 if norm == "linf" else 0.3
    accuracies = [
        robust_accuracy(model, [data], PGD(norm, eps, eps / 4, steps), generator=_seeded())
        for steps in [0, 1, 3, 10]
    ]
    assert all(later <= earlier for earlier, later in itertools.pairwise(accuracies))
    assert accuracies[-1] < accuracies[0] - 0.05


@pytest.mark.parametrize("keep_best", [False, True])
def test_restarts_fool_exactly_the_union_of_their_single_runs(model, data, keep_best):
    # Restarts draw their starts one after another from the generator, and an iterate that fools
    # the model ranks first, so R restarts fool every example that any of R single runs (drawing
    # the same starts) fools: never worse than one run, and strictly better here.
    x, y = data
    options = {"eps": 0.05, "step_size": 0.025, "steps": 3, "keep_best": keep_best}
    generator = _seeded(5)
    with torch.no_grad():
        fooled_by_each = [
            model(PGD(**options)(model, x, y, generator=generator)).argmax(1) != y for _ in range(4)
        ]
        restarted = PGD(**options, restarts=4)(model, x, y, generator=_seeded(5))
        fooled_by_restarts = model(restarted).argmax(1) != y
    assert torch.equal(fooled_by_restarts, torch.stack(fooled_by_each).any(dim=0))
    assert fooled_by_restarts.sum() >= fooled_by_each[0].sum() + 10


# --- the constraints -----------------------------------------------------------------------------


@pytest.mark.parametrize(("eps", "steps"), [(0.0, 10), (0.1, 0)])
def test_zero_eps_or_zero_steps_changes_nothing(model, data, eps, steps):
    x, y = data
    x_in = x.clone().requires_grad_(True)
    for norm in ("linf", "l2"):
        x_adv = PGD(norm, eps, 0.01, steps)(model, x_in, y)
        assert torch.equal(x_adv, x) and not x_adv.requires_grad


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("keep_best", [False, True])
def test_every_perturbation_stays_in_the_ball_and_the_box(model, data, norm, eps, keep_best):
    x, y = data
    distance = _linf if norm == "linf" else _l2
    # Steps far larger than ε make every step overshoot, so the projection does the work.
    attack = PGD(norm, eps, step_size=3 * eps, steps=5, keep_best=keep_best)
    x_adv = attack(model, x, y, generator=_seeded())
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert distance(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert distance(x_adv - x).max() >= 0.99 * eps  # the attack does use its budget


def test_l2_random_start_is_uniform_in_the_ball_not_on_its_sphere():
    eps, n = 0.5, 4000
    delta = sample_start(torch.zeros(n, *SHAPE), "l2", eps, _seeded())
    radius = _l2(delta)
    assert radius.max() <= eps * (1 + 1e-6)
    # Uniform in the d-ball <=> (r / ε)^d ~ U(0, 1); on the sphere it would be 1 for every sample.
    volume_fraction = (radius / eps).double() ** PIXELS
    assert abs(volume_fraction.mean().item() - 0.5) < 0.03
    assert abs((volume_fraction < 0.5).double().mean().item() - 0.5) < 0.03
    assert delta.mean(dim=0).abs().max() < 0.01  # no preferred direction


def test_linf_random_start_is_uniform_in_the_cube():
    eps = 0.1
    delta = sample_start(torch.zeros(1000, *SHAPE), "linf", eps, _seeded())
    assert delta.abs().max() <= eps
    assert abs(delta.abs().mean().item() / eps - 0.5) < 0.01  # |U(-ε, ε)| has mean ε / 2
    assert abs(delta.mean().item()) < 0.01 * eps


# --- targeted, keep-best, custom objectives ------------------------------------------------------


def test_targeted_attack_raises_the_target_class_rate(model, data):
    x, y = data
    target = (y + 1) % NUM_CLASSES
    x_adv = PGD(eps=0.1, step_size=0.02, steps=20, targeted=True)(model, x, target)
    with torch.no_grad():
        before = (model(x).argmax(1) == target).float().mean()
        after = (model(x_adv).argmax(1) == target).float().mean()
    assert before < 0.02 and after > 0.7


def test_keep_best_returns_an_iterate_at_least_as_good_as_the_last(model, data):
    x, y = data
    # A step as large as ε makes the last iterate oscillate, so the best one often differs.
    options = {"eps": 0.04, "step_size": 0.04, "steps": 6, "random_start": False}
    best = PGD(**options, keep_best=True)(model, x, y)
    last = PGD(**options, keep_best=False)(model, x, y)
    with torch.no_grad():
        best_logits, last_logits = model(best), model(last)
    best_fooled, last_fooled = best_logits.argmax(1) != y, last_logits.argmax(1) != y
    best_loss = F.cross_entropy(best_logits, y, reduction="none")
    last_loss = F.cross_entropy(last_logits, y, reduction="none")
    assert torch.all(best_fooled >= last_fooled)
    same = best_fooled == last_fooled
    assert torch.all(best_loss[same] >= last_loss[same] - 1e-5)
    assert best_fooled.sum() > last_fooled.sum() or (best_loss > last_loss + 1e-3).any()


def test_custom_objective_increases_representation_distance(model, data):
    x, _ = data
    clean_features = _hidden(model, x).detach()

    def distance(x_adv: torch.Tensor) -> torch.Tensor:
        return (_hidden(model, x_adv) - clean_features).norm(dim=1)

    eps = 0.05
    options = {"eps": eps, "step_size": eps / 4, "steps": 10}
    best = PGD(**options)(model, x, objective=distance, generator=_seeded())
    last = PGD(**options, keep_best=False)(model, x, objective=distance, generator=_seeded())
    noise = (x + sample_start(x, "linf", eps, _seeded(1))).clamp(0, 1)
    with torch.no_grad():
        best_distance, last_distance = distance(best), distance(last)
        noise_distance = distance(noise)
    assert best_distance.mean() > 3 * noise_distance.mean()
    assert torch.all(best_distance >= last_distance - 1e-5)


def test_targeted_custom_objective_is_minimised(model, data):
    x, _ = data
    goal = _hidden(model, x.roll(1, dims=0)).detach()  # each image's neighbour's representation

    def distance_to_goal(x_adv: torch.Tensor) -> torch.Tensor:
        return (_hidden(model, x_adv) - goal).norm(dim=1)

    attack = PGD(norm="l2", eps=1.0, step_size=0.25, steps=10, targeted=True)
    x_adv = attack(model, x, objective=distance_to_goal, generator=_seeded())
    with torch.no_grad():
        assert distance_to_goal(x_adv).mean() < 0.7 * distance_to_goal(x).mean()


# --- side effects: modes, parameter gradients, grad-mode, autocast -------------------------------


@pytest.mark.parametrize(
    ("model_mode", "caller_training"),
    [("eval", True), ("train", False), ("keep", False), ("keep", True)],
)
def test_attack_applies_its_mode_and_restores_the_callers(model, data, model_mode, caller_training):
    x, y = data
    subject = copy.deepcopy(model).train(caller_training)
    subject.net[0].train(not caller_training)  # a mixed state must come back as it was
    modes_before = [module.training for module in subject.modules()]
    buffers_before = [b.clone() for b in subject.buffers()]
    PGD(eps=0.05, step_size=0.01, steps=2, model_mode=model_mode)(subject, x[:200], y[:200])
    assert [module.training for module in subject.modules()] == modes_before
    # BatchNorm's running statistics (and batch counts) are restored whatever the mode, so a
    # later radius of a sweep is evaluated on the same model.
    assert all(torch.equal(a, b) for a, b in zip(subject.buffers(), buffers_before, strict=True))


def test_train_mode_attack_uses_batch_statistics(model, data):
    """The restored buffers are not a sign of an eval-mode attack: train mode normalises each
    batch with its own statistics, which gives different adversarial examples."""
    x, y = data[0][:200], data[1][:200]
    subject = copy.deepcopy(model)
    with torch.no_grad():  # running statistics far from the batch's
        subject.net[1].running_mean.add_(3.0)
    attack = PGD(eps=0.05, step_size=0.01, steps=3, random_start=False)
    in_eval = attack(subject, x, y)
    in_train = PGD(eps=0.05, step_size=0.01, steps=3, random_start=False, model_mode="train")(
        subject, x, y
    )
    assert not torch.equal(in_eval, in_train)


def test_no_parameter_accumulates_gradients(model, data):
    x, y = data
    subject = copy.deepcopy(model)
    assert all(parameter.grad is None for parameter in subject.parameters())
    PGD(norm="l2", eps=0.5, step_size=0.1, steps=3, restarts=2)(subject, x[:200], y[:200])
    assert all(parameter.grad is None for parameter in subject.parameters())


def test_attack_works_inside_no_grad_and_returns_a_detached_tensor(model, data):
    x, y = data
    with torch.no_grad():
        x_adv = PGD(eps=0.1, step_size=0.025, steps=10)(model, x[:200], y[:200])
    assert not x_adv.requires_grad
    assert _accuracy(model, x_adv, y[:200]) <= 0.05


def test_attack_under_bfloat16_autocast_keeps_float32_inputs(model, data):
    x, y = data[0][:300], data[1][:300]
    attack = PGD(eps=0.05, step_size=0.0125, steps=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(model, x, y, generator=_seeded())
    assert x_adv.dtype == torch.float32
    assert _linf(x_adv - x).max() <= 0.05 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    full_precision = attack(model, x, y, generator=_seeded())
    assert abs(_accuracy(model, x_adv, y) - _accuracy(model, full_precision, y)) <= 0.05


# --- robust_accuracy -----------------------------------------------------------------------------


def test_robust_accuracy_without_attack_is_clean_accuracy_and_batching_does_not_matter(model, data):
    x, y = data
    assert robust_accuracy(model, [data]) == pytest.approx(_accuracy(model, x, y))
    attack = PGD(eps=0.05, step_size=0.0125, steps=5, random_start=False)
    whole = robust_accuracy(model, [data], attack)
    in_batches = robust_accuracy(model, zip(x.split(250), y.split(250), strict=True), attack)
    assert abs(whole - in_batches) <= 0.002
    assert whole < _accuracy(model, x, y) - 0.2


def test_robust_accuracy_restores_mode(model, data):
    subject = copy.deepcopy(model).train()
    robust_accuracy(subject, [(data[0][:100], data[1][:100])], PGD(steps=1))
    assert all(module.training for module in subject.modules())


# --- user and programming errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"eps": -0.1},
        {"eps": float("nan")},
        {"norm": "l1"},
        {"steps": -1},
        {"restarts": 0},
        {"restarts": 2, "random_start": False},
        {"step_size": 0.0},
        {"model_mode": "inference"},
    ],
)
def test_invalid_settings_are_rejected_with_a_user_error(options):
    with pytest.raises(AttackConfigError) as error:
        PGD(**options)
    assert isinstance(error.value, ValueError) and isinstance(error.value, ReprlabError)
    assert "\n" not in str(error.value)


def test_misuse_raises(model, data):
    x, _ = data
    with pytest.raises(ValueError, match="needs labels"):
        PGD()(model, x)
    with pytest.raises(ValueError, match="one value per example"):
        PGD()(model, x, objective=lambda x_adv: model(x_adv).sum())
    with pytest.raises(ReprlabError, match="untargeted"):
        robust_accuracy(model, [data], PGD(targeted=True))
    with pytest.raises(ReprlabError, match="no examples"):
        robust_accuracy(model, [])
