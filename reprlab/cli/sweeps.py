"""Hydra's side of a sweep: failed jobs are recorded, and when the sweep ends its jobs are
gathered into one table (``summary.csv``), failed ones listed with their error."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback

from reprlab.io import atomic
from reprlab.io.html import write_site
from reprlab.io.report import gather_runs, print_table, write_report
from reprlab.io.runs import RunDirectory


@dataclass(frozen=True)
class JobFailure:
    """A sweep job that ended with an error (the sweep went on without it)."""

    num: int
    overrides: tuple[str, ...]
    directory: Path
    error: str

    def describe(self, keys: Collection[str] | None = None) -> str:
        """One line: the job's number, its overrides (those of ``keys`` only, e.g. the swept
        ones, when given) and the error."""
        shown = [
            o for o in self.overrides if keys is None or o.split("=", 1)[0].lstrip("+~") in keys
        ]
        return f"{self.num} [{' '.join(shown)}] failed: {self.error}"


FAILURES: list[JobFailure] = []
"""The failed jobs of the sweep running in this process, in order."""


FAILURE_FILE = "failure.json"
"""Written into a failed job's directory, so a sweep whose jobs ran in other processes
(launcher plugins: joblib, submitit) still knows which failed."""


def record_failure(hydra_cfg: Any, error: str) -> None:
    """Remember that the current Hydra job failed with ``error`` (one line), in this process and
    in the job's directory (:data:`FAILURE_FILE`)."""
    failure = JobFailure(
        num=int(hydra_cfg.job.num),
        overrides=tuple(hydra_cfg.overrides.task),
        directory=Path(hydra_cfg.runtime.output_dir),
        error=error,
    )
    FAILURES.append(failure)
    record = {"num": failure.num, "overrides": list(failure.overrides), "error": error}
    with contextlib.suppress(OSError):
        failure.directory.mkdir(parents=True, exist_ok=True)
        atomic.write_text(failure.directory / FAILURE_FILE, json.dumps(record))


def gather_failures(sweep_dir: Path) -> None:
    """Add to :data:`FAILURES` the failed jobs recorded under ``sweep_dir`` by other processes
    (each job once, ordered by number)."""
    known = {f.num for f in FAILURES}
    for path in sorted(sweep_dir.glob(f"*/{FAILURE_FILE}")):
        try:
            record = json.loads(path.read_text())
            failure = JobFailure(
                num=int(record["num"]),
                overrides=tuple(record["overrides"]),
                directory=path.parent,
                error=str(record["error"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if failure.num not in known:
            FAILURES.append(failure)
            known.add(failure.num)
    FAILURES.sort(key=lambda f: f.num)


def _warn(message: str) -> None:
    print(f"reprlab: warning: {message}", file=sys.stderr)


def failure_rows(sweep_dir: Path, table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for failed jobs that left no run.json (failed before their run started)."""
    listed = set(table["run"]) if "run" in table.columns else set()
    rows = []
    for failure in FAILURES:
        try:
            where = str(failure.directory.resolve().relative_to(sweep_dir.resolve()))
        except ValueError:
            where = str(failure.directory)
        if where not in listed:
            rows.append(
                {
                    "run": where,
                    "status": "failed",
                    "overrides": " ".join(failure.overrides),
                    "error": failure.error,
                }
            )
    return rows


def write_summary(sweep_dir: Path, *, show: bool = True) -> list[Path]:
    """Gather the sweep's jobs so far (run.json files and recorded failures) into
    ``summary.csv``; with ``show``, also the figure, and print the table. Returns the paths
    written (none when no job has started)."""
    gather_failures(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    table = gather_runs(sweep_dir, warn=_warn if show else None)
    extra = failure_rows(sweep_dir, table)
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    if table.empty:
        return []
    if not show:
        return [RunDirectory(sweep_dir).write_csv("summary", table)]
    written = [*write_report(sweep_dir, table, "summary"), write_site(sweep_dir, table)]
    print_table(table, title=f"Sweep summary ({len(table)} runs)")
    print(f"-> {sweep_dir}/: {', '.join(str(p.relative_to(sweep_dir)) for p in written)}")
    return written


class SweepSummary(Callback):
    """Hydra callback: keep ``summary.csv`` current as the sweep's jobs end (so a sweep killed
    part-way, even with ``kill -9``, leaves the table of what finished), and after the sweep
    gather every job into it and print it."""

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        try:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                return
            write_summary(Path(config.hydra.sweep.dir), show=False)
        except Exception as err:  # a progress file must never fail the job that just ended
            _warn(f"summary.csv not updated after this job: {type(err).__name__}: {err}")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))
