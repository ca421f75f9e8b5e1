"""Centred kernel alignment (CKA) between representations: Grams, HSIC estimators, accumulators.

Implements linear and RBF CKA (Kornblith et al., ICML 2019), the unbiased HSIC estimator (Song et
al., JMLR 2012) and minibatch CKA (Nguyen et al., ICLR 2021)::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

Features are tensors [n, ...] with examples along the first dimension; they are flattened to
[n, d] and centred over the examples *before* any product is formed. Centring changes no CKA value
(every estimator here is translation invariant), but float32 Grams of uncentred activations lose
the variance under the mean and give CKA values above 1 or NaN.

Precision
---------
Wide float32, float16 and bfloat16 features (at least 4096 values per example: the conv maps whose
Grams dominate the cost) are centred in float32, ``x - fl(sum(x) / n)`` — exact where a value is
near its column's mean, so a large common offset goes without rounding — and their Gram is taken in
IEEE float32 (no TF32, no autocast) over column slices whose Grams are summed and then
double-centred in float64, which removes the offset (about an ulp of the mean per column) that the
rounded mean leaves. Centred float32 products keep about seven digits per Gram entry; the rounding
errors of different entries are independent and largely cancel in the HSIC sums, so CKA agrees with
the float64 computation on the same inputs to about 1e-8, and to about 1e-7 for the biased
estimator on heavy-tailed data, whose Gram diagonals carry long float32 sums of squares (tested to
1e-6 on activations with large offsets and heavy tails). Narrower or float64 features are centred
(by their first example, then their mean) and multiplied in float64, where that costs little.
Everything after the Grams (centring of Grams, HSIC, the minibatch sums) is float64.

Estimators
----------
* biased HSIC: ``tr(K H L H) / (n - 1)^2`` with ``H = I - 11ᵀ/n`` (needs n >= 2);
* unbiased HSIC (Song et al.): with K̃, L̃ the Grams with zeroed diagonals,
  ``[tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3))`` (needs n >= 4; can be
  negative). The all-pairs path computes it as ``<U(K), U(L)> / (n(n-3))`` with U the U-centring
  of Székely & Rizzo (2014), an identity that needs one matrix product for all pairs.

Two routes for the linear kernel
--------------------------------
With Grams (cost n²d per representation of width d) or, when the representations of a batch are
narrower in total than the batch is long, in feature space (cost n D² for total width D), where
for K = XXᵀ, L = YYᵀ, k_i = |x_i|², l_i = |y_i|², s_X = Xᵀ1, s_Y = Yᵀ1 (exact for any X, Y)::

    tr(KHLH) = |XᵀY - s_X s_Yᵀ / n|²_F
    tr(K̃L̃) = |XᵀY|²_F - kᵀl,   1ᵀK̃1 = |s_X|² - 1ᵀk,   1ᵀK̃L̃1 = (X s_X - k)ᵀ(Y s_Y - l)

:func:`cka` and :meth:`MinibatchCKA.update` pick the cheaper route; the feature route runs in
float64 throughout. The RBF kernel always takes Grams.

Zero variance: a representation that is constant over all examples has HSIC(K, K) = 0 and CKA
0/0; :func:`cka` and :meth:`MinibatchCKA.compute` raise :class:`~reprlab.errors.ReprlabError`
naming it instead of returning NaN. NaN or inf in features raises too, naming the representation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from reprlab.errors import ReprlabError

KERNELS = ("linear", "rbf")

# A Gram is built over column slices of the features of at most _CHUNK_ELEMENTS elements (32 MiB
# of float32), each centred into one reused buffer and multiplied, so the centred copy stays small
# however wide the map and large batch. Slices are large because on a shared CPU every parallel
# op also waits for its helper thread to be scheduled. On CUDA, no slice is wider than
# _CUDA_MAX_CHUNK_COLUMNS, which bounds the length of the float32 dot products cuBLAS accumulates
# in sequence.
_CHUNK_ELEMENTS = 1 << 23
_CUDA_MAX_CHUNK_COLUMNS = 4096

# Features of these dtypes with at least _FLOAT32_MIN_WIDTH columns (the wide maps whose products
# dominate the cost) have their Grams taken in float32; anything else in float64, where it is cheap.
_FLOAT32_PRODUCTS = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT32_MIN_WIDTH = 4096

FeatureList = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ReprlabError(f"unknown CKA kernel '{kernel}'; use one of: {', '.join(KERNELS)}")


def _require_examples(n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise ReprlabError(
            f"unbiased HSIC needs at least 4 examples per batch, got {n}; "
            "use a larger batch (or drop the short last batch) or the biased estimator"
        )
    if n < 2:
        raise ReprlabError(f"CKA needs at least 2 examples, got {n}")


def _non_finite_error() -> ReprlabError:
    return ReprlabError("NaN or inf in the activations; check the model weights and inputs")


@contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """Plain IEEE float32 products on ``device``: autocast off, no TF32 or bf16 inner products."""
    precision = torch.get_float32_matmul_precision()
    if precision != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        if torch.amp.is_autocast_available(device.type):
            with torch.autocast(device.type, enabled=False):
                yield
        else:
            yield
    finally:
        if precision != "highest":
            torch.set_float32_matmul_precision(precision)


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run the CPU ops inside on one thread; elsewhere (CUDA, one thread already) a no-op.

    For the memory-bound passes (centring) and the small [P, n, n] work around the Gram
    products: more threads gain them little, and on a busy machine every multi-threaded op
    first waits for its helper thread to be scheduled (milliseconds each). The products
    themselves keep all threads.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _centre_into(source: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``source`` [n, d] centred over its rows into ``out`` [n, d] (of the compute dtype).

    Shifted by the first row first: a constant column becomes exactly zero, and a large common
    offset is removed exactly (Sterbenz) before the mean, whose rounding then scales with the
    spread of the values instead of with the offset. Returns ``out``.
    """
    if source.dtype == out.dtype:
        torch.sub(source, source[:1], out=out)
    else:
        out.copy_(source)
        out -= out[:1].clone()
    return out.sub_(out.sum(dim=0), alpha=1 / out.shape[0])


