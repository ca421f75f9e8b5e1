"""CKA estimators: golden values, invariances, baselines, minibatching, precision, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprlab import similarity
from reprlab.errors import ReprlabError
from reprlab.similarity import MinibatchCKA, cka, gram_stack, hsic, hsic_matrix, linear_gram

ESTIMATORS = [
    pytest.param({"kernel": "linear", "unbiased": False}, id="linear"),
    pytest.param({"kernel": "linear", "unbiased": True}, id="linear-unbiased"),
    pytest.param({"kernel": "rbf", "unbiased": False, "rbf_threshold": 0.5}, id="rbf"),
]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 representations [n, 32], [n, 24] sharing a latent, with noise: CKA ~0.27."""
    g = _generator(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    z = randn(n, 16)
    x = z @ randn(16, 32) + 2 * randn(n, 32)
    y = torch.tanh(z[:, :8] @ randn(8, 24)) + randn(n, 24)
    return x, y


@pytest.fixture(scope="module")
def kornblith_xy() -> tuple[torch.Tensor, torch.Tensor]:
    """The data of Kornblith et al.'s CKA notebook: seed 1337, X then Y from the global RNG."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"kernel": "linear"}, 0.55761),
        ({"kernel": "rbf", "rbf_threshold": 0.5}, 0.65483),
        ({"kernel": "linear", "unbiased": True}, 0.51346),
    ],
    ids=["linear", "rbf-0.5", "debiased-linear"],
)
def test_golden_values_of_kornblith_notebook(kornblith_xy, options, expected):
    x, y = kornblith_xy
    assert cka(x, y, **options) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("options", ESTIMATORS)
def test_invariant_to_orthogonal_maps_isotropic_scaling_and_translation(options):
    x, y = _correlated(200)
    g = _generator(1)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    shift = 5 * torch.randn(32, generator=g, dtype=torch.float64)
    reference = cka(x, y, **options)
    assert cka(x @ q, y, **options) == pytest.approx(reference, abs=1e-6)
    assert cka(7.5 * x, y, **options) == pytest.approx(reference, abs=1e-6)
    assert cka(x + shift, y, **options) == pytest.approx(reference, abs=1e-6)


def test_not_invariant_to_general_invertible_linear_maps():
    x, y = _correlated(200)
    stretch = torch.diag(torch.logspace(-2, 2, 32, dtype=torch.float64))
    assert abs(cka(x @ stretch, y) - cka(x, y)) > 0.05


@pytest.mark.parametrize("options", ESTIMATORS)
def test_self_similarity_is_one_and_cka_is_symmetric(options):
    x, y = _correlated(150)
    assert cka(x, x, **options) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, y, **options) == pytest.approx(cka(y, x, **options), abs=1e-12)


def test_biased_cka_lies_in_unit_interval():
    g = _generator(2)
    for _ in range(5):
        x = torch.randn(30, 5, generator=g)
        y = x[:, :3] ** 2 + 0.1 * torch.randn(30, 3, generator=g)
        for kernel in ("linear", "rbf"):
            assert 0.0 <= cka(x, y, kernel=kernel) <= 1.0 + 1e-12


def test_random_baseline_of_independent_representations():
    n, p, q = 500, 20, 30
    g = _generator(3)
    biased, unbiased = [], []
    for _ in range(10):
        x = torch.randn(n, p, generator=g, dtype=torch.float64)
        y = torch.randn(n, q, generator=g, dtype=torch.float64)
        biased.append(cka(x, y))
        unbiased.append(cka(x, y, unbiased=True))
    expected = math.sqrt(p * q / ((n + p) * (n + q)))
    assert np.mean(biased) == pytest.approx(expected, rel=0.1)
    assert abs(np.mean(unbiased)) < 0.003
    assert max(abs(v) for v in unbiased) < 0.02


@pytest.fixture(scope="module")
def large_pair() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    x, y = _correlated(4096)
    return x, y, cka(x, y, unbiased=True), cka(x, y)


def _minibatch(x, y, batch_size: int, unbiased: bool) -> float:
    accumulator = MinibatchCKA(["x"], ["y"], unbiased=unbiased)
    for start in range(0, x.shape[0], batch_size):
        accumulator.update([x[start : start + batch_size]], [y[start : start + batch_size]])
    return accumulator.compute().item()


@pytest.mark.parametrize("batch_size", [64, 128, 256, 512, 1024])
def test_unbiased_minibatch_cka_does_not_depend_on_batch_size(large_pair, batch_size):
    x, y, exact_unbiased, _ = large_pair
    assert _minibatch(x, y, batch_size, unbiased=True) == pytest.approx(exact_unbiased, abs=0.01)


def test_biased_minibatch_cka_is_inflated_at_small_batches(large_pair):
    x, y, _, exact_biased = large_pair
    assert _minibatch(x, y, 64, unbiased=False) > exact_biased + 0.1


@pytest.mark.parametrize("unbiased", [True, False])
def test_one_batch_of_the_whole_set_is_the_exact_estimator(large_pair, unbiased):
    x, y, exact_unbiased, exact_biased = large_pair
    exact = exact_unbiased if unbiased else exact_biased
    assert _minibatch(x, y, x.shape[0], unbiased=unbiased) == pytest.approx(exact, abs=1e-8)


def _naive_float32_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Uncentred float32 Grams, as peer tools compute them: the failure mode to avoid."""
    k, l = x @ x.T, y @ y.T  # noqa: E741
    h = torch.eye(x.shape[0]) - 1 / x.shape[0]

    def biased_hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.trace(a @ h @ b @ h)

    return (biased_hsic(k, l) / torch.sqrt(biased_hsic(k, k) * biased_hsic(l, l))).item()


@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_features_with_large_offsets_keep_float64_precision(unbiased):
    x, y = _correlated(1000)
    x32, y32 = (x + 1e4).float(), (y - 1e4).float()
    value = cka(x32, y32, unbiased=unbiased)
    assert value == pytest.approx(cka(x32.double(), y32.double(), unbiased=unbiased), abs=1e-6)
    assert value == pytest.approx(cka(x, y, unbiased=unbiased), abs=1e-3)  # float32 storage only


def test_naive_float32_grams_fail_on_the_same_offsets():
    """Guards the previous test: the data is hard enough to break a float32 implementation."""
    x, y = _correlated(1000)
    assert abs(_naive_float32_cka((x + 1e4).float(), (y - 1e4).float()) - cka(x, y)) > 0.01


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_all_pairs_hsic_matrix_equals_pairwise_song_formula(kernel, unbiased):
    x, y = _correlated(60)
    features_a = [x, x[:, :5] ** 2, torch.sin(x)]
    features_b = [y, y.abs(), x[:, :24] + y]
    grams_a = gram_stack(features_a, kernel=kernel)
    grams_b = gram_stack(features_b, kernel=kernel)
    loop = torch.tensor([[hsic(k, l, unbiased=unbiased) for l in grams_b] for k in grams_a])  # noqa: E741
    matrix = hsic_matrix(grams_a, grams_b, unbiased=unbiased)
    assert matrix.shape == (3, 3)
    torch.testing.assert_close(matrix, loop, rtol=1e-10, atol=1e-12 * loop.abs().max().item())
    within = hsic_matrix(grams_a, unbiased=unbiased)
    torch.testing.assert_close(within, within.T, rtol=0, atol=1e-12 * within.abs().max().item())


def test_minibatch_cross_matrix_matches_pairwise_cka():
    x, y = _correlated(80)
    rows = {"a": x, "b": x**2}
    cols = {"c": y, "d": torch.cos(y), "e": x[:, :24] + y}
    accumulator = MinibatchCKA(list(rows), list(cols), unbiased=True)
    accumulator.update(rows, cols)
    expected = torch.tensor(
        [[cka(r, c, unbiased=True) for c in cols.values()] for r in rows.values()],
        dtype=torch.float64,
    )
    torch.testing.assert_close(accumulator.compute(), expected, rtol=0, atol=1e-12)


def test_within_accumulator_equals_cross_accumulator_on_the_same_features():
    x, y = _correlated(64)
    features = [x, y, x * y[:, :1]]
    within = MinibatchCKA(["x", "y", "xy"])
    cross = MinibatchCKA(["x", "y", "xy"], ["x", "y", "xy"])
    for start in range(0, 64, 16):
        batch = [f[start : start + 16] for f in features]
        within.update(batch)
        cross.update(batch, batch)
    matrix = within.compute()
    assert torch.equal(matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(matrix, cross.compute(), rtol=0, atol=1e-12)


def test_wide_features_are_cast_in_chunks_without_changing_the_gram(monkeypatch):
    x = torch.randn(12, 3, 5, 7, generator=_generator(4)) + 100.0
    flat = x.reshape(12, -1).double()
    centred = flat - flat.mean(0)
    monkeypatch.setattr(similarity, "_CAST_CHUNK_ELEMENTS", 12 * 4)  # 4 columns at a time
    torch.testing.assert_close(linear_gram(x), centred @ centred.T, rtol=1e-12, atol=1e-9)


def test_nan_or_inf_features_raise_naming_the_representation():
    x, y = _correlated(20)
    broken = y.clone()
    broken[3, 2] = float("nan")
    with pytest.raises(ReprlabError, match=r"'layer2'.*NaN or inf"):
        gram_stack({"layer1": x, "layer2": broken})
    broken[3, 2] = float("inf")
    with pytest.raises(ReprlabError, match="NaN or inf"):
        cka(x, broken)
    broken[:, 2] = float("-inf")  # a constant column of inf must not be centred away
    with pytest.raises(ReprlabError, match="NaN or inf"):
        cka(x, broken.float())


def test_unbiased_estimator_needs_four_examples():
    x, y = _correlated(3)
    with pytest.raises(ReprlabError, match="at least 4 examples"):
        cka(x, y, unbiased=True)
    assert 0 <= cka(x, y) <= 1 + 1e-12  # the biased estimator is defined
    accumulator = MinibatchCKA(["x"], ["y"])
    with pytest.raises(ReprlabError, match="at least 4 examples"):
        accumulator.update([x], [y])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_constant_representation_raises_naming_it(dtype):
    x, _ = _correlated(40)
    constant = torch.full((40, 6), 0.1, dtype=dtype)  # 0.1 is inexact in binary
    with pytest.raises(ReprlabError, match="'y' is constant"):
        cka(x, constant)
    accumulator = MinibatchCKA(["ok", "dead"])
    accumulator.update({"ok": x, "dead": constant})
    with pytest.raises(ReprlabError, match="'dead' is constant"):
        accumulator.compute()
    with pytest.raises(ReprlabError, match="bandwidth is zero"):
        cka(x, constant, kernel="rbf")


def test_empty_accumulator_and_unknown_kernel_raise():
    with pytest.raises(ReprlabError, match="no batches"):
        MinibatchCKA(["a"]).compute()
    with pytest.raises(ReprlabError, match="unknown CKA kernel"):
        MinibatchCKA(["a"], kernel="cosine")
