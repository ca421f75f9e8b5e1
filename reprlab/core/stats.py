"""Mean ± standard deviation over repeats: the one way every study reports its spread."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_std(values: Iterable[float] | np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof = 1, as a paper's ± over seeds) along ``axis``.

    One value along ``axis`` has std 0; no value gives NaN for both. Scalars for 1-d input
    (as NumPy float64), arrays otherwise.
    """
    data = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, float)
    if data.ndim == 0 or data.shape[axis] == 0:
        return np.float64(np.nan), np.float64(np.nan)
    mean = data.mean(axis=axis)
    if data.shape[axis] == 1:
        return mean, np.zeros_like(mean)
    return mean, data.std(axis=axis, ddof=1)
