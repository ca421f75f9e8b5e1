"""STIR's computation (reprlab.methods.stir): seeds, the IRI search, CKA over the whole set, and the
measure's defining property on networks whose invariances are known by construction."""

from __future__ import annotations

import pytest
import torch
from reference_cka import minibatch_cka
from torch import nn

from reprlab.core.representation import Representation
from reprlab.errors import ReprlabError
from reprlab.methods import stir
from reprlab.models import Classifier, build_model
from reprlab.models.base import Body, StagedNet


class Staged(StagedNet):
    """``rep`` (any module) then a linear ``fc``: a classifier with a representation tap."""

    def __init__(self, rep: nn.Module, width: int) -> None:
        super().__init__()
        self.rep = rep
        self.fc = nn.Linear(width, 3)
        self.stages = (("rep", ("rep",)), ("logits", ("fc",)))


def classifier(rep: nn.Module, width: int, side: int = 8) -> Classifier:
    net = Staged(rep, width)
    body = Body(net=net, stages=net.stages, representation="rep")
    return Classifier("toy", body, mean=[0.0], std=[1.0], image_size=side).eval()


class Mix(nn.Module):
    """A fixed invertible linear map of a representation [n, d]."""

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.eye(d) + 0.5 * torch.randn(d, d, generator=generator))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.matrix


def block_means() -> Classifier:
    """4x4 block averages of an 8x8 image (4 numbers): invariant to any change that keeps every
    block's mean."""
    return classifier(nn.Sequential(nn.AvgPool2d(4), nn.Flatten(1)), 4)


def block_means_mixed() -> Classifier:
    """The same block averages through an invertible linear map: the very same invariances."""
    return classifier(nn.Sequential(nn.AvgPool2d(4), nn.Flatten(1), Mix(4, seed=3)), 4)


def pixels() -> Classifier:
    """The pixels themselves (64 numbers): invariant to nothing."""
    return classifier(nn.Flatten(1), 64)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.25 + 0.5 * torch.rand(64, 1, 8, 8, generator=generator)


# --- seeds ---------------------------------------------------------------------------------------


def test_seed_kinds_are_seeded_images_in_the_box(inputs: torch.Tensor) -> None:
    def draw(kind: str, seed: int = 0) -> torch.Tensor:
        return stir.seed_images(inputs, kind, torch.Generator().manual_seed(seed))

    for kind in stir.SEED_KINDS:
        seeds = draw(kind)
        assert seeds.shape == inputs.shape and seeds.dtype == torch.float32
        assert seeds.min() >= 0 and seeds.max() <= 1
        assert torch.equal(seeds, draw(kind)), kind
    normal = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draw("normal"), normal.clamp(0, 1))  # N(0, 1) per pixel, then the box
    assert not torch.equal(draw("normal", 0), draw("normal", 1))
    shared = draw("shared")
    assert torch.equal(shared, shared[:1].expand_as(shared))
    assert torch.equal(draw("reversed"), inputs.flip(0))
    uniform = draw("uniform")
    assert 0.45 < float(uniform.mean()) < 0.55 and not torch.equal(uniform[0], uniform[1])


def test_an_unknown_seed_kind_is_a_clear_error(inputs: torch.Tensor) -> None:
    with pytest.raises(ReprlabError, match="unknown seed kind 'zeros'"):
        stir.seed_images(inputs, "zeros", None)


# --- the IRI search ------------------------------------------------------------------------------


def test_iris_match_the_reference_representation(inputs: torch.Tensor) -> None:
    model = build_model("cnn_small", num_classes=10, in_channels=1, image_size=8, mean=[0.5],
                        std=[0.25])  # fmt: skip
    model.eval()
    seeds = stir.seed_images(inputs, "normal", torch.Generator().manual_seed(1))
    found = stir.find_iris(model, "fc1", inputs, seeds, steps=60, step_size=0.5, batch_size=64)
    assert found.x_prime.shape == inputs.shape
    assert found.x_prime.min() >= 0 and found.x_prime.max() <= 1
    # The reported distances are those of the returned images, recomputed independently.
    with torch.no_grad():
        target = model.features(inputs, ["fc1"])["fc1"]
        reached = model.features(found.x_prime, ["fc1"])["fc1"]
        start = model.features(seeds, ["fc1"])["fc1"]
    expected = (reached - target).norm(dim=1) / target.norm(dim=1)
    torch.testing.assert_close(found.distance, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        found.seed_distance, (start - target).norm(dim=1) / target.norm(dim=1)
    )
    # Keep-best never returns worse than the seed, and the search makes real progress.
    assert (found.distance <= found.seed_distance + 1e-6).all()
    assert float(found.distance.median()) < 0.3 * float(found.seed_distance.median())
    # No parameter was touched or given a gradient; the model is still in eval mode.
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def dead_at_zero() -> Classifier:
    """ReLU(W x - 0.1) with W > 0: every unit is active on the inputs and dead on a black seed."""
    linear = nn.Linear(64, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(16, 64, generator=torch.Generator().manual_seed(5)) / 32)
        linear.bias.fill_(-0.1)
    return classifier(nn.Sequential(nn.Flatten(1), linear, nn.ReLU()), 16)


