"""Layer-by-layer CKA streamed from models: structure, exactness, copies, modes, inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from reference_cka import cka_matrix
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.methods.layerwise import Member, joint_layer_cka, layer_cka, tap_features
from reprlab.methods.similarity import MinibatchCKA, cka
from reprlab.models.base import Body, Classifier, sequential_stages

TAPS = ["conv1", "bn1", "relu1", "conv2", "relu2", "pool", "logits"]


def _toy_model(seed: int) -> Classifier:
    """A small conv net on 1x8x8 images with BatchNorm and an in-place ReLU after it."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(8, 3),
    )
    stages = sequential_stages(net, {name: str(i) for i, name in enumerate(TAPS)})
    body = Body(net=net, stages=stages, representation="pool")
    model = Classifier("toy", body, mean=[0.5], std=[0.25], image_size=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so train vs eval mode differ
        model.net[1].running_mean.uniform_(-0.5, 0.5)
        model.net[1].running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(size))


def _direct(model: Classifier, x: torch.Tensor, other: Classifier | None = None, **options):
    """CKA matrix from activations captured on the whole set at once, one pair at a time."""
    other = model if other is None else other
    model.eval()
    other.eval()
    with torch.no_grad():
        rows, cols = model.features(x, "blocks"), other.features(x, "blocks")
    return torch.tensor(
        [[cka(a, b, **options) for b in cols.values()] for a in rows.values()],
        dtype=torch.float64,
    )


def test_within_model_matrix_has_unit_diagonal_and_is_symmetric(images):
    result = layer_cka(_toy_model(0), _batches(images, 32), progress=False)
    matrix = result.matrix
    assert matrix.shape == (len(TAPS), len(TAPS)) and matrix.dtype == torch.float64
    assert torch.equal(matrix.diagonal(), torch.ones(len(TAPS), dtype=torch.float64))
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-12)
    assert result.row_taps == result.col_taps == tuple(TAPS)
    assert (result.n_examples, result.n_batches) == (96, 3)
    assert "unbiased" in result.estimator and "3 batches" in result.estimator


@pytest.mark.parametrize("unbiased", [True, False])
def test_one_batch_equals_cka_of_activations_captured_on_the_full_set(images, unbiased):
    model = _toy_model(0)
    result = layer_cka(model, [images], unbiased=unbiased, progress=False)
    expected = _direct(model, images, unbiased=unbiased)
    torch.testing.assert_close(result.matrix, expected, rtol=0, atol=1e-10)
    assert "exact" in result.estimator


def test_minibatches_equal_the_accumulator_fed_by_hand(images):
    model_a, model_b = _toy_model(0), _toy_model(1)
    result = layer_cka(model_a, _batches(images, 24), model_b=model_b, pool=True, progress=False)
    accumulator = MinibatchCKA(TAPS, TAPS)
    model_a.eval()
    model_b.eval()
    for x in _batches(images, 24):
        rows, cols = model_a.features(x, "blocks"), model_b.features(x, "blocks")
        pooled = [{k: v.mean(dim=(2, 3)) if v.ndim == 4 else v for k, v in acts.items()}
                  for acts in (rows, cols)]  # fmt: skip
        accumulator.update(*pooled)
    torch.testing.assert_close(result.matrix, accumulator.compute(), rtol=0, atol=1e-12)
    assert "pooled" in result.estimator


def test_a_model_against_its_copy_gives_the_within_model_matrix(images):
    model = _toy_model(0)
    within = layer_cka(model, _batches(images, 32), progress=False)
    cross = layer_cka(model, _batches(images, 32), model_b=copy.deepcopy(model), progress=False)
    torch.testing.assert_close(cross.matrix, within.matrix, rtol=0, atol=1e-10)


def test_two_models_and_chosen_taps_give_a_rectangular_matrix(images):
    result = layer_cka(
        _toy_model(0),
        [images],
        model_b=_toy_model(1),
        taps_b=["conv2", "logits"],
        unbiased=False,
        progress=False,
    )
    assert result.matrix.shape == (len(TAPS), 2) and result.col_taps == ("conv2", "logits")
    assert (result.matrix < 0.999).all() and (result.matrix > 0).all()
    torch.testing.assert_close(
        result.matrix,
        _direct(_toy_model(0), images, _toy_model(1), unbiased=False)[:, [3, 6]],
        rtol=0,
        atol=1e-10,
    )


def test_models_return_to_their_previous_modes_and_batchnorm_stats_are_untouched(images):
    model_a, model_b = _toy_model(0), _toy_model(1)
    model_a.train()
    model_b.eval()
    model_b.net[1].train()  # a mixed state must survive too
    stats = model_a.net[1].running_mean.clone()
    layer_cka(model_a, _batches(images, 32), model_b=model_b, progress=False)
    assert all(module.training for module in model_a.modules())
    assert not model_b.training and model_b.net[1].training and not model_b.net[0].training
    assert torch.equal(model_a.net[1].running_mean, stats)


def test_batches_are_produced_with_gradients_enabled(images):
    """A generator of adversarial batches needs autograd while layer_cka consumes it."""
    model = _toy_model(0)

    def gradient_sign_batches():
        for x in _batches(images, 32):
            x = x.clone().requires_grad_(True)
            loss = model(x).logsumexp(dim=1).sum()
            (grad,) = torch.autograd.grad(loss, x)
            yield (x + 0.1 * grad.sign()).clamp(0, 1).detach()

    result = layer_cka(model, gradient_sign_batches(), progress=False)
    assert result.n_batches == 3


