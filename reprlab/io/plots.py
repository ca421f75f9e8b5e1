"""Figures: accuracy curves, training curves, CKA heatmaps, bars, image grids (matplotlib, Agg).

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
from matplotlib.ticker import MaxNLocator, NullFormatter

CKA_COLORMAP = "inferno"  # Cianfarani et al. 2022
CLEAN, ROBUST = "#1f77b4", "#d62728"
"""Clean accuracy is blue and robust accuracy red in every figure."""

QUIET_KEYS = ("hydra.", "paths.", "progress", "device", "num_workers")
"""Overrides that change no number, left out of a figure's notes."""


def integer_epochs(ax: Any) -> None:
    """Whole-number ticks on the x axis (epochs)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figure_notes(record: Mapping[str, Any]) -> list[str]:
    """The lines every saved figure carries below it, from its run's run.json: each model with
    its threat (``model: cnn_small_at · PGD-AT L∞ 0.2``) and the run's overrides that change
    numbers (``dataset.train_limit=2000``), so a figure of a reduced run never passes for the
    full one."""
    notes = []
    models = record.get("models") or {}
    named = [
        f"{role}: {entry.get('name')}" + (f" · {entry['threat']}" if entry.get("threat") else "")
        for role, entry in models.items()
        if isinstance(entry, Mapping) and entry.get("name")
    ]
    if named:
        notes.append("    ".join(named))
    overrides = [
        str(o)
        for o in record.get("overrides") or []
        if "." in str(o).split("=", 1)[0] and not str(o).lstrip("+~").startswith(QUIET_KEYS)
    ]
    if overrides:
        notes.append("overrides: " + " ".join(overrides))
    return notes


def annotate(figure: Figure, notes: Sequence[str]) -> None:
    """Write ``notes`` in small grey type below ``figure``'s axes (wrapped to its width)."""
    import textwrap

    if not notes:
        return
    width = max(40, int(figure.get_figwidth() * 16))
    text = "\n".join(line for note in notes for line in textwrap.wrap(note, width))
    # below everything drawn so far (tick labels, axis labels, legends outside the axes)
    bottom = figure.get_tightbbox(figure.canvas.get_renderer()).y0 / figure.get_figheight()
    figure.text(0.5, bottom - 0.02, text, ha="center", va="top", fontsize=7, color="#555555")


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
        colour = ROBUST if ("pgd" in name or "robust" in name) else CLEAN
        style = "-" if name.startswith("train") else "--"
        acc_ax.plot(epochs, [100 * r[name] for r in history], marker="o", label=name,
                    color=colour, linestyle=style)  # fmt: skip
    for ax in (loss_ax, acc_ax):
        integer_epochs(ax)
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

    def colour(key: str) -> str:
        return CLEAN if "clean" in key or key == "train_acc" else ROBUST

    curves = [
        ("train_acc", "train clean", CLEAN, "-"),
        ("train_robust_acc", "train robust (training adversary)", ROBUST, "-"),
        *[(k, k.replace("_acc", "").replace("_", " "), colour(k), "--") for k in held_out],
    ]
    for key, label, color, style in curves:
        if key in first:
            values = [100 * r[key] for r in history]
            acc_ax.plot(epochs, values, marker="o", color=color, linestyle=style, label=label)
    for ax in (loss_ax, acc_ax):
        integer_epochs(ax)
    if best_epoch is not None:
        acc_ax.axvline(best_epoch, color="grey", alpha=0.6, label=f"best robust epoch {best_epoch}")
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
    curves: Mapping[str, Sequence[float]],
    taps: Sequence[str],
    *,
    title: str,
    ylabel: str,
    errors: Mapping[str, Sequence[float]] | None = None,
    xlabel: str = "layer (forward order)",
) -> Figure:
    """One value per layer (e.g. same-layer CKA), one line per label, layers in forward order.

    ``errors`` (optional): per label, the half-length of an error bar at each layer (e.g. the
    standard deviation over repeats).
    """
    figure, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(taps) + 2), 3.6))
    for label, values in curves.items():
        spread = None if errors is None else errors.get(label)
        ax.errorbar(range(len(taps)), values, yerr=spread, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(taps)), taps, rotation=90, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)  # names the models compared, even for one curve
    return figure


