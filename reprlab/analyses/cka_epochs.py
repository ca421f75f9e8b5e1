"""``analysis=cka_epochs``: CKA of ``model`` across training, from its kept epoch snapshots.

A within-model heatmap per epoch, and per layer the CKA of each epoch's representation with the
final one (Cianfarani et al. 2022: robust overfitting mostly changes the deeper layers).
``analysis.epochs=[best]`` compares the best-robust-validation epoch (kept by recipes with
``validation.keep_best``) with the last. Only the
blocks drawn are computed (each epoch with itself and with the final epoch), so time and memory
grow linearly with the number of epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab.analyses import cka_common as common
from reprlab.analyses import settings_once
from reprlab.analyses.cka_common import CKASettings
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.methods.layerwise import Member
from reprlab.run.config import recipe
from reprlab.run.context import RunContext


@dataclass
class Settings(CKASettings):
    """CKA settings plus ``epochs``: snapshot epochs to compare with the final one (None: all
    kept; ``best``: the best-robust-validation epoch)."""

    epochs: list[Any] | None = None


BEST = "best"


@settings_once
def settings(cfg: DictConfig) -> Settings:
    s: Settings = common.settings(cfg, Settings)
    spec = recipe(cfg.model)
    final = spec.train.epochs
    wants_best = s.epochs is not None and BEST in s.epochs
    if not wants_best and final == 1:
        raise ReprlabError(
            "cka_epochs compares earlier epochs' snapshots with the final one, but the model "
            "trains for model.train.epochs=1; train for more, e.g. model.train.epochs=2"
        )
    if not wants_best and not any(e != final for e in spec.snapshot_epochs):
        raise ReprlabError(
            f"cka_epochs compares kept snapshots with the final epoch, but model.snapshot_epochs="
            f"{spec.snapshot_epochs} keeps none before epoch {final}; keep one, "
            f"e.g. model.snapshot_epochs=[1,{final}]"
        )
    if s.epochs is None:
        return s
    if BEST in s.epochs and (spec.validation is None or not spec.validation.keep_best):
        raise ReprlabError(
            "analysis.epochs has 'best', but the model recipe keeps no best-robust epoch; "
            "set model.validation.keep_best=true (with a validation split)"
        )
    bad = [e for e in s.epochs if e != BEST and (isinstance(e, bool) or not isinstance(e, int))]
    if bad:
        raise ReprlabError(f"analysis.epochs has {bad}; give epoch numbers or 'best'")
    kept = set(spec.snapshot_epochs) | {final}
    unknown = sorted(e for e in s.epochs if e != BEST and e not in kept)
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
    best = loaded.entry.meta.get("best")
    best_epoch = int(best["epoch"]) if isinstance(best, dict) else None
    if s.epochs is not None and BEST in s.epochs and best_epoch == final:
        raise ReprlabError(
            f"{loaded.label}'s best robust validation epoch is its last ({final}); there is no "
            "earlier best epoch to compare"
        )
    chosen = None if s.epochs is None else {best_epoch if e == BEST else e for e in s.epochs}
    wanted = kept if chosen is None else sorted(chosen)
    wanted = [e for e in wanted if e != final]
    missing = [e for e in wanted if e not in kept]
    if missing or not wanted:
        raise ReprlabError(
            f"{loaded.label} has no snapshot for epoch(s) {missing or 'any before the last'} "
            f"(kept: {kept or 'none'}); choose from those, or retrain with "
            f"model.snapshot_epochs=[...] after `reprlab cache rm {loaded.key}`"
        )
    labels = [f"epoch {e}" + (" (best)" if e == best_epoch else "") for e in wanted]
    labels.append(f"epoch {final} (final)")
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
    common.print_matrices(
        f"CKA within {loaded.label} across training ({description}):",
        {label: result.block(label, label) for label in labels},
    )
    return summary
