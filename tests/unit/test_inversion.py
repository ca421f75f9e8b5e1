"""Inversion computations on models whose inverse is known, and the fake_relu option of the tap.

The known-inverse model is a :class:`~reprlab.models.Classifier` whose representation is an
orthogonal map of the pixels, R(x) = Q·vec(x): every optimisation then has a closed-form answer
in pixel space (the target itself; the point of the segment source→target at distance ε; the box
corner of the signs of a row of Q; ...), which the tests compare against.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reprlab.core.representation import Representation
from reprlab.core.taps import fake_relu, last_relu
from reprlab.errors import ReprlabError
from reprlab.methods import inversion
from reprlab.models import Body, Classifier, build_model

SIDE = 6
D = SIDE * SIDE


def orthogonal_model(seed: int = 0) -> Classifier:
    """R(x) = Q·vec(x) at tap ``code`` (Q a random orthogonal D×D matrix); identity normaliser."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    linear = nn.Linear(D, D, bias=False)
    linear.weight.data = q.float()
    net = nn.Sequential(nn.Flatten(1), linear, nn.Linear(D, 3))
    body = Body(net=net, stages=(("code", ("0", "1")), ("logits", ("2",))), representation="code")
    return Classifier("orthogonal", body, [0.0], [1.0], image_size=SIDE).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(n, 1, SIDE, SIDE, generator=generator)


@pytest.fixture(scope="module")
def ortho() -> Representation:
    return Representation(orthogonal_model(), "code")


# --- each optimisation against its known answer --------------------------------------------------


def test_inversion_recovers_the_target_of_an_orthogonal_representation(ortho):
    targets = _images(4, 1)
    seeds = inversion.noise_seeds(targets.shape, generator=torch.Generator().manual_seed(2))
    assert seeds.min() >= 0.0 and seeds.max() <= 1.0
    assert abs(seeds.mean().item() - 0.5) < 0.02 and abs(seeds.std().item() - 0.05) < 0.01
    step = 0.02
    result = inversion.invert(ortho, targets, seeds, steps=400, step_size=step, trace=True)
    # ‖R(x) − R(t)‖ = ‖x − t‖: the steps walk straight at t, keep-best ends within half a step.
    assert (inversion.pixel_l2(result.x, targets) <= step / 2 + 1e-5).all()
    expected = inversion.pixel_l2(result.x, targets) / targets.flatten(1).norm(dim=1)
    assert torch.allclose(result.value, expected, atol=1e-5)
    assert result.trace.shape == (401, 4) and (result.trace[-1] >= result.value - 1e-6).all()
    assert (inversion.ssim(result.x, targets) > 0.99).all()


def test_distance_curve_reaches_the_closest_point_of_the_ball(ortho):
    sources, targets = _images(3, 3), _images(3, 4)
    gap = inversion.pixel_l2(sources, targets)
    radii = [0.25 * gap.min().item(), 0.5 * gap.min().item(), 2 * gap.max().item()]
    curve = inversion.distance_curve(
        ortho, sources, targets, radii, steps=300, step_fraction=0.01, keep=[radii[0]]
    )
    norm = targets.flatten(1).norm(dim=1)
    assert torch.allclose(curve.start, gap / norm, atol=1e-5)
    for row, radius in enumerate(radii):
        # The minimiser over ball ∩ box is the point of the segment at distance min(ε, gap).
        expected = (gap - radius).clamp(min=0) / norm
        assert torch.allclose(curve.distance[row], expected, atol=0.01 * radius / norm.min() + 1e-4)
    moved = inversion.pixel_l2(curve.images[radii[0]], sources)
    assert (moved <= radii[0] + 1e-5).all() and (moved >= 0.9 * radii[0]).all()
    assert curve.distance.shape == (3, 3) and (curve.distance[0] > curve.distance[1]).all()
    with pytest.raises(ValueError, match="> 0"):
        inversion.distance_curve(ortho, sources, targets, [0.0], steps=1, step_fraction=0.1)


def test_feature_visualisation_reaches_the_box_corner_of_the_row(ortho):
    q = ortho.model.net[1].weight.detach()
    coordinates = torch.tensor([0, 7, 35])
    starts = torch.full((3, 1, SIDE, SIDE), 0.5)
    result = inversion.visualise_features(ortho, coordinates, starts, steps=300, step_size=0.05)
    # max over the box of q_j · x is attained at x = 1[q_j > 0]: the sum of the positive weights.
    optimum = q[coordinates].clamp(min=0).sum(dim=1)
    # Box clamping leaves the small-weight pixels slow (the step is normalised over all of them).
    assert (result.value <= optimum + 1e-5).all() and (result.value >= 0.98 * optimum).all()
    corner = (q[coordinates] > 0).float().view(3, 1, SIDE, SIDE)
    clear = q[coordinates].abs().view(3, 1, SIDE, SIDE) > 0.1
    assert (result.x - corner)[clear].abs().max() < 0.05


def test_feature_manipulation_stops_at_the_first_success(ortho):
    images = _images(3, 5)
    codes = ortho.encode(images)
    lowest = codes.argmin(dim=1)
    largest = codes.argmax(dim=1)
    coordinates = torch.cat([lowest, largest])
    batch = torch.cat([images, images])
    step = 0.01
    result = inversion.manipulate_features(ortho, batch, coordinates, steps=2000, step_size=step)
    after = ortho.encode(result.x)
    assert result.success.all()
    assert (after.argmax(dim=1) == coordinates).all()
    assert result.already.tolist() == [False] * 3 + [True] * 3
    moved = inversion.pixel_l2(result.x, batch)
    assert (moved[3:] == 0).all()  # already the largest: never moved
    # Frozen at its first success: one step earlier it was not yet the largest coordinate, so the
    # coordinate's lead is less than the change one step can make (at most 2·step in R).
    top2 = after[:3].topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) <= 2 * step + 1e-5).all()