def mi_bars(
    labels: Sequence[str],
    *,
    normal: tuple[Sequence[float], Sequence[float]],
    worst: tuple[Sequence[float], Sequence[float]],
    title: str,
) -> Figure:
    """Normal- and worst-case MI estimates (nats) per (model, tap) label, means ± spread
    (Zhu et al. 2020): ``normal``/``worst`` are (means, spreads), one per label."""
    figure, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(labels) + 2), 3.6))
    index = np.arange(len(labels))
    width = 0.38
    ax.bar(index - width / 2, normal[0], width, yerr=normal[1], capsize=3, label="I(X; g(X))")
    ax.bar(index + width / 2, worst[0], width, yerr=worst[1], capsize=3, label="worst case I_ε")
    ax.set_xticks(index, labels, fontsize=7)
    ax.set_ylabel("MI estimate (nats)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return figure


def mi_curves(curves: Mapping[str, Sequence[float]], *, title: str) -> Figure:
    """Held-out MI estimate (nats) per critic epoch, one line per critic label."""
    figure, ax = plt.subplots(figsize=(6, 3.6))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=label)
    ax.set_xlabel("critic epoch")
    integer_epochs(ax)
    ax.set_ylabel("held-out MI estimate (nats)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    return figure


def vulnerability_scatter(
    *,
    points: Sequence[tuple[str, float, float]],
    bounds: Sequence[tuple[str, float, float]],
    title: str,
) -> Figure:
    """Zhu et al. 2020's two views: (left) representation vulnerability RV (nats) against the
    best downstream adversarial accuracy, ``points`` = (label, rv, accuracy); (right) Fano's
    bound against the adversarial accuracy each head reaches, ``bounds`` = (label, bound,
    accuracy), with the diagonal (a head on the diagonal meets the bound)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rv, accuracy in points:
        left.scatter([rv], [100 * accuracy], label=label)
    left.set_xlabel("representation vulnerability RV (nats)")
    left.set_ylabel("best head's adversarial accuracy (%)")
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.legend(fontsize=6)
    right.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=1)
    for label, bound, accuracy in bounds:
        right.scatter([100 * bound], [100 * accuracy], label=label, marker="s")
    right.set_xlabel("Fano bound from worst-case MI (%)")
    right.set_ylabel("head's adversarial accuracy (%)")
    right.set_xlim(0, 105)
    right.set_ylim(0, 105)
    right.grid(alpha=0.3)
    right.legend(fontsize=6)
    figure.suptitle(title, fontsize=8)
    return figure


def learning_principle(
    labels: Sequence[str], *, natural: Sequence[float], adversarial: Sequence[float], title: str
) -> Figure:
    """Natural and adversarial accuracy (%) of downstream heads, one pair of bars per label
    (encoder principle and head), as Zhu et al. 2020's Table 2."""
    figure, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(labels) + 2), 3.6))
    index = np.arange(len(labels))
    width = 0.38
    ax.bar(index - width / 2, 100 * np.asarray(natural), width, label="natural", color=CLEAN)
    ax.bar(index + width / 2, 100 * np.asarray(adversarial), width, label="adversarial",
           color=ROBUST)  # fmt: skip
    ax.set_xticks(index, labels, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return figure


def bars_with_errors(
    bars: Sequence[tuple[str, float, float]], *, title: str, ylabel: str, ylim: float = 1.05
) -> Figure:
    """One bar per (label, value, error) with an error bar of ± error, the value written above.

    NaN values (an undefined quantity) are drawn as an empty slot labelled "n/a".
    """
    figure, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(bars) + 1.5), 4.0))
    positions = np.arange(len(bars))
    values = np.array([v for _, v, _ in bars], dtype=float)
    spreads = np.array([e for _, _, e in bars], dtype=float)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(bars))]
    ax.bar(positions, np.nan_to_num(values), yerr=np.nan_to_num(spreads), capsize=4, color=colours)
    for x, value, spread in zip(positions, values, spreads, strict=True):
        text = "n/a" if np.isnan(value) else f"{value:.3f}\n±{spread:.3f}"
        ax.text(x, np.nan_to_num(value) + 0.02, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(positions, [label for label, _, _ in bars], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(min(0.0, float(np.nanmin(values, initial=0.0))), ylim + 0.1)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=8)
    return figure


def similarity_matrices(
    panels: Sequence[tuple[np.ndarray, np.ndarray | None, str]],
    labels: Sequence[str],
    *,
    title: str,
    row_label: str,
    col_label: str,
) -> Figure:
    """Model×model matrices side by side on one 0–1 scale, each cell annotated.

    Each panel is (values [k, k], spreads [k, k] or None, panel title); cell (i, j) shows the
    value and, when spreads are given, "± spread". Rows are ``labels`` top to bottom, columns
    left to right (the same models on both axes).
    """
    k = len(labels)
    side = 1.2 + 0.9 * k
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(side * len(panels) + 1.5, side + 1.0),
        squeeze=False,
        layout="constrained",
    )
    vmin, label = cka_scale(*(p[0] for p in panels))
    image = None
    for ax, (values, spreads, panel_title) in zip(axes[0], panels, strict=True):
        image = ax.imshow(values, cmap=CKA_COLORMAP, vmin=vmin, vmax=1.0, interpolation="nearest")
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}"
                if spreads is not None:
                    text += f"\n±{spreads[i, j]:.2f}"
                shade = "black" if values[i, j] > vmin + 0.6 * (1.0 - vmin) else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=shade)
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        ax.set_xlabel(col_label, fontsize=8)
        ax.set_ylabel(row_label, fontsize=8)
        ax.set_title(panel_title, fontsize=8)
    figure.colorbar(image, ax=list(axes[0]), label=label, shrink=0.8)
    figure.suptitle(title, fontsize=9)
    return figure


