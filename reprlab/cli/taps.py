"""``reprlab taps``: every tap of a recipe's architecture with its activation shape."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from reprlab.cli.run import check_group_choices, compose_config
from reprlab.errors import ReprlabError


def format_taps(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Text table of :func:`reprlab.core.taps.describe_taps` rows: tap, kind, shape and marks."""
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in
              (("tap", "tap"), ("kind", "kind"), ("shape", "shape"))]  # fmt: skip
    lines = [f"{'tap':<{widths[0]}}  {'kind':<{widths[1]}}  {'shape':<{widths[2]}}  marks"]
    for row in rows:
        marks = " ".join(
            mark for mark, on in (("split", row["splittable"]),
                                  ("representation", row["representation"])) if on
        )  # fmt: skip
        lines.append(
            f"{row['tap']:<{widths[0]}}  {row['kind']:<{widths[1]}}  "
            f"{row['shape']:<{widths[2]}}  {marks}".rstrip()
        )
    return lines


def taps_command(args: argparse.Namespace) -> int:
    """``reprlab taps model=<recipe> [dataset=<name>] [ref=<recipe>]``: list every tap.

    Builds the untrained architecture for the dataset's input shape (no training, no files
    written, no dataset files needed) and prints its taps in forward order.
    """
    from hydra.errors import HydraException

    from reprlab.core.taps import describe_taps
    from reprlab.data import dataset_info
    from reprlab.run.config import dataset_spec, recipe
    from reprlab.run.context import build_for

    try:
        check_group_choices(args.overrides)
    except HydraException as err:
        raise ReprlabError(str(err).splitlines()[0]) from None
    cfg = compose_config(args.overrides)
    info = dataset_info(dataset_spec(cfg.get("dataset")).name)
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        model = build_for(spec, info)
        rows = describe_taps(model)
        blocks = sum(row["kind"] == "block" for row in rows)
        shape = "x".join(str(d) for d in model.input_shape)
        print(
            f"{where}={spec.name}: {spec.arch} on {info.name} (input {shape}), "
            f"{blocks} block taps, {len(rows) - blocks} layer taps, forward order"
        )
        print("\n".join(format_taps(rows)))
        print("split: front/back can cut there (block taps); shapes are per example.")
        print("Select taps with 'blocks', 'all' (the layer taps) or a list of names.\n")
    return 0
