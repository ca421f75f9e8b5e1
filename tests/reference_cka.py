"""An independent float64 NumPy CKA, written from the papers' formulas, for tests to compare with.

Shares no code with reprlab.methods.similarity: plain Grams of flattened features, the unbiased
HSIC of
Song et al. (2012) written term by term, the biased HSIC with an explicit centring matrix, and
minibatch CKA (Nguyen et al. 2021) as the ratio of HSIC sums over batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _gram(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return x @ x.T


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    trace = np.trace(k @ l)
    middle = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return float((trace + middle - last) / (n * (n - 3)))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def minibatch_cka(batches_a: Sequence, batches_b: Sequence, *, unbiased: bool = True) -> float:
    """CKA of two representations given batch by batch (row i of a and b: the same example)."""
    hsic = hsic_unbiased if unbiased else hsic_biased
    xy = xx = yy = 0.0
    for a, b in zip(batches_a, batches_b, strict=True):
        k, l = _gram(a), _gram(b)  # noqa: E741
        xy += hsic(k, l)
        xx += hsic(k, k)
        yy += hsic(l, l)
    return xy / np.sqrt(xx * yy)


def cka_matrix(
    rows: dict[str, list], cols: dict[str, list], *, unbiased: bool = True
) -> np.ndarray:
    """[p, q] minibatch CKA between every row representation and every column one; each value
    of ``rows``/``cols`` is a list of per-batch feature arrays."""
    return np.array(
        [[minibatch_cka(a, b, unbiased=unbiased) for b in cols.values()] for a in rows.values()]
    )
