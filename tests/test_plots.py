"""Figures show every value: CKA heatmaps extend their scale below 0 when estimates are negative."""

from __future__ import annotations

import numpy as np

from reprlab import plots


def test_cka_scale_is_zero_to_one_unless_a_value_is_negative() -> None:
    assert plots.cka_scale(np.array([[1.0, 0.2], [0.2, 1.0]])) == (0.0, "CKA")
    vmin, label = plots.cka_scale(np.eye(2), np.array([[1.0, -0.07], [-0.07, 1.0]]))
    assert vmin == -0.1 and "below 0" in label


def test_heatmap_colour_bar_covers_negative_unbiased_estimates() -> None:
    matrix = np.array([[1.0, -0.03], [-0.03, 1.0]])
    figure = plots.cka_heatmap(
        matrix, ["a", "b"], ["a", "b"], title="t", row_model="m", col_model="m"
    )
    image = figure.axes[0].images[0]
    low, high = image.get_clim()
    assert low <= matrix.min() and high == 1.0
    assert "below 0" in figure.axes[1].get_ylabel()