def test_fake_relu_lets_the_search_revive_dead_units(inputs: torch.Tensor) -> None:
    model = dead_at_zero()
    black = torch.zeros_like(inputs)
    true_gradient = stir.find_iris(model, "rep", inputs, black, steps=30, batch_size=64)
    fake = stir.find_iris(model, "rep", inputs, black, steps=30, batch_size=64, fake_relu=True)
    # From a seed where every unit is dead the true gradient is zero: the search cannot move.
    torch.testing.assert_close(true_gradient.x_prime, black)
    torch.testing.assert_close(true_gradient.distance, torch.ones(len(inputs)))
    # fake_relu passes gradient through the dead units and the search gets close...
    assert float(fake.distance.max()) < 0.2
    # ...and its distances are those of the true model (values unchanged), recomputed here.
    with torch.no_grad():
        target = model.features(inputs, ["rep"])["rep"]
        reached = model.features(fake.x_prime, ["rep"])["rep"]
    torch.testing.assert_close(
        fake.distance, (reached - target).norm(dim=1) / target.norm(dim=1), rtol=1e-4, atol=1e-6
    )
    # The model's ReLU is itself again afterwards.
    assert "forward" not in model.net.rep[2].__dict__


def test_the_authors_rule_uses_fake_relu_except_for_vgg_and_inception() -> None:
    assert stir.authors_fake_relu("resnet18") and stir.authors_fake_relu("cnn_small")
    assert stir.authors_fake_relu("resnet20_mini")
    assert not stir.authors_fake_relu("vgg16") and not stir.authors_fake_relu("inception_v3")


def test_iris_do_not_depend_on_the_batching(inputs: torch.Tensor) -> None:
    model = block_means_mixed()
    seeds = stir.seed_images(inputs, "uniform", torch.Generator().manual_seed(2))
    whole = stir.find_iris(model, "rep", inputs, seeds, steps=15, batch_size=64)
    pieces = stir.find_iris(model, "rep", inputs, seeds, steps=15, batch_size=7)
    torch.testing.assert_close(whole.x_prime, pieces.x_prime, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.distance, pieces.distance, rtol=1e-5, atol=1e-7)


def test_bf16_search_keeps_float32_iterates(inputs: torch.Tensor) -> None:
    model = block_means()
    seeds = stir.seed_images(inputs, "normal", torch.Generator().manual_seed(0))
    found = stir.find_iris(model, "rep", inputs, seeds, steps=20, precision="bf16")
    assert found.x_prime.dtype == torch.float32 and found.distance.dtype == torch.float32
    assert float(found.distance.median()) < 0.1


# --- CKA over the whole set ----------------------------------------------------------------------


def test_linear_cka_matches_the_independent_float64_computation() -> None:
    generator = torch.Generator().manual_seed(1337)
    a = torch.randn(90, 12, generator=generator)
    b = a @ torch.randn(12, 7, generator=generator) + torch.randn(90, 7, generator=generator)
    exact = stir.linear_cka(a, b, estimator="exact")
    assert exact == pytest.approx(minibatch_cka([a.numpy()], [b.numpy()], unbiased=False), abs=1e-9)
    batched = stir.linear_cka(a, b, estimator="minibatch", batch_size=30)
    pieces = [(a[i : i + 30].numpy(), b[i : i + 30].numpy()) for i in range(0, 90, 30)]
    reference = minibatch_cka([p for p, _ in pieces], [q for _, q in pieces], unbiased=True)
    assert batched == pytest.approx(reference, abs=1e-9)
    with pytest.raises(ReprlabError, match="constant"):
        stir.linear_cka(a, torch.ones(90, 3))


# --- the measure ---------------------------------------------------------------------------------


def iris_of(model: Classifier, x: torch.Tensor, steps: int = 200, step: float = 0.02):
    seeds = stir.seed_images(x, "uniform", torch.Generator().manual_seed(4))
    return stir.find_iris(model, "rep", x, seeds, steps=steps, step_size=step).x_prime


def test_stir_is_one_for_shared_invariances_and_asymmetric_otherwise(inputs) -> None:
    """Block means are invariant to within-block changes; pixels to nothing (Nanda et al.'s
    asymmetry): every invariance of the pixel model is shared by the block model, so STIR(block
    | pixels) ≈ 1, but the block model's IRIs differ from X within blocks, which the pixel model
    sees: STIR(pixels | block) is at the chance level of unrelated inputs. A model with exactly
    the block model's invariances (the same means, linearly mixed) shares them all: STIR ≈ 1, as
    is STIR(m | m)."""
    blocks, mixed, pixel = block_means(), block_means_mixed(), pixels()
    from_blocks = iris_of(blocks, inputs)
    from_pixels = iris_of(pixel, inputs)
    assert stir.stir(blocks, "rep", inputs, from_blocks) > 0.999  # STIR(m | m)
    assert stir.stir(mixed, "rep", inputs, from_blocks) > 0.999  # the same invariances
    assert stir.stir(blocks, "rep", inputs, from_pixels) > 0.999  # pixel IRIs ≈ X
    # The unoptimised seeds are the baseline: for pixels, the biased CKA of unrelated inputs
    # (about sqrt(pq / ((n + p)(n + q))) = 0.5 with n = p = q = 64); block means see far less.
    seeds = stir.seed_images(inputs, "uniform", torch.Generator().manual_seed(4))
    chance = stir.stir(pixel, "rep", inputs, seeds)
    assert 0.4 < chance < 0.6 and stir.stir(blocks, "rep", inputs, seeds) < 0.2
    low = stir.stir(pixel, "rep", inputs, from_blocks)
    assert low < chance + 0.05, (low, chance)


def test_stir_reuses_given_features(inputs: torch.Tensor) -> None:
    model = block_means_mixed()
    prime = iris_of(model, inputs, steps=30)
    features = Representation(model, "rep").encode_all(inputs)
    given = stir.stir(model, "rep", inputs, prime, features_x=features)
    assert given == stir.stir(model, "rep", inputs, prime)
