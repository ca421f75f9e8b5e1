"""``analysis=train``: obtain a model recipe from the store (training it if missing).

Writes the per-epoch metrics as CSV and the training curves: loss, and clean and robust accuracy
on the training batches and on the held-out split (the validation split when the recipe has one)
per epoch, with the best-robust epoch marked (robust overfitting, Rice et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab.analyses import settings_once
from reprlab.io import plots
from reprlab.io.tables import threat_text
from reprlab.run.config import typed
from reprlab.run.context import RunContext
from reprlab.run.recipes import describe_adversary


@dataclass
class Settings:
    """``analysis=train`` has no parameters beyond the model recipe, which every run checks."""

    name: str


@settings_once
def settings(cfg: DictConfig) -> Settings:
    return typed(cfg.analysis, Settings, "analysis")


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    loaded = ctx.model("model")
    history = loaded.entry.history()
    summary: dict[str, Any] = {
        "key": loaded.key,
        "adversary": describe_adversary(loaded.recipe),
        "epochs": len(history),
        "train_seconds": loaded.entry.meta.get("train_seconds"),
    }
    best = loaded.entry.meta.get("best")
    best_epoch = int(best["epoch"]) if isinstance(best, dict) else None
    if history:
        ctx.run.write_csv("metrics", pd.DataFrame(history))
        title = f"{loaded.label} · {threat_text(loaded.recipe.adversary)} on {ctx.dataset.name}"
        figure = plots.robust_training_curves(history, best_epoch=best_epoch, title=title)
        ctx.run.save_figure("training_curves", figure)
        summary.update(
            {k: v for k, v in history[-1].items() if k.startswith(("eval_", "val_", "train_"))}
        )
    if best_epoch is not None:
        summary["best_epoch"] = best_epoch
        robust = "val_robust_acc"
        at_best = [r for r in history if r["epoch"] == best_epoch]
        if at_best and robust in at_best[0] and history:
            summary["best_val_robust_acc"] = at_best[0][robust]
            summary["robust_overfitting_gap"] = at_best[0][robust] - history[-1][robust]
    _print_summary(f"{loaded.label} · {threat_text(loaded.recipe.adversary)}", summary, history)
    return summary


def _print_summary(label: str, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The final epoch's clean and robust accuracy, on the training batches and held out."""
    from reprlab.io.tables import print_table

    if not history:
        return
    last = history[-1]
    rows = [
        {
            "split": split,
            "clean": last.get(clean),
            "robust": last.get(robust),
        }
        for split, clean, robust in (
            ("train batches", "train_acc", "train_robust_acc"),
            ("validation", "val_clean_acc", "val_robust_acc"),
        )
        if last.get(clean) is not None
    ]
    held = sorted(k for k in last if k.startswith("eval_"))
    if held:
        rows.append(
            {
                "split": "test monitor",
                "clean": next((last[k] for k in held if "clean" in k), None),
                "robust": next((last[k] for k in held if "clean" not in k), None),
            }
        )
    epochs = summary["epochs"]
    print_table(
        rows,
        title=f"{label} after {epochs} epoch{'s' * (epochs != 1)}:",
        common=False,
    )
