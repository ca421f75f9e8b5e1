"""Gather the results of many runs (a sweep, or a whole runs/ tree) into one table."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.errors import ReprlabError
from reprlab.io.runs import RunDirectory
from reprlab.io.tables import tidy_value

LEADING_COLUMNS = ("run", "analysis", "status", "model", "threat", "ref", "dataset", "overrides")
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


def _entry(models: Any, role: str) -> dict[str, Any]:
    entry = models.get(role) if isinstance(models, dict) else None
    return entry if isinstance(entry, dict) else {}


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
            "threat": _entry(record.get("models"), "model").get("threat"),
            "ref": _name(record.get("models"), "ref"),
            "dataset": record.get("dataset"),
            "overrides": " ".join(map(str, overrides)) if isinstance(overrides, list) else None,
        }
        summary = record.get("summary")
        _flatten("", tidy_value(summary) if isinstance(summary, dict) else {}, row)
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
    runs; return the paths written. (The HTML report is :func:`reprlab.io.html.write_site`.)"""
    from reprlab.io import plots

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
    return written


def split_overrides(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``overrides`` column cut to what differs between runs; the overrides
    every run shares go to a ``shared overrides`` column (printed once, above the table)."""
    if "overrides" not in frame.columns or len(frame) < 2:
        return frame
    tokens = [str(v).split() if isinstance(v, str) else [] for v in frame["overrides"]]
    shared = [t for t in tokens[0] if all(t in row for row in tokens[1:])]
    frame = frame.copy()
    frame["overrides"] = [" ".join(t for t in row if t not in shared) or None for row in tokens]
    if shared:
        frame.insert(list(frame.columns).index("overrides"), "shared overrides", " ".join(shared))
    return frame


def swept(frame: pd.DataFrame) -> list[str]:
    """The override keys whose values differ between the runs of ``frame`` (what a sweep
    varies), in order of first appearance."""
    values: dict[str, set[str]] = {}
    rows = [str(v).split() for v in frame.get("overrides", pd.Series(dtype=object)).dropna()]
    for row in rows:
        for token in row:
            key, _, value = token.partition("=")
            values.setdefault(key, set()).add(value)
    return [
        key for key, seen in values.items()
        if len(seen) > 1 or sum(any(t.startswith(f"{key}=") for t in r) for r in rows) < len(rows)
    ]  # fmt: skip


def print_table(frame: pd.DataFrame, title: str | None = None) -> None:
    """Print ``frame`` with the one table formatter (:mod:`reprlab.io.tables`): at most 120
    columns, 4 significant digits, values shared by every row (overrides included) printed once
    above the table."""
    from reprlab.io.tables import print_table as show

    show(split_overrides(frame), title=title)


def select(
    frame: pd.DataFrame, columns: Sequence[str] | None = None, sort: Sequence[str] | None = None
) -> pd.DataFrame:
    """``frame`` cut to ``columns`` (names or shell patterns such as ``eval_*``, in the order
    given) and sorted by ``sort`` (column names; ``-name`` sorts descending).

    Raises ReprlabError naming an unknown column and the closest existing one.
    """
    import difflib
    import fnmatch

    def unknown(name: str) -> ReprlabError:
        close = difflib.get_close_matches(name, list(frame.columns), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return ReprlabError(
            f"no column '{name}'{hint} (columns: {', '.join(map(str, frame.columns))})"
        )

    if sort:
        keys = [key.lstrip("-") for key in sort]
        for key in keys:
            if key not in frame.columns:
                raise unknown(key)
        frame = frame.sort_values(
            keys, ascending=[not key.startswith("-") for key in sort], kind="stable"
        )
    if columns:
        chosen: list[str] = []
        for pattern in columns:
            matched = [c for c in frame.columns if fnmatch.fnmatchcase(str(c), pattern)]
            if not matched:
                raise unknown(pattern)
            chosen += [c for c in matched if c not in chosen]
        frame = frame[chosen]
    return frame.reset_index(drop=True)


def to_markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table (numbers to 4 significant digits)."""
    from reprlab.io.tables import format_number

    def cell(value: Any) -> str:
        return format_number(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])
