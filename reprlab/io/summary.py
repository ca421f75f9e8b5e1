"""A sweep's (or any directory of runs') summary: the table as CSV, the accuracy figure when it
holds evaluate runs, and the HTML report beside them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reprlab.io.report import accuracy_curves, swept
from reprlab.io.runs import RunDirectory


def write_report(root: str | Path, table: pd.DataFrame, name: str) -> list[Path]:
    """Write ``<name>.csv`` into ``root``, ``accuracy_vs_eps.png`` when it holds evaluate runs,
    and the HTML report (``report/index.html``); return the paths written."""
    from reprlab.io import plots
    from reprlab.io.html import write_site

    directory = RunDirectory(root)
    written = [directory.write_csv(name, table)]
    curves = accuracy_curves(root)
    if curves:
        varied = swept(table)
        what = f" by {', '.join(varied)}" if varied else ""
        figure = plots.accuracy_vs_eps(
            curves, title=f"accuracy under attack{what}", xlabel="ε (pixel units)"
        )
        written.append(directory.save_figure("accuracy_vs_eps", figure))
    written.append(write_site(root, table))
    return written
