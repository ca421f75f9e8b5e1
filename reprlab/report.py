"""Gather the results of many runs (a sweep, or a whole runs/ tree) into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.errors import ReprlabError
from reprlab.runs import RunDirectory

LEADING_COLUMNS = ("run", "analysis", "status", "model", "ref", "dataset", "overrides")


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        into[prefix] = value


def gather_runs(root: str | Path) -> pd.DataFrame:
    """One row per run.json found under ``root``: where, what, status and scalar summary values.

    Rows are sorted by run directory; summary values keep their names (nested keys joined by '.').
    """
    root = Path(root)
    if not root.is_dir():
        raise ReprlabError(f"runs directory {root} does not exist; give a run or sweep directory")
    rows = []
    for path in sorted(root.rglob("run.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        models = record.get("models", {})
        row: dict[str, Any] = {
            "run": str(path.parent.relative_to(root)) or ".",
            "analysis": record.get("analysis"),
            "status": record.get("status"),
            "model": models.get("model", {}).get("name"),
            "ref": models.get("ref", {}).get("name"),
            "dataset": record.get("dataset"),
            "overrides": " ".join(record.get("overrides", [])),
        }
        _flatten("", record.get("summary", {}), row)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.dropna(axis=1, how="all")
    leading = [c for c in LEADING_COLUMNS if c in frame.columns]
    return frame[leading + [c for c in frame.columns if c not in leading]]


def accuracy_curves(root: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Accuracy-vs-ε curves of the ``evaluate`` runs under ``root``, labelled by model.

    Labels get the run directory appended when two runs evaluate the same model.
    """
    root = Path(root)
    found = []
    for table_path in sorted(root.rglob("accuracy.csv")):
        try:
            record = json.loads((table_path.parent / "run.json").read_text())
            table = pd.read_csv(table_path)
        except (OSError, json.JSONDecodeError, pd.errors.ParserError):
            continue
        model = record.get("models", {}).get("model", {}).get("name", "?")
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
    from reprlab import plots

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