def test_interpolation_of_an_orthogonal_representation_is_the_pixel_interpolation(ortho):
    first, second = _images(2, 6), _images(2, 7)
    lambdas = [i / 9 for i in range(10)]
    result = inversion.interpolate(ortho, first, second, lambdas, steps=5, step_size=0.01)
    weights = torch.tensor(lambdas).view(1, 10, 1, 1, 1)
    pixels = ((1 - weights) * first.unsqueeze(1) + weights * second.unsqueeze(1)).flatten(0, 1)
    # Q is linear, so the pixel interpolation (the start) is the exact preimage: distance ~0.
    assert result.x.shape == (20, 1, SIDE, SIDE)
    assert (result.value < 1e-5).all()
    assert torch.allclose(result.x, pixels, atol=1e-5)


def test_partners_are_of_another_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 0])
    partners = inversion.different_class_partners(labels)
    assert (labels[partners] != labels).all()
    assert partners.tolist() == [2, 2, 3, 5, 5, 2]
    with pytest.raises(ValueError, match="two classes"):
        inversion.different_class_partners(torch.tensor([1, 1, 1]))


def test_top_activating_and_most_variable():
    acts = torch.tensor([[0.0, 5.0, 1.0], [3.0, 5.0, 0.0], [1.0, 5.0, 2.0], [2.0, 5.0, -4.0]])
    top, bottom = inversion.top_activating(acts, [0, 2], k=2)
    assert top.tolist() == [[1, 3], [2, 0]] and bottom.tolist() == [[0, 2], [3, 1]]
    assert inversion.most_variable(acts, 2) == [2, 0]


def test_ssim_is_one_for_identical_images_and_handles_small_images():
    x = _images(3, 8)
    assert torch.allclose(inversion.ssim(x, x), torch.ones(3), atol=1e-5)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (inversion.ssim(noisy, x) < 0.9).all()


# --- fake_relu ----------------------------------------------------------------------------------


def _cnn() -> Classifier:
    torch.manual_seed(0)
    return build_model(
        "cnn_small", num_classes=10, in_channels=1, image_size=12, mean=[0.5], std=[0.25]
    ).eval()


def test_fake_relu_keeps_values_and_passes_gradient_through_the_last_relu():
    model = _cnn()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    info = last_relu(model, "fc1")
    assert info.name == "fc1.1"
    plain = Representation(model, model.representation_tap)(x)
    faked = Representation(model, model.representation_tap, fake_relu=True)(x)
    assert torch.equal(plain, faked)
    # With fake_relu, dR/dx is the gradient of the pre-activation (the Linear's output, fc1.0).
    weights = torch.randn(plain.shape[1], generator=torch.Generator().manual_seed(1))

    def gradient(fn) -> torch.Tensor:
        inputs = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((fn(inputs) * weights).sum(), inputs)
        return g

    through = gradient(lambda v: Representation(model, model.representation_tap, fake_relu=True)(v))
    pre = gradient(lambda v: model.features(v, ["fc1.0"], detach=False)["fc1.0"])
    dead = gradient(lambda v: Representation(model, model.representation_tap)(v))
    assert torch.allclose(through, pre, atol=1e-6)
    assert not torch.allclose(through, dead, atol=1e-6)  # some units are dead at random init
    module = model.net.get_submodule("fc1.1")
    assert "forward" not in module.__dict__  # restored


def test_fake_relu_replaces_only_the_last_call_of_a_reused_relu():
    """torchvision's BasicBlock calls one in-place ReLU twice; only the second call changes."""
    torch.manual_seed(0)
    model = build_model(
        "tv_resnet18", num_classes=4, in_channels=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3
    ).eval()
    info = last_relu(model, "pool")
    assert (info.module, info.call) == ("layer4.1.relu", 2)
    block = model.net.get_submodule("layer4.1")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def reference_block(h: torch.Tensor) -> torch.Tensor:  # torchvision's forward, by hand
        out = torch.relu(block.bn1(block.conv1(h)))
        out = block.bn2(block.conv2(out)) + h
        return out + (torch.relu(out) - out).detach()  # straight-through final ReLU

    def gradient(fake: bool, by_hand: bool) -> torch.Tensor:
        inputs = x.clone().requires_grad_(True)
        if by_hand:
            h = model.front(inputs, "layer4.0")
            rep = model.net.get_submodule("avgpool")(reference_block(h)).flatten(1)
        else:
            rep = Representation(model, model.representation_tap, fake_relu=fake)(inputs)
        (g,) = torch.autograd.grad(rep.sum(), inputs)
        return g

    faked, by_hand, plain = gradient(True, False), gradient(False, True), gradient(False, False)
    assert torch.allclose(faked, by_hand, atol=1e-5)
    assert not torch.allclose(faked, plain, atol=1e-5)
    with fake_relu(model):
        model(x)  # a full forward pass counts the calls afresh
        with torch.no_grad():
            assert torch.equal(model(x), model.back(model.front(x, "pool"), "pool"))
    assert "forward" not in model.net.get_submodule("layer4.1.relu").__dict__


def test_fake_relu_is_refused_where_no_relu_precedes_the_tap():
    with pytest.raises(ReprlabError, match="no ReLU module"):
        last_relu(orthogonal_model(), "code")
    with pytest.raises(ReprlabError, match="fake_relu=false"):
        Representation(_cnn(), "conv1.0", fake_relu=True)(torch.rand(1, 1, 12, 12))


def test_representation_dim():
    assert Representation(_cnn(), "fc1").dim == 128
    assert math.prod((1, SIDE, SIDE)) == Representation(orthogonal_model(), "code").dim
