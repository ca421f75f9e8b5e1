"""``analysis=cka_panels``: the three-panel figure of Cianfarani et al. 2022.

Standard–standard (``ref`` with itself), robust–robust (``model`` with itself) and
standard–robust (``ref`` rows, ``model`` columns), all from one pass over the same images with
one estimator, plus the standard–robust same-layer curve.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab.analyses import cka_common as common
from reprlab.analyses import settings_once
from reprlab.analyses.cka_common import CKASettings
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.methods.layerwise import Member
from reprlab.run.context import RunContext


@settings_once
def settings(cfg: DictConfig) -> CKASettings:
    s = common.settings(cfg)
    if cfg.get("ref") is None:
        raise ReprlabError(
            "cka_panels compares a robust model with a standard ref: add ref=<recipe>, "
            "e.g. model=resnet18_at ref=resnet18"
        )
    return s


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    robust, standard = ctx.model("model"), ctx.model("ref")
    rob, std = robust.label, standard.label
    if rob == std:
        rob, std = f"{rob} (model)", f"{std} (ref)"
    source = common.sample(s, ctx)
    description = common.describe_inputs(s, source, robust.label)
    members = [
        Member(std, standard.model, common.taps_of(s, standard.model)),
        Member(rob, robust.model, common.taps_of(s, robust.model)),
    ]
    result = common.compute(s, ctx, members, source, target_index=1)
    blocks = {
        "ref": (result.block(std, std), std, std),
        "model": (result.block(rob, rob), rob, rob),
        "cross": (result.block(std, rob), std, rob),
    }
    names = {
        "ref": f"cka_{standard.label}",
        "model": f"cka_{robust.label}",
        "cross": f"cka_{standard.label}_vs_{robust.label}",
    }
    for role, (block, _, _) in blocks.items():
        ctx.run.write_csv(names[role], common.matrix_frame(block), index=True)
    panels = [
        (block.matrix.numpy(), block.row_taps, block.col_taps, f"{rows} vs {cols}", rows, cols)
        for block, rows, cols in blocks.values()
    ]
    figure = plots.cka_panels(panels, title=common.title(s, ctx, "CKA", result, description))
    ctx.run.save_figure("cka_panels", figure)

    cross = blocks["cross"][0]
    summary = {
        **common.summary_base(result, description),
        "model": robust.label,
        "ref": standard.label,
        "mean_off_diagonal_ref": common.mean_off_diagonal(blocks["ref"][0].matrix),
        "mean_off_diagonal_model": common.mean_off_diagonal(blocks["model"][0].matrix),
        "mean_cross": float(cross.matrix.mean()),
    }
    taps, values = common.same_layer(cross)
    if taps:
        ctx.run.write_csv("same_layer", pd.DataFrame({"tap": taps, "cka": values}))
        ctx.run.save_figure(
            "same_layer",
            plots.layer_curves(
                {f"{std} vs {rob}": values},
                taps,
                ylabel="CKA",
                title=f"same-layer CKA · {ctx.dataset.name} · N={result.n_examples}",
            ),
        )
        summary["mean_same_layer"] = float(values.mean())
    ctx.run.write_json("cka", summary)
    common.print_matrices(
        f"CKA panels ({description}):",
        {f"{rows} vs {cols}": block for block, rows, cols in blocks.values()},
        cross=[f"{rows} vs {cols}" for _, rows, cols in blocks.values() if rows != cols],
    )
    return summary