def _product_dtype(flat: torch.Tensor) -> torch.dtype:
    """float32 for wide float32/float16/bfloat16 features [n, d], float64 for everything else."""
    wide = flat.shape[1] >= _FLOAT32_MIN_WIDTH
    return torch.float32 if wide and flat.dtype in _FLOAT32_PRODUCTS else torch.float64


def _gram_products(
    flat: torch.Tensor, dtype: torch.dtype, workspace: dict[torch.dtype, torch.Tensor] | None = None
) -> torch.Tensor:
    """``X_c X_cᵀ`` [n, n] float64 of ``flat`` [n, d], products in ``dtype``, slices summed.

    ``workspace`` (dtype -> 1-d buffer) lends the centring buffer, so that a stack of Grams
    allocates it once.

    Unchecked: NaN or inf in ``flat`` (or float32 overflow) leaves NaN or inf in the result.
    float64 products centre exactly as :func:`_centre_into`. float32 products centre each slice
    in one pass, ``x - fl(sum(x) / n)`` (on a shared CPU each extra pass over the features and
    each parallel op costs time), then double-centre the Gram in float64 to remove what the
    rounded mean left. That mean can miss a constant column by an ulp, so a Gram whose entries
    are all (nearly) equal is checked against the features and zeroed if they are constant.
    """
    n, width = flat.shape
    device = flat.device
    if width == 0:
        return torch.zeros(n, n, dtype=torch.float64, device=device)
    step = max(1, min(width, _CHUNK_ELEMENTS // max(n, 1)))
    if device.type == "cuda":
        step = min(step, _CUDA_MAX_CHUNK_COLUMNS)
    workspace = {} if workspace is None else workspace
    buffer = workspace.get(dtype)
    if buffer is None or buffer.numel() < n * step or buffer.device != device:
        buffer = workspace[dtype] = torch.empty(n * step, dtype=dtype, device=device)
    gram: torch.Tensor | None = None
    with _ieee_float32(device):
        for start in range(0, width, step):
            source = flat[:, start : start + step]
            chunk = buffer[: source.numel()].view(source.shape)
            with _one_thread(device):
                if dtype == torch.float64:
                    _centre_into(source, chunk)
                else:
                    torch.sub(source, source.sum(dim=0, dtype=dtype), alpha=1 / n, out=chunk)
            partial = torch.mm(chunk, chunk.T)
            gram = partial.to(torch.float64) if gram is None else gram.add_(partial)
    assert gram is not None
    if dtype != torch.float64:  # ops on [n, n]: serial below the parallel grain size anyway
        low, high = torch.aminmax(gram)
        spread, size = (high - low).item(), max(abs(low.item()), abs(high.item()))
        if spread <= 1e-2 * size and torch.equal(flat, flat[:1].expand_as(flat)):
            return gram.zero_()  # a constant representation: exactly zero, as its CKA needs
        # H G H removes what the rounded mean left, (X_c - 1δᵀ)(X_c - 1δᵀ)ᵀ -> X_c X_cᵀ.
        row_means = gram.mean(dim=1, keepdim=True)
        gram -= row_means
        gram -= gram.mean(dim=0, keepdim=True)
    return gram


def _checked_gram(gram: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``gram`` of ``flat`` if finite, else recomputed in float64 or a ReprlabError."""
    if math.isfinite(gram.sum().item()):  # one cheap test; the sum of a finite Gram may overflow
        return gram
    if torch.isfinite(gram).all():
        return gram
    if not torch.isfinite(flat).all():
        raise _non_finite_error()
    gram = _gram_products(flat, torch.float64)  # float32 products overflowed
    if not torch.isfinite(gram).all():
        raise ReprlabError("activations too large to square in float64; rescale them")
    return gram


def linear_gram(features: torch.Tensor) -> torch.Tensor:
    """Linear Gram ``X_c X_cᵀ`` [n, n] float64 of ``features`` [n, ...].

    ``X_c`` is the features flattened to [n, d] and centred over the n examples. float32, float16
    and bfloat16 features at least ``_FLOAT32_MIN_WIDTH`` (4096) wide are multiplied in float32
    over column slices summed in float64 (module docstring, "Precision"), falling back to float64
    where float32 products would overflow; all others in float64. A column that is constant over
    the examples contributes exactly zero, so a constant representation has an exactly zero Gram.
    Raises ReprlabError on NaN or inf.
    """
    flat = features.reshape(features.shape[0], -1)
    return _checked_gram(_gram_products(flat, _product_dtype(flat)), flat)


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of all entries, averaging the two middle ones for an even count (as numpy)."""
    flat = values.reshape(-1)
    count = flat.numel()
    upper = flat.kthvalue(count // 2 + 1).values
    if count % 2:
        return upper
    return (flat.kthvalue(count // 2).values + upper) / 2


def rbf_gram(features: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """RBF Gram ``exp(-|x_i - x_j|^2 / (2 sigma^2))`` [n, n] float64 of ``features`` [n, ...].

    Kornblith et al.'s bandwidth convention: ``sigma = threshold * m`` where ``m^2`` is the median
    of the n^2 squared pairwise distances (zero diagonal included), so ``threshold`` is a fraction
    of the median distance. Raises ReprlabError when that median is 0 (features constant on at
    least half of the pairs).
    """
    if threshold <= 0:
        raise ReprlabError(f"RBF threshold must be positive, got {threshold}")
    dots = linear_gram(features)
    sq_norms = dots.diagonal()
    sq_distances = (sq_norms[:, None] + sq_norms[None, :] - 2 * dots).clamp_(min=0)
    median = _median(sq_distances)
    if median.item() <= 0:
        raise ReprlabError(
            "RBF bandwidth is zero: at least half the pairwise distances are 0 "
            "(representation constant over the batch); use kernel=linear or more varied inputs"
        )
    return torch.exp(sq_distances / (-2 * threshold**2 * median))


def gram(
    features: torch.Tensor, kernel: str = "linear", rbf_threshold: float = 1.0
) -> torch.Tensor:
    """Gram [n, n] float64 of ``features`` [n, ...] under ``kernel`` ("linear" or "rbf")."""
    _check_kernel(kernel)
    if kernel == "rbf":
        return rbf_gram(features, rbf_threshold)
    return linear_gram(features)


def _named(features: FeatureList, names: Sequence[str] | None) -> list[tuple[str, torch.Tensor]]:
    """Pair features with names: a mapping in ``names`` order (or its own), a sequence by index."""
    if isinstance(features, Mapping):
        if names is None:
            return list(features.items())
        if set(features) != set(names):
            raise ValueError(f"feature names {list(features)} do not match {list(names)}")
        return [(name, features[name]) for name in names]
    features = list(features)
    if names is None:
        names = [str(index) for index in range(len(features))]
    if len(names) != len(features):
        raise ValueError(f"{len(features)} feature tensors for {len(names)} names")
    return list(zip(names, features, strict=True))


def gram_stack(
    features: FeatureList,
    names: Sequence[str] | None = None,
    *,
    kernel: str = "linear",
    rbf_threshold: float = 1.0,
) -> torch.Tensor:
    """Grams [p, n, n] float64 of p representations of the same n examples.

    ``features`` is a sequence of tensors [n, ...] or a mapping name -> tensor (then ``names``,
    if given, fixes the order). Raises ReprlabError naming the representation when one holds NaN
    or inf, when the example counts differ, or when its RBF bandwidth is zero.
    """
    _check_kernel(kernel)
    named = _named(features, names)
    if not named:
        raise ValueError("gram_stack needs at least one feature tensor")
    counts = {name: tensor.shape[0] for name, tensor in named}
    if len(set(counts.values())) != 1:
        raise ReprlabError(f"representations disagree on the number of examples: {counts}")
    if kernel == "linear":
        flats = [tensor.reshape(tensor.shape[0], -1) for _, tensor in named]
        workspace: dict[torch.dtype, torch.Tensor] = {}
        grams = [_gram_products(f, _product_dtype(f), workspace) for f in flats]
        with _one_thread(grams[0].device):
            stack = torch.stack(grams)
            finite = math.isfinite(stack.sum().item())  # one test for all, details on failure
        if finite:
            return stack
        compute = [lambda i=i: _checked_gram(stack[i], flats[i]) for i in range(len(named))]
    else:
        compute = [lambda t=t: rbf_gram(t, rbf_threshold) for _, t in named]
    grams = []
    for (name, _), gram_of in zip(named, compute, strict=True):
        try:
            grams.append(gram_of())
        except ReprlabError as err:
            raise ReprlabError(f"{name!r}: {err}") from err
    return torch.stack(grams)


def hsic(k: torch.Tensor, l: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:  # noqa: E741
    """HSIC of two Grams [n, n]: biased ``tr(KHLH)/(n-1)^2`` or Song et al.'s unbiased estimator.

    Returns a 0-d float64 tensor. Computed from the formulas in the module docstring with traces
    and sums only (O(n^2)); the unbiased one needs n >= 4 and may be negative.
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"hsic needs two square Grams of one shape, got {k.shape} and {l.shape}")
    n = k.shape[0]
    _require_examples(n, unbiased)
    k = k.to(torch.float64)
    l = l.to(torch.float64)  # noqa: E741
    if unbiased:
        k = k.clone().fill_diagonal_(0.0)
        l = l.clone().fill_diagonal_(0.0)  # noqa: E741
    trace_kl = (k * l.T).sum()
    ones_kl_ones = k.sum(dim=0) @ l.sum(dim=1)
    if unbiased:
        value = trace_kl + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * ones_kl_ones / (n - 2)
        return value / (n * (n - 3))
    return (trace_kl - 2 * ones_kl_ones / n + k.sum() * l.sum() / n**2) / (n - 1) ** 2


def _centred(grams: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """New float64 copy of Grams [..., n, n]: double-centred HKH, or U-centred when unbiased.

    U-centring (Székely & Rizzo 2014): zero the diagonal, subtract row and column sums / (n-2),
    add the total / ((n-1)(n-2)), zero the diagonal again.
    """
    n = grams.shape[-1]
    centred = grams.to(torch.float64, copy=True)
    if unbiased:
        centred.diagonal(dim1=-2, dim2=-1).zero_()
        divisor, total_divisor = n - 2, (n - 1) * (n - 2)
    else:
        divisor, total_divisor = n, n * n
    row_sums = centred.sum(dim=-1, keepdim=True)
    col_sums = centred.sum(dim=-2, keepdim=True)
    total = row_sums.sum(dim=-2, keepdim=True)
    centred -= row_sums / divisor
    centred -= col_sums / divisor - total / total_divisor
    if unbiased:
        centred.diagonal(dim1=-2, dim2=-1).zero_()
    return centred


def _normaliser(n: int, unbiased: bool) -> int:
    return n * (n - 3) if unbiased else (n - 1) ** 2


def hsic_matrix(
    grams_a: torch.Tensor, grams_b: torch.Tensor | None = None, *, unbiased: bool = False
) -> torch.Tensor:
    """HSIC for all pairs between Grams [p, n, n] and [q, n, n] (default: ``grams_a``): [p, q].

    Equal to ``hsic(grams_a[i], grams_b[j], unbiased=unbiased)`` for every (i, j), computed as
    one product of the centred Grams flattened to [p, n*n] and [q, n*n].
    """
    if grams_a.ndim != 3 or (grams_b is not None and grams_b.shape[1:] != grams_a.shape[1:]):
        other = None if grams_b is None else tuple(grams_b.shape)
        raise ValueError(f"need Gram stacks [p, n, n] and [q, n, n], got {grams_a.shape}, {other}")
    n = grams_a.shape[-1]
    _require_examples(n, unbiased)
    flat_a = _centred(grams_a, unbiased).flatten(1)
    flat_b = flat_a if grams_b is None else _centred(grams_b, unbiased).flatten(1)
    return flat_a @ flat_b.T / _normaliser(n, unbiased)


def _feature_hsic(named: Sequence[tuple[str, torch.Tensor]], unbiased: bool) -> torch.Tensor:
    """Linear-kernel HSIC [P, P] float64 of all pairs of P representations, in feature space.

    Uses the identities of the module docstring on features centred in float64 (centring is not
    needed by them, only by precision); cost n D² for total width D, memory n D + D².
    """
    n = named[0][1].shape[0]
    blocks = []
    for name, tensor in named:
        flat = tensor.reshape(n, -1)
        block = _centre_into(flat, torch.empty(flat.shape, dtype=torch.float64, device=flat.device))
        if not torch.isfinite(block).all():
            raise ReprlabError(f"{name!r}: {_non_finite_error()}")
        blocks.append(block)
    features = torch.cat(blocks, dim=1)  # [n, D]
    # owner [P, D]: row i is 1 on the columns of representation i; owner @ A @ owner.T sums blocks.
    owner = features.new_zeros(len(blocks), features.shape[1])
    start = 0
    for index, block in enumerate(blocks):
        owner[index, start : start + block.shape[1]] = 1.0
        start += block.shape[1]
    sums = features.sum(dim=0)  # [D], ~0 after centring, kept for exactness
    products = features.T @ features  # [D, D]: X_iᵀ X_j for every pair
    if not unbiased:
        products -= torch.outer(sums, sums) / n
        return owner @ products.square_() @ owner.T / (n - 1) ** 2
    norms = features.square() @ owner.T  # [n, P]: k_r = |x_r|² per representation
    ones_k_ones = owner @ sums.square() - norms.sum(dim=0)  # 1ᵀK̃1 [P]
    row_sums = (features * sums) @ owner.T - norms  # K̃1 = X s - k [n, P]
    value = (
        owner @ products.square_() @ owner.T
        - norms.T @ norms
        + torch.outer(ones_k_ones, ones_k_ones) / ((n - 1) * (n - 2))
        - 2 * (row_sums.T @ row_sums) / (n - 2)
    )
    return value / (n * (n - 3))


def _batch_hsic(
    named: Sequence[tuple[str, torch.Tensor]], kernel: str, unbiased: bool, rbf_threshold: float
) -> torch.Tensor:
    """HSIC [P, P] float64 of all pairs of P representations of one batch, by the cheaper route.

    The feature route (linear kernel only) when the total width D of the flattened features is
    below the batch size n, else Grams; both compute the same estimator exactly. The result is
    symmetric with its self terms on the diagonal.
    """
    counts = {name: tensor.shape[0] for name, tensor in named}
    if len(set(counts.values())) != 1:
        raise ReprlabError(f"representations disagree on the number of examples: {counts}")
    n = next(iter(counts.values()))
    _require_examples(n, unbiased)
    width = sum(tensor[:1].numel() for _, tensor in named)
    if kernel == "linear" and width < n:
        matrix = _feature_hsic(named, unbiased)
        return (matrix + matrix.T) / 2
    names = [name for name, _ in named]
    grams = gram_stack([tensor for _, tensor in named], names, kernel=kernel,
                       rbf_threshold=rbf_threshold)  # fmt: skip
    return hsic_matrix(grams, unbiased=unbiased)


def _zero_variance_error(names: Sequence[str]) -> ReprlabError:
    return ReprlabError(
        f"representation {', '.join(map(repr, names))} is constant over all examples "
        "(HSIC(K, K) = 0), so its CKA is undefined; leave it out"
    )


def cka(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: str = "linear",
    unbiased: bool = True,
    rbf_threshold: float = 1.0,
) -> float:
    """CKA between representations ``x`` [n, ...] and ``y`` [n, ...] of the same n examples.

    ``unbiased=True`` (the default, as everywhere in reprlab) uses Song et al.'s HSIC estimator
    (Kornblith's "debiased" CKA, can be slightly negative; n >= 4); ``unbiased=False`` is
    Kornblith et al.'s CKA, in [0, 1].
    ``rbf_threshold`` is the RBF bandwidth as a fraction of the median distance.
    """
    _check_kernel(kernel)
    matrix = _batch_hsic([("x", x), ("y", y)], kernel, unbiased, rbf_threshold)
    (self_x, cross), (_, self_y) = matrix.tolist()
    constant = [name for name, value in (("x", self_x), ("y", self_y)) if value <= 0]
    if constant:
        raise _zero_variance_error(constant)
    return cross / math.sqrt(self_x * self_y)


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al., ICLR 2021) between p row and q column representations.

    Each batch adds its HSIC(K, L) matrix [p, q] and self terms HSIC(K, K) [p], HSIC(L, L) [q]
    (float64, on the device of the batch); :meth:`compute` returns
    ``ΣHSIC(K, L) / sqrt(ΣHSIC(K, K) ΣHSIC(L, L))``. Every batch weighs the same. With the
    unbiased estimator (default) the result barely depends on the batch size; with the biased
    one it is inflated at small batches. One batch holding the whole set gives the exact
    full-data estimator.

    Give only ``row_names`` for a within-model matrix (p x p, each batch feeds one feature list,
    Grams computed once); give ``col_names`` too for a cross matrix (each batch feeds two lists).

    Example::

        acc = MinibatchCKA(["conv1", "fc"])
        for x in batches:
            acc.update([f1(x), f2(x)])
        matrix = acc.compute()  # [2, 2]
    """

    def __init__(
        self,
        row_names: Sequence[str],
        col_names: Sequence[str] | None = None,
        *,
        kernel: str = "linear",
        unbiased: bool = True,
        rbf_threshold: float = 1.0,
    ) -> None:
        _check_kernel(kernel)
        if not row_names or (col_names is not None and not col_names):
            raise ValueError("MinibatchCKA needs at least one row and one column name")
        self.row_names = tuple(row_names)
        self.within = col_names is None
        self.col_names = self.row_names if col_names is None else tuple(col_names)
        self.kernel = kernel
        self.unbiased = unbiased
        self.rbf_threshold = rbf_threshold
        self.n_examples = 0
        self.n_batches = 0
        self._cross: torch.Tensor | None = None
        self._row_self: torch.Tensor | None = None
        self._col_self: torch.Tensor | None = None

    def grams(self, features: FeatureList, *, columns: bool = False) -> torch.Tensor:
        """Grams [p, n, n] (or [q, n, n] with ``columns=True``) of one batch's features.

        ``features``: tensors [n, ...] in name order, or a mapping name -> tensor.
        """
        names = self.col_names if columns else self.row_names
        return gram_stack(features, names, kernel=self.kernel, rbf_threshold=self.rbf_threshold)

    def update(self, features_a: FeatureList, features_b: FeatureList | None = None) -> None:
        """Add one batch given as features (see :meth:`grams`); ``features_b`` only if cross.

        Takes the cheaper exact route (module docstring): Grams, or for the linear kernel and
        representations narrower in total than the batch, feature space.
        """
        if self.within != (features_b is None):
            raise ValueError("pass features_b exactly when the accumulator has column names")
        named = _named(features_a, self.row_names)
        if features_b is not None:
            cols = _named(features_b, self.col_names)
            sizes = {tensor.shape[0] for _, tensor in named}, {t.shape[0] for _, t in cols}
            if len(sizes[0]) == len(sizes[1]) == 1 and sizes[0] != sizes[1]:
                raise ReprlabError(
                    f"the two sides of a CKA batch differ in size ({sizes[0].pop()} vs "
                    f"{sizes[1].pop()} examples)"
                )
            named = named + cols
        matrix = _batch_hsic(named, self.kernel, self.unbiased, self.rbf_threshold)
        n = named[0][1].shape[0]
        p = len(self.row_names)
        if self.within:
            # The diagonal itself, so that the within-model diagonal comes out exactly 1.
            self._add(matrix, matrix.diagonal().clone(), None, n)
        else:
            diagonal = matrix.diagonal()
            self._add(matrix[:p, p:].clone(), diagonal[:p].clone(), diagonal[p:].clone(), n)

    def add_grams(self, grams_a: torch.Tensor, grams_b: torch.Tensor | None = None) -> None:
        """Add one batch given as Gram stacks [p, n, n] (and [q, n, n] if cross) of this kernel."""
        if self.within != (grams_b is None):
            raise ValueError("pass grams_b exactly when the accumulator has column names")
        if grams_a.ndim != 3 or grams_a.shape[0] != len(self.row_names):
            raise ValueError(f"expected {len(self.row_names)} row Grams, got {grams_a.shape}")
        if grams_b is not None and grams_b.shape[0] != len(self.col_names):
            raise ValueError(f"expected {len(self.col_names)} column Grams, got {grams_b.shape}")
        n = grams_a.shape[-1]
        if grams_b is not None and grams_b.shape[-1] != n:
            raise ReprlabError(
                f"the two sides of a CKA batch differ in size ({n} vs {grams_b.shape[-1]} examples)"
            )
        _require_examples(n, self.unbiased)
        normaliser = _normaliser(n, self.unbiased)
        with _one_thread(grams_a.device):  # O(P² n²) next to the O(P n² d) of the Grams
            flat_a = _centred(grams_a, self.unbiased).flatten(1)
            if grams_b is None:
                cross = flat_a @ flat_a.T / normaliser
                self._add(cross, cross.diagonal().clone(), None, n)
            else:
                flat_b = _centred(grams_b, self.unbiased).flatten(1)
                self._add(
                    flat_a @ flat_b.T / normaliser,
                    torch.linalg.vecdot(flat_a, flat_a) / normaliser,
                    torch.linalg.vecdot(flat_b, flat_b) / normaliser,
                    n,
                )

    def _add(
        self,
        cross: torch.Tensor,
        row_self: torch.Tensor,
        col_self: torch.Tensor | None,
        n: int,
    ) -> None:
        """Add one batch's HSIC [p, q] and self terms [p] (and [q] if cross) to the sums."""
        if self._cross is None or self._row_self is None:
            self._cross, self._row_self, self._col_self = cross, row_self, col_self
        else:
            self._cross += cross
            self._row_self += row_self
            if self._col_self is not None and col_self is not None:
                self._col_self += col_self
        self.n_examples += n
        self.n_batches += 1

    def compute(self) -> torch.Tensor:
        """CKA matrix [p, q] float64 on the CPU; rows follow ``row_names``, columns ``col_names``.

        Raises ReprlabError if no batch was added or a representation was constant throughout.
        """
        if self._cross is None or self._row_self is None:
            raise ReprlabError("no batches were given to the CKA accumulator; check the inputs")
        row_self = self._row_self.cpu()
        col_self = row_self if self._col_self is None else self._col_self.cpu()
        constant = [name for name, v in zip(self.row_names, row_self, strict=True) if v <= 0]
        if not self.within:
            constant += [name for name, v in zip(self.col_names, col_self, strict=True) if v <= 0]
        if constant:
            raise _zero_variance_error(constant)
        return self._cross.cpu() / torch.sqrt(torch.outer(row_self, col_self))