def stitching_curves(
    points: Sequence[str],
    *,
    clean: Sequence[float],
    robust: Sequence[float],
    ls_clean: Sequence[float],
    ls_robust: Sequence[float],
    relative: Sequence[float],
    ls_relative: Sequence[float],
    front: tuple[float, float],
    end: tuple[float, float],
    front_label: str,
    end_label: str,
    title: str,
) -> Figure:
    """The model-stitching figure of Balogh & Jelasity 2023, with a relative-accuracy panel.

    Left: per stitch point (x, forward order), the stitched model's clean and robust accuracy
    (%) as solid curves, the untrained least-squares stitch's dashed, the front and end models'
    own clean and robust accuracy as horizontal lines. Right: relative accuracy (stitched clean
    accuracy / end model's), trained and least squares. Accuracies are fractions in [0, 1].
    """
    x = np.arange(len(points))
    figure, (ax, rel_ax) = plt.subplots(
        1, 2, figsize=(max(9.0, 0.55 * len(points) + 6), 5.2), layout="constrained"
    )
    colours = {"clean": CLEAN, "robust": ROBUST}
    for what, trained, direct in (("clean", clean, ls_clean), ("robust", robust, ls_robust)):
        colour = colours[what]
        ax.plot(x, 100 * np.asarray(trained), marker="o", color=colour, label=f"stitched, {what}")
        ax.plot(
            x,
            100 * np.asarray(direct),
            marker="s",
            markersize=4,
            linestyle="--",
            color=colour,
            alpha=0.8,
            label=f"least squares (untrained), {what}",
        )
    for (name, (base_clean, base_robust)), style in zip(
        ((front_label, front), (end_label, end)), (":", "-."), strict=True
    ):
        ax.axhline(100 * base_clean, color=colours["clean"], linestyle=style, linewidth=1,
                   label=f"{name}, clean")  # fmt: skip
        ax.axhline(100 * base_robust, color=colours["robust"], linestyle=style, linewidth=1,
                   label=f"{name}, robust")  # fmt: skip
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("stitch point (front tap → end tap)")
    ax.set_xticks(x, points, rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    rel_ax.plot(x, relative, marker="o", color="C0", label="stitched")
    rel_ax.plot(x, ls_relative, marker="s", markersize=4, linestyle="--", color="C0",
                alpha=0.8, label="least squares (untrained)")  # fmt: skip
    rel_ax.axhline(1.0, color="grey", linewidth=1)
    top = max([1.05, *(v for v in [*relative, *ls_relative] if np.isfinite(v))])
    rel_ax.set_ylim(0, top + 0.02)
    rel_ax.set_ylabel(f"relative accuracy (clean, / {end_label})")
    rel_ax.set_xlabel("stitch point (front tap → end tap)")
    rel_ax.set_xticks(x, points, rotation=45, ha="right", fontsize=7)
    rel_ax.grid(alpha=0.3)
    rel_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    figure.suptitle(title, fontsize=9)
    return figure


def stitching_matrix(
    panels: Sequence[tuple[np.ndarray, str]],
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    row_model: str,
    col_model: str,
    title: str,
) -> Figure:
    """Heatmaps of stitched accuracy over (front tap, end tap) pairs, one per ``(matrix,
    panel title)``: rows are the front model's taps (y), columns the end model's (x), values
    fractions in [0, 1] drawn as %, NaN (grey, blank) where the shapes cannot be stitched."""
    side = min(8.0, 2.5 + 0.35 * max(len(rows), len(cols)))
    figure, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels) + 1.5, side + 0.8), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    image = None
    for ax, (matrix, panel_title) in zip(axes[0], panels, strict=True):
        values = 100 * np.asarray(matrix, dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=cmap, vmin=0,
                          vmax=100, aspect="auto", interpolation="nearest")  # fmt: skip
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if values[i, j] < 60 else "black")  # fmt: skip
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel(f"{col_model} (end) tap", fontsize=8)
        ax.set_ylabel(f"{row_model} (front) tap", fontsize=8)
        ax.set_title(panel_title, fontsize=8)
    figure.colorbar(image, ax=list(axes[0]), label="accuracy (%)", shrink=0.8)
    figure.suptitle(title, fontsize=9)
    return figure


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
