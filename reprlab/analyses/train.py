"""``analysis=train``: obtain a model recipe from the store (training it if missing).

Writes the per-epoch metrics (held-out clean and PGD accuracy) as CSV and training curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab import plots
from reprlab.config import typed
from reprlab.context import RunContext
from reprlab.recipes import describe_adversary


@dataclass
class Settings:
    """``analysis=train`` has no parameters beyond the model recipe, which every run checks."""

    name: str


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
    if history:
        ctx.run.write_csv("metrics", pd.DataFrame(history))
        title = f"{loaded.label} on {ctx.dataset.name} ({summary['adversary']})"
        ctx.run.save_figure("training_curves", plots.training_curves(history, title=title))
        summary.update({k: v for k, v in history[-1].items() if k.startswith("eval_")})
    return summary
