"""Gather the results of many runs (a sweep, or a whole runs/ tree) into one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.errors import ReprlabError

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


def print_table(frame: pd.DataFrame) -> None:
    """Print ``frame`` as an aligned text table (floats to 4 decimals)."""
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
