"""``analysis=cka_epochs``: CKA of ``model`` across training, from its kept epoch snapshots.

A within-model heatmap per epoch, and per layer the CKA of each epoch's representation with the
final one (Cianfarani et al. 2022: robust overfitting mostly changes the deeper layers). Only the
blocks drawn are computed (each epoch with itself and with the final epoch), so time and memory
grow linearly with the number of epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab import plots
from reprlab.analyses import cka_common as common
from reprlab.analyses.cka_common import CKASettings
from reprlab.config import recipe
from reprlab.context import RunContext
from reprlab.errors import ReprlabError
from reprlab.layerwise import Member


@dataclass
class Settings(CKASettings):
    """CKA settings plus ``epochs``: snapshot epochs to compare with the final one (None: all)."""

    epochs: list[int] | None = None


def settings(cfg: DictConfig) -> Settings:
    s: Settings = common.settings(cfg, Settings)
    spec = recipe(cfg.model)
    final = spec.train.epochs
    if not any(e != final for e in spec.snapshot_epochs):
        raise ReprlabError(
            f"cka_epochs compares kept snapshots with the final epoch, but model.snapshot_epochs="
            f"{spec.snapshot_epochs} keeps none before epoch {final}; keep one, "
            f"e.g. model.snapshot_epochs=[1,{final}]"
        )
    if s.epochs is None:
        return s
    kept = set(spec.snapshot_epochs) | {final}
    unknown = sorted(e for e in s.epochs if e not in kept)
    if unknown:
        raise ReprlabError(
            f"analysis.epochs has {unknown}, which model.snapshot_epochs does not keep "
            f"({sorted(kept)}); choose among those"
        )
    if all(e == final for e in s.epochs):
        raise ReprlabError(
            f"analysis.epochs={s.epochs} names only the final epoch; add an earlier kept one "
            f"({sorted(kept - {final})})"
        )
    return s


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    loaded = ctx.model("model")
    final = loaded.recipe.train.epochs
    kept = [e for e in loaded.entry.snapshot_epochs() if e != final]
    wanted = kept if s.epochs is None else sorted(set(s.epochs))
    wanted = [e for e in wanted if e != final]
    missing = [e for e in wanted if e not in kept]
    if missing or not wanted:
        raise ReprlabError(
            f"{loaded.label} has no snapshot for epoch(s) {missing or 'any before the last'} "
            f"(kept: {kept or 'none'}); choose from those, or retrain with "
            f"model.snapshot_epochs=[...] after `reprlab cache rm {loaded.key}`"
        )
    labels = [f"epoch {e}" for e in wanted] + [f"epoch {final} (final)"]
    final_label = labels[-1]
    models = [
        ctx.load(loaded.recipe, loaded.entry.load_snapshot(e), f"{loaded.key} epoch {e}")
        for e in wanted
    ]
    models.append(loaded.model)
    taps = common.taps_of(s, loaded.model)
    members = [Member(label, model, taps) for label, model in zip(labels, models, strict=True)]
    source = common.sample(s, ctx)
    description = common.describe_inputs(s, source, final_label)
    groups = [(label, final_label) for label in labels[:-1]]
    result = common.compute(s, ctx, members, source, len(members) - 1, groups=groups)

    to_final = {}
    summary: dict[str, Any] = {
        **common.summary_base(result, description),
        "model": loaded.label,
        "epochs": [*wanted, final],
    }
    for epoch, label in zip([*wanted, final], labels, strict=True):
        within = result.block(label, label)
        common.write_matrix(
            ctx,
            f"cka_epoch_{epoch:03d}",
            within,
            title=common.title(s, ctx, f"CKA within {loaded.label}, {label}", result, description),
            row_model=label,
            col_model=label,
        )
        summary[f"mean_off_diagonal.epoch_{epoch}"] = common.mean_off_diagonal(within.matrix)
        if epoch != final:
            _, values = common.same_layer(result.block(label, final_label))
            to_final[label] = values
            summary[f"mean_cka_to_final.epoch_{epoch}"] = float(values.mean())
    table = pd.DataFrame(to_final, index=list(taps)).T
    table.index.name = "epoch"
    ctx.run.write_csv("cka_to_final", table, index=True)
    ctx.run.save_figure(
        "cka_to_final",
        plots.layer_curves(
            to_final,
            list(taps),
            ylabel=f"CKA with epoch {final}",
            title=f"{loaded.label} across training · {ctx.dataset.name} · N={result.n_examples} · "
            f"{description}",
        ),
    )
    ctx.run.write_json("cka", summary)
    return summary
