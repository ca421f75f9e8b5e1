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


def robust_training_curves(
    history: Sequence[Mapping[str, Any]], *, best_epoch: int | None, title: str
) -> Figure:
    """Loss, and clean and robust accuracy on the training batches and the held-out split per
    epoch (robust overfitting, Rice et al. 2020), with the best-robust epoch marked."""
    epochs = [r["epoch"] for r in history]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.3)
    first = history[0] if history else {}
    held_out = [k for k in first if k.startswith(("val_", "eval_"))]
    curves = [
        ("train_acc", "train clean", "C0", "-"),
        ("train_robust_acc", "train robust (training adversary)", "C0", "--"),
        *[(k, k.replace("_acc", "").replace("_", " "), "C1", "--" if "clean" not in k else "-")
          for k in held_out],
    ]  # fmt: skip
    for key, label, color, style in curves:
        if key in first:
            values = [100 * r[key] for r in history]
            acc_ax.plot(epochs, values, marker="o", color=color, linestyle=style, label=label)
    if best_epoch is not None:
        acc_ax.axvline(best_epoch, color="C3", alpha=0.6, label=f"best robust epoch {best_epoch}")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
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
