"""Figures name each model with its threat and the run's overrides; clean and robust curves
differ in colour; epoch axes tick whole numbers."""

from __future__ import annotations

from pathlib import Path

from reprlab.io import plots
from reprlab.io.runs import RunDirectory

RECORD = {
    "models": {
        "model": {"name": "cnn_small_at", "threat": "PGD-AT L∞ 0.2", "key": "k1"},
        "ref": {"name": "cnn_small", "threat": "standard", "key": "k0"},
    },
    "overrides": ["model=cnn_small_at", "dataset.train_limit=2000", "paths.outputs=/tmp/x"],
}


def test_notes_name_models_with_threat_and_the_overrides_that_change_numbers() -> None:
    assert plots.figure_notes(RECORD) == [
        "model: cnn_small_at · PGD-AT L∞ 0.2    ref: cnn_small · standard",
        "overrides: dataset.train_limit=2000",
    ]
    assert plots.figure_notes({}) == []


def test_saved_figures_carry_the_notes(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.update(**RECORD)
    figure = plots.accuracy_vs_eps({"PGD-20": ([0, 0.1], [0.9, 0.5])}, title="t", xlabel="ε")
    texts = []
    original = figure.savefig
    figure.savefig = lambda *a, **k: (texts.extend(t.get_text() for t in figure.texts),
                                      original(*a, **k))  # fmt: skip
    run.save_figure("accuracy", figure)
    assert any("cnn_small_at · PGD-AT L∞ 0.2" in t and "dataset.train_limit=2000" in t
               for t in texts)  # fmt: skip
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_training_curves_separate_clean_and_robust_and_tick_whole_epochs() -> None:
    history = [
        {"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "train_robust_acc": 0.3,
         "val_clean_acc": 0.6, "val_robust_acc": 0.4}
        for e in (1, 2, 3)
    ]  # fmt: skip
    figure = plots.robust_training_curves(history, best_epoch=None, title="t")
    accuracy = figure.axes[1]
    colours = {line.get_label(): line.get_color() for line in accuracy.get_lines()}
    assert colours["train clean"] == colours["val clean"] == plots.CLEAN
    assert colours["train robust (training adversary)"] == colours["val robust"] == plots.ROBUST
    figure.canvas.draw()
    ticks = [t for t in accuracy.get_xticks() if 1 <= t <= 3]
    assert ticks == [1, 2, 3]
