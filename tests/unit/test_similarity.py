"""CKA estimators: golden values, invariances, baselines, minibatching, precision, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reprlab.errors import ReprlabError
from reprlab.methods import similarity
from reprlab.methods.similarity import MinibatchCKA, cka, gram_stack, hsic, hsic_matrix, linear_gram

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
        ({"kernel": "linear", "unbiased": False}, 0.55761),
        ({"kernel": "rbf", "unbiased": False, "rbf_threshold": 0.5}, 0.65483),
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
    assert abs(cka(x @ stretch, y, unbiased=False) - cka(x, y, unbiased=False)) > 0.05


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
            assert 0.0 <= cka(x, y, kernel=kernel, unbiased=False) <= 1.0 + 1e-12


def test_random_baseline_of_independent_representations():
    n, p, q = 500, 20, 30
    g = _generator(3)
    biased, unbiased = [], []
    for _ in range(10):
        x = torch.randn(n, p, generator=g, dtype=torch.float64)
        y = torch.randn(n, q, generator=g, dtype=torch.float64)
        biased.append(cka(x, y, unbiased=False))
        unbiased.append(cka(x, y, unbiased=True))
    expected = math.sqrt(p * q / ((n + p) * (n + q)))
    assert np.mean(biased) == pytest.approx(expected, rel=0.1)
    assert abs(np.mean(unbiased)) < 0.003
    assert max(abs(v) for v in unbiased) < 0.02


@pytest.fixture(scope="module")
def large_pair() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    x, y = _correlated(4096)
    return x, y, cka(x, y, unbiased=True), cka(x, y, unbiased=False)


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
    assert (
        abs(_naive_float32_cka((x + 1e4).float(), (y - 1e4).float()) - cka(x, y, unbiased=False))
        > 0.01
    )


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_features_are_centred_and_multiplied_in_chunks(monkeypatch, dtype):
    x = torch.randn(12, 3, 5, 7, generator=_generator(4), dtype=torch.float64) + 100.0
    x = x.to(dtype)
    flat = x.reshape(12, -1).double()
    centred = flat - flat.mean(0)
    expected = centred @ centred.T
    tolerance = (1e-12 if dtype == torch.float64 else 1e-6) * expected.abs().max().item()
    monkeypatch.setattr(similarity, "_FLOAT32_MIN_WIDTH", 1)  # float32 products at this width
    torch.testing.assert_close(linear_gram(x), expected, rtol=0, atol=tolerance)
    monkeypatch.setattr(similarity, "_CHUNK_ELEMENTS", 12 * 4)  # 4 columns at a time
    torch.testing.assert_close(linear_gram(x), expected, rtol=0, atol=tolerance)


def _activations(n: int, shape: tuple[int, ...], offset: float, seed: int) -> torch.Tensor:
    """float32 maps [n, *shape] like a network's: a shared 6-d latent (seed 0) read out by random
    weights through a ReLU, plus log-normal (heavy-tailed) noise and a large common offset."""
    latent = torch.randn(n, 6, generator=_generator(0), dtype=torch.float64)
    g = _generator(seed)
    width = math.prod(shape)
    signal = torch.relu(latent @ torch.randn(6, width, generator=g, dtype=torch.float64))
    noise = torch.exp(1.5 * torch.randn(n, width, generator=g, dtype=torch.float64))
    return (3 * signal + noise + offset).float().reshape(n, *shape)


def _reference_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    """CKA straight from the definitions in float64, written without reprlab's code."""
    n = x.shape[0]
    ones = torch.ones(n, dtype=torch.float64)
    centring = torch.eye(n, dtype=torch.float64) - 1 / n

    def gram(features: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(n, -1).double()
        flat = flat - flat.mean(dim=0)
        return flat @ flat.T

    def hsic_of(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
        if not unbiased:
            return (torch.trace(k @ centring @ l @ centring) / (n - 1) ** 2).item()
        k = k - torch.diag(torch.diag(k))
        l = l - torch.diag(torch.diag(l))  # noqa: E741
        value = (
            torch.trace(k @ l)
            + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (ones @ k @ l @ ones)
        )
        return (value / (n * (n - 3))).item()

    k, l = gram(x), gram(y)  # noqa: E741
    return hsic_of(k, l) / math.sqrt(hsic_of(k, k) * hsic_of(l, l))


@pytest.mark.parametrize(
    ("n", "shape_x", "shape_y", "route"),
    [
        (96, (32, 16, 16), (32, 8, 8), "gram"),  # float32 products in 2 slices; float64 products
        (64, (8, 32, 32), (16, 16, 16), "gram"),  # float32 products on both sides
        (300, (4, 3, 3), (10,), "features"),  # D = 46 < n
        (256, (8, 4, 4), (16, 2, 2), "features"),  # D = 192 < n
    ],
)
@pytest.mark.parametrize("unbiased", [False, True])
def test_fast_routes_agree_with_a_float64_reference(
    monkeypatch, n, shape_x, shape_y, route, unbiased
):
    x = _activations(n, shape_x, offset=1e4, seed=1)
    y = _activations(n, shape_y, offset=-3e3, seed=2)
    expected = _reference_cka(x, y, unbiased)
    routes, products = [], []
    feature_hsic, gram_products = similarity._feature_hsic, similarity._gram_products

    def spy_features(*args, **kwargs):
        routes.append("features")
        return feature_hsic(*args, **kwargs)

    def spy_gram(flat, dtype, *args):
        routes.append("gram")
        products.append(dtype)
        return gram_products(flat, dtype, *args)

    monkeypatch.setattr(similarity, "_feature_hsic", spy_features)
    monkeypatch.setattr(similarity, "_gram_products", spy_gram)
    assert cka(x, y, unbiased=unbiased) == pytest.approx(expected, abs=1e-6)
    accumulator = MinibatchCKA(["x", "y"], unbiased=unbiased)
    accumulator.update([x, y])
    assert accumulator.compute()[0, 1].item() == pytest.approx(expected, abs=1e-6)
    assert set(routes) == {route}
    if route == "gram":
        assert torch.float32 in products  # the fast float32 products were exercised
    assert 0.05 < abs(expected) < 0.95  # a non-trivial value


@pytest.mark.parametrize("unbiased", [False, True])
def test_feature_route_equals_the_gram_route(unbiased):
    x, y = _correlated(50)
    named = [("x", x), ("x2", x[:, :7] ** 2), ("y", y + 1e3), ("xy", x[:, :3] * y[:, :3])]
    grams = gram_stack([tensor for _, tensor in named])
    expected = hsic_matrix(grams, unbiased=unbiased)
    features = similarity._feature_hsic(named, unbiased)
    scale = expected.abs().max().item()
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-12 * scale)


def test_float32_products_ignore_autocast_and_reduced_matmul_precision():
    x = _activations(16, (4096,), offset=10.0, seed=3)
    expected = linear_gram(x)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # allows bf16 products where supported
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(linear_gram(x), expected)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(before)


def test_float32_products_that_overflow_fall_back_to_float64():
    x = _activations(8, (4096,), offset=0.0, seed=4) * 1e19  # squares beyond float32's range
    expected = linear_gram(x.double())
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(linear_gram(x), expected, rtol=1e-12, atol=0)


def test_nan_or_inf_features_raise_naming_the_representation():
    x, y = _correlated(20)
    broken = y.clone()
    broken[3, 2] = float("nan")
    with pytest.raises(ReprlabError, match=r"'layer2'.*NaN or inf"):
        gram_stack({"layer1": x, "layer2": broken})
    broken[3, 2] = float("inf")
    with pytest.raises(ReprlabError, match="NaN or inf"):
        cka(x, broken, unbiased=False)
    broken[:, 2] = float("-inf")  # a constant column of inf must not be centred away
    with pytest.raises(ReprlabError, match="NaN or inf"):
        cka(x, broken.float(), unbiased=False)
    with pytest.raises(ReprlabError, match="'y': NaN or inf"):
        cka(x[:, :2], broken[:, :3], unbiased=False)  # the feature-space route
    wide = torch.randn(20, 4096, generator=_generator(5))
    wide[7, 100] = float("nan")
    with pytest.raises(ReprlabError, match="'y': NaN or inf"):
        cka(x, wide, unbiased=False)  # float32 products


def test_unbiased_estimator_needs_four_examples():
    x, y = _correlated(3)
    with pytest.raises(ReprlabError, match="at least 4 examples"):
        cka(x, y, unbiased=True)
    assert 0 <= cka(x, y, unbiased=False) <= 1 + 1e-12  # the biased estimator is defined
    accumulator = MinibatchCKA(["x"], ["y"])
    with pytest.raises(ReprlabError, match="at least 4 examples"):
        accumulator.update([x], [y])


@pytest.mark.parametrize("width", [6, 4096])  # feature space / Grams of float32 products
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_constant_representation_raises_naming_it(dtype, width):
    x, _ = _correlated(40)
    constant = torch.full((40, width), 0.1, dtype=dtype)  # 0.1 is inexact in binary
    with pytest.raises(ReprlabError, match="'y' is constant"):
        cka(x, constant, unbiased=False)
    accumulator = MinibatchCKA(["ok", "dead"])
    accumulator.update({"ok": x, "dead": constant})
    with pytest.raises(ReprlabError, match="'dead' is constant"):
        accumulator.compute()
    with pytest.raises(ReprlabError, match="bandwidth is zero"):
        cka(x, constant, kernel="rbf", unbiased=False)


def test_empty_accumulator_and_unknown_kernel_raise():
    with pytest.raises(ReprlabError, match="no batches"):
        MinibatchCKA(["a"]).compute()
    with pytest.raises(ReprlabError, match="unknown CKA kernel"):
        MinibatchCKA(["a"], kernel="cosine")


def test_mean_std_is_the_sample_spread() -> None:
    from reprlab.core.stats import mean_std

    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert mean_std([0.5]) == (0.5, 0.0)
    rows = np.array([[1.0, 2.0], [3.0, 6.0]])
    means, stds = mean_std(rows, axis=0)
    np.testing.assert_allclose(means, [2.0, 4.0])
    np.testing.assert_allclose(stds, [math.sqrt(2), math.sqrt(8)])
    assert all(np.isnan(v) for v in mean_std([]))
