"""``analysis=cka``: layer×layer CKA within ``model``, or between ``model`` and ``ref``.

Within one model (Cianfarani et al. 2022, Fig. 1): the heatmap shows block structure in standard
networks that robust training dissolves. With ``ref=<recipe>`` the heatmap compares the two
models' layers, and the same-layer diagonal is drawn as a curve.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab.analyses import cka_common as common
from reprlab.analyses import settings_once
from reprlab.analyses.cka_common import CKASettings
from reprlab.io import plots
from reprlab.methods.layerwise import Member
from reprlab.run.context import RunContext


@settings_once
def settings(cfg: DictConfig) -> CKASettings:
    return common.settings(cfg)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    first = ctx.model("model")
    second = ctx.model("ref") if cfg.get("ref") is not None else None
    source = common.sample(s, ctx)
    description = common.describe_inputs(s, source, first.label)
    if second is None:
        label = first.label
        members = [Member(label, first.model, common.taps_of(s, first.model))]
        result = common.compute(s, ctx, members, source, target_index=0)
        within = result.block(label, label)
        common.write_matrix(
            ctx,
            f"cka_{label}",
            within,
            title=common.title(s, ctx, f"CKA within {label}", result, description),
            row_model=label,
            col_model=label,
        )
        summary = {
            **common.summary_base(result, description),
            "model": label,
            "mean_off_diagonal": common.mean_off_diagonal(within.matrix),
        }
        ctx.run.write_json("cka", summary)
        common.print_matrices(f"CKA within {label} ({description}):", {label: within})
        return summary

    label_a, label_b = first.label, second.label
    if label_a == label_b:
        label_a, label_b = f"{label_a} (model)", f"{label_b} (ref)"
    members = [
        Member(label_a, first.model, common.taps_of(s, first.model)),
        Member(label_b, second.model, common.taps_of(s, second.model)),
    ]
    result = common.compute(s, ctx, members, source, target_index=0)
    cross = result.block(label_a, label_b)
    name = f"cka_{first.label}_vs_{second.label}"
    common.write_matrix(
        ctx,
        name,
        cross,
        title=common.title(s, ctx, f"CKA {label_a} vs {label_b}", result, description),
        row_model=label_a,
        col_model=label_b,
    )
    summary = {
        **common.summary_base(result, description),
        "model": first.label,
        "ref": second.label,
    }
    taps, values = common.same_layer(cross)
    if taps:
        ctx.run.write_csv(f"{name}_same_layer", pd.DataFrame({"tap": taps, "cka": values}))
        figure = plots.layer_curves(
            {f"{label_a} vs {label_b}": values},
            taps,
            title=f"same-layer CKA · {ctx.dataset.name} · N={result.n_examples} · {description}",
            ylabel="CKA",
        )
        ctx.run.save_figure(f"{name}_same_layer", figure)
        summary["mean_same_layer"] = float(values.mean())
    ctx.run.write_json("cka", summary)
    both = f"{label_a} vs {label_b}"
    common.print_matrices(f"CKA ({description}):", {both: cross}, cross=[both])
    return summary