def test_a_second_input_stream_compares_clean_and_perturbed_inputs(images):
    model = _toy_model(0)
    same = layer_cka(model, _batches(images, 32), batches_b=_batches(images, 32), progress=False)
    torch.testing.assert_close(same.matrix.diagonal(), torch.ones(len(TAPS), dtype=torch.float64))
    noisy = [(x + 0.3 * torch.randn_like(x)).clamp(0, 1) for x in _batches(images, 32)]
    shifted = layer_cka(model, _batches(images, 32), batches_b=noisy, progress=False)
    assert (shifted.matrix.diagonal() < 0.99).all()
    with pytest.raises(ReprlabError, match="batches_b"):
        layer_cka(model, _batches(images, 32), batches_b=noisy[:2], progress=False)


def test_user_mistakes_raise_one_clear_error(images):
    model = _toy_model(0)
    with pytest.raises(ReprlabError, match="unknown tap"):
        layer_cka(model, [images], taps_a=["conv1", "fc9"], progress=False)
    with pytest.raises(ReprlabError, match="image tensors"):
        layer_cka(model, [(images, torch.zeros(96))], progress=False)
    with pytest.raises(ReprlabError, match="at least 4 examples"):
        layer_cka(model, _batches(images, 93), progress=False)  # last batch holds 3
    with pytest.raises(ReprlabError, match="no batches"):
        layer_cka(model, [], progress=False)


def _per_batch_activations(model: Classifier, batches: list[torch.Tensor]) -> dict[str, list]:
    """Per block tap, the per-batch activations as float64 NumPy arrays (eval mode)."""
    per_tap: dict[str, list] = {}
    model.eval()
    for x in batches:
        with torch.no_grad():
            for tap, value in model.features(x, "blocks").items():
                per_tap.setdefault(tap, []).append(value.double().numpy())
    return per_tap


def test_joint_blocks_equal_an_independent_minibatch_cka(images):
    """One pass over three models gives every within- and cross-model block of the minibatch
    unbiased CKA, as recomputed term by term in float64 NumPy (tests/reference_cka.py)."""
    models = {name: _toy_model(seed) for name, seed in (("a", 0), ("b", 1), ("c", 2))}
    members = [Member(name, model, model.block_taps) for name, model in models.items()]
    batches = _batches(images, 32)
    joint = joint_layer_cka(members, batches, progress=False)
    assert joint.matrix.shape[0] == sum(len(m.taps) for m in members)
    acts = {name: _per_batch_activations(model, batches) for name, model in models.items()}
    for row in models:
        for col in models:
            expected = torch.from_numpy(cka_matrix(acts[row], acts[col]))
            torch.testing.assert_close(joint.block(row, col).matrix, expected, rtol=0, atol=1e-10)


def test_groups_compute_only_the_blocks_asked_for(images):
    """Groups (e.g. each epoch with the final one) give the same blocks as one joint group."""
    models = {name: _toy_model(seed) for name, seed in (("e1", 0), ("e2", 1), ("final", 2))}
    members = [Member(name, model, model.block_taps) for name, model in models.items()]
    full = joint_layer_cka(members, _batches(images, 32), progress=False)
    grouped = joint_layer_cka(
        members, _batches(images, 32), groups=[("e1", "final"), ("e2", "final")], progress=False
    )
    assert len(grouped.groups) == 2
    for row, col in (("e1", "e1"), ("e1", "final"), ("e2", "final"), ("final", "final")):
        torch.testing.assert_close(grouped.block(row, col).matrix, full.block(row, col).matrix)
    with pytest.raises(KeyError, match="no group"):
        grouped.block("e1", "e2")


def test_joint_members_can_see_their_own_inputs(images):
    """Per-member inputs (e.g. each model's adversarial examples) pair rows by source image."""
    model = _toy_model(0)
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    taps = model.block_taps
    pairs = list(zip(_batches(images, 32), _batches(noisy, 32), strict=True))
    joint = joint_layer_cka(
        [Member("clean", model, taps), Member("noisy", model, taps)], pairs, progress=False
    )
    expected = layer_cka(model, _batches(images, 32), batches_b=_batches(noisy, 32), progress=False)
    torch.testing.assert_close(joint.block("clean", "noisy").matrix, expected.matrix)
    with pytest.raises(ValueError, match="distinct"):
        joint_layer_cka([Member("x", model, taps), Member("x", model, taps)], [images])


def test_tap_features_are_the_flattened_or_pooled_activations_in_tap_order(images):
    """What layer CKA compares, and what scripts/bench_cka.py times as the floor."""
    model = _toy_model(0).eval()
    x = images[:16].clone().requires_grad_(True)
    with torch.no_grad():  # by hand: the normalised input through the net's first three modules
        relu1 = model.net[2](model.net[1](model.net[0]((x - 0.5) / 0.25)))
    activations = {"relu1": relu1}
    flat = tap_features(model, x, ["logits", "relu1"])
    assert [tuple(f.shape) for f in flat] == [(16, 3), (16, 4 * 8 * 8)]
    assert torch.equal(flat[1], activations["relu1"].flatten(1))
    assert not any(f.requires_grad for f in flat)  # no autograd graph is kept
    (pooled,) = tap_features(model, x, ["relu1"], pool=True)
    torch.testing.assert_close(pooled, activations["relu1"].mean(dim=(2, 3)), rtol=0, atol=1e-7)


def test_progress_bar_of_a_stream_shows_its_total(images, capsys) -> None:
    """A generator has no length: given ``total``, the bar counts to it (and so shows an ETA)."""
    member = Member("a", _toy_model(0), ("conv1", "pool"))
    joint_layer_cka([member], (x for x in _batches(images, 32)), progress=True, total=3)
    assert "3/3" in capsys.readouterr().err
    joint_layer_cka([member], (x for x in _batches(images, 32)), progress=True)
    assert "3/3" not in capsys.readouterr().err  # without it, tqdm counts with no total
