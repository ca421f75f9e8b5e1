"""Figures show every value: CKA heatmaps extend their scale below 0 when estimates are negative."""

from __future__ import annotations

import numpy as np

from reprlab.io import plots


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


def test_image_grid_rows_are_labelled_and_short_rows_leave_cells_empty() -> None:
    grey = np.full((3, 1, 4, 4), 0.5)
    colour = np.zeros((2, 3, 4, 4))
    figure = plots.image_grid(
        [("target", grey), ("robust", colour)], title="t", column_labels=["a", "b", "c"]
    )
    axes = np.array(figure.axes).reshape(2, 3)
    assert axes[0, 0].get_ylabel() == "target" and axes[1, 0].get_ylabel() == "robust"
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    assert not axes[1, 2].axison and len(axes[1, 2].images) == 0  # row 2 has two images
    assert axes[0, 0].images[0].get_array().shape == (4, 4)  # grey: one channel shown as 2-d
    assert axes[1, 0].images[0].get_array().shape == (4, 4, 3)


def test_quantile_curves_label_each_radius_on_a_log_axis() -> None:
    eps = [0.25, 0.5, 1.0, 8.0]
    median = np.array([0.9, 0.8, 0.5, 0.1])
    figure = plots.quantile_curves(
        eps, {"m": (median, median - 0.1, median + 0.1)}, title="t", xlabel="ε",
        ylabel="d", log_x=True,
    )  # fmt: skip
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.25", "0.5", "1", "8"]
    assert np.allclose(ax.lines[0].get_ydata(), median)
