"""Figures: accuracy curves, training curves, CKA heatmaps (matplotlib, Agg backend).

Functions take plain numbers and return a matplotlib Figure; the run directory saves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

CKA_COLORMAP = "inferno"  # Cianfarani et al. 2022


def accuracy_vs_eps(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str
) -> Figure:
    """Accuracy (%) against attack radius, one line per label: ``{label: (eps, accuracy)}``."""
    figure, ax = plt.subplots(figsize=(5, 3.6))
    for label, (eps, accuracy) in curves.items():
        ax.plot(eps, 100 * np.asarray(accuracy), marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return figure


def training_curves(history: Sequence[Mapping[str, Any]], *, title: str) -> Figure:
    """Loss and accuracies per epoch from a training history (one record per epoch)."""
    epochs = [r["epoch"] for r in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.3)
    names = (
        ["train_acc", *sorted(k for k in history[0] if k.startswith("eval_"))] if history else []
    )
    for name in names:
        acc_ax.plot(epochs, [100 * r[name] for r in history], marker="o", label=name)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def cka_scale(*matrices: np.ndarray) -> tuple[float, str]:
    """(lowest value of the colour scale, colour-bar label) for CKA heatmaps.

    The scale runs from 0 to 1 unless a value is negative (the unbiased estimator can give
    slightly negative CKA for unrelated layers): then it starts at that value, rounded down to
    0.05, and the label says so, so no value is clipped.
    """
    lowest = min(float(np.nanmin(m)) for m in matrices)
    if lowest >= 0:
        return 0.0, "CKA"
    return float(np.floor(lowest * 20) / 20), "CKA (scale extends below 0: unbiased estimates)"


def _draw_heatmap(
    ax: Any,
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    vmin: float,
) -> Any:
    image = ax.imshow(
        matrix,
        origin="lower",
        cmap=CKA_COLORMAP,
        vmin=vmin,
        vmax=1.0,
        interpolation="nearest",
        aspect="auto",
    )
    fontsize = 7 if max(len(rows), len(cols)) <= 24 else 5
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    return image


def cka_heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    title: str,
    row_model: str,
    col_model: str,
) -> Figure:
    """Layer×layer CKA on a 0–1 colour scale (extended below 0 when a value is negative, see
    :func:`cka_scale`); the first layers sit at the bottom-left.

    ``matrix[i, j]`` is the similarity of row tap ``rows[i]`` (of ``row_model``, y axis) and
    column tap ``cols[j]`` (of ``col_model``, x axis).
    """
    side = min(10.0, 2.5 + 0.28 * max(len(rows), len(cols)))
    figure, ax = plt.subplots(figsize=(side + 1.2, side + 0.4), layout="constrained")
    vmin, label = cka_scale(matrix)
    image = _draw_heatmap(
        ax, matrix, rows, cols, title, f"{col_model} layer", f"{row_model} layer", vmin
    )
    figure.colorbar(image, ax=ax, label=label)
    return figure


def cka_panels(
    panels: Sequence[tuple[np.ndarray, Sequence[str], Sequence[str], str, str, str]], *, title: str
) -> Figure:
    """Side-by-side CKA heatmaps sharing one colour bar (0–1, or lower, see :func:`cka_scale`).

    Each panel is (matrix, row taps, column taps, panel title, row model, column model).
    """
    size = max(max(len(p[1]), len(p[2])) for p in panels)
    side = min(7.0, 2.5 + 0.22 * size)
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(side * len(panels) + 1.5, side + 1.0),
        squeeze=False,
        layout="constrained",
    )
    vmin, label = cka_scale(*(p[0] for p in panels))
    image = None
    for ax, (matrix, rows, cols, panel_title, row_model, col_model) in zip(
        axes[0], panels, strict=True
    ):
        image = _draw_heatmap(
            ax, matrix, rows, cols, panel_title, f"{col_model} layer", f"{row_model} layer", vmin
        )
    figure.colorbar(image, ax=list(axes[0]), label=label, shrink=0.8)
    figure.suptitle(title, fontsize=9)
    return figure


def layer_curves(
    curves: Mapping[str, Sequence[float]], taps: Sequence[str], *, title: str, ylabel: str
) -> Figure:
    """One value per layer (e.g. same-layer CKA), one line per label, layers in forward order."""
    figure, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(taps) + 2), 3.6))
    for label, values in curves.items():
        ax.plot(range(len(taps)), values, marker="o", label=label)
    ax.set_xticks(range(len(taps)), taps, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    return figure


# --- image grids and quantile curves (inversion, Engstrom et al. 2019) --------------------------


def image_grid(
    rows: Sequence[tuple[str, np.ndarray]],
    *,
    title: str,
    column_labels: Sequence[str] | None = None,
    cell: float = 1.1,
) -> Figure:
    """Images in rows, as a paper shows them: one labelled row per ``(label, images)``.

    ``images`` [k, c, h, w] float in [0, 1] (c = 1 grey, c = 3 colour); rows may differ in length
    (missing cells stay empty). ``column_labels`` title the top row's columns.
    """
    columns = max((len(images) for _, images in rows), default=1)
    figure, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(1.6 + cell * columns, 0.45 + cell * len(rows)),
        squeeze=False,
    )
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            image = np.clip(np.asarray(images[c], dtype=np.float32), 0.0, 1.0)
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
            if r == 0 and column_labels is not None and c < len(column_labels):
                ax.set_title(column_labels[c], fontsize=6)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.97), pad=0.2, w_pad=0.1, h_pad=0.1)
    return figure


def quantile_curves(
    x: Sequence[float],
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    reference: float | None = None,
) -> Figure:
    """Median line and interquartile band per label: ``{label: (median, q1, q3)}`` over ``x``.

    ``reference``: a horizontal dotted line (e.g. a threshold the text refers to).
    """
    figure, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, (median, low, high) in curves.items():
        (line,) = ax.plot(x, median, marker="o", markersize=3, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":", linewidth=1)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(x) <= 12:  # a grid of radii: label each one
            ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return figure
