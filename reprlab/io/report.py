"""Gather the results of many runs (a sweep, or a whole runs/ tree) into one table."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.errors import ReprlabError
from reprlab.io.runs import RunDirectory

LEADING_COLUMNS = ("run", "analysis", "status", "model", "ref", "dataset", "overrides")
TRAILING_COLUMNS = ("error",)


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        into[prefix] = value


def read_record(path: Path) -> dict[str, Any]:
    """The content of a run.json; ValueError (with the reason) when it is unreadable, not JSON
    or not a JSON object."""
    try:
        record = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"it is not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"it holds a JSON {type(record).__name__}, not an object")
    return record


def process_started(pid: int) -> float | None:
    """Start time (Unix seconds) of process ``pid`` from /proc; None where unknown (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def pid_alive(pid: Any, started: Any = None) -> bool:
    """Whether process ``pid`` of this host still runs (and, given the run's ``started`` Unix
    time, is not a newer process that reuses the pid)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    if isinstance(started, (int, float)):
        began = process_started(pid)
        if began is not None and began > started + 2:
            return False
    return True


def run_status(record: dict[str, Any]) -> Any:
    """The run's status; ``stale`` for a run marked ``running`` on this host whose process is
    gone (killed with -9, or the machine went down)."""
    status = record.get("status")
    if status != "running" or record.get("host") != platform.node():
        return status
    return status if pid_alive(record.get("pid"), record.get("started_unix")) else "stale"


def _name(models: Any, role: str) -> Any:
    entry = models.get(role) if isinstance(models, dict) else None
    return entry.get("name") if isinstance(entry, dict) else None


def gather_runs(root: str | Path, warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per run.json found under ``root``: where, what, status and scalar summary values.

    Rows are sorted by run directory; summary values keep their names (nested keys joined by '.').
    A run.json that cannot be read, is not JSON or not an object is skipped, and ``warn`` (if
    given) is called with one line naming it and why.
    """
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise ReprlabError(f"{root} is a file; give a run or sweep directory")
        raise ReprlabError(f"runs directory {root} does not exist; give a run or sweep directory")
    rows = []
    for path in sorted(root.rglob("run.json")):
        try:
            record = read_record(path)
        except ValueError as err:
            if warn is not None:
                warn(f"skipping {path}: {err}")
            continue
        overrides = record.get("overrides")
        row: dict[str, Any] = {
            "run": str(path.parent.relative_to(root)) or ".",
            "analysis": record.get("analysis"),
            "status": run_status(record),
            "model": _name(record.get("models"), "model"),
            "ref": _name(record.get("models"), "ref"),
            "dataset": record.get("dataset"),
            "overrides": " ".join(map(str, overrides)) if isinstance(overrides, list) else None,
        }
        summary = record.get("summary")
        _flatten("", summary if isinstance(summary, dict) else {}, row)
        error = record.get("error")
        row["error"] = error.strip().splitlines()[-1] if isinstance(error, str) else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.dropna(axis=1, how="all")
    leading = [c for c in LEADING_COLUMNS if c in frame.columns]
    trailing = [c for c in TRAILING_COLUMNS if c in frame.columns]
    middle = [c for c in frame.columns if c not in leading and c not in trailing]
    return frame[leading + middle + trailing]


def accuracy_curves(root: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Accuracy-vs-ε curves of the ``evaluate`` runs under ``root``, labelled by model.

    Labels get the run directory appended when two runs evaluate the same model.
    """
    root = Path(root)
    found = []
    for table_path in sorted(root.rglob("accuracy.csv")):
        try:
            record = read_record(table_path.parent / "run.json")
            table = pd.read_csv(table_path)
        except (ValueError, OSError, pd.errors.ParserError):
            continue
        if not {"eps", "accuracy"} <= set(table.columns):
            continue
        model = _name(record.get("models"), "model") or "?"
        found.append((model, str(table_path.parent.relative_to(root)), table))
    names = [model for model, _, _ in found]
    return {
        (model if names.count(model) == 1 else f"{model} ({where})"): (
            table.eps.tolist(),
            table.accuracy.tolist(),
        )
        for model, where, table in found
    }


def write_report(root: str | Path, table: pd.DataFrame, name: str) -> list[Path]:
    """Write ``<name>.csv`` into ``root``, and ``accuracy_vs_eps.png`` when it holds evaluate
    runs; return the paths written."""
    from reprlab.io import plots

    directory = RunDirectory(root)
    written = [directory.write_csv(name, table)]
    curves = accuracy_curves(root)
    if curves:
        figure = plots.accuracy_vs_eps(
            curves, title=f"PGD accuracy · {Path(root).name}", xlabel="ε (pixel units)"
        )
        written.append(directory.save_figure("accuracy_vs_eps", figure))
    return written


def print_table(frame: pd.DataFrame) -> None:
    """Print ``frame`` as an aligned text table (floats to 4 decimals)."""
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
