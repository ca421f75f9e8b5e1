"""Hydra's side of a sweep: when a multirun ends, gather its jobs into one table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from reprlab.report import gather_runs, print_table, write_report


class SweepSummary(Callback):
    """Hydra callback: after a sweep, gather its jobs' results into ``summary.csv`` and print it."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = gather_runs(sweep_dir)
        if table.empty:
            return
        written = write_report(sweep_dir, table, "summary")
        print(f"\nSweep summary ({len(table)} runs) -> {', '.join(str(p) for p in written)}")
        print_table(table)
