"""Tables a person reads: the one formatter behind every analysis's terminal output, and the
float clean-up behind every CSV.

Terminal tables are at most 120 columns wide, numbers keep 4 significant digits, and long text
stays out of the cells: a column whose value is the same in every row is printed once above the
table (``dataset: mnist``), a table of one row is printed as ``key  value`` lines, and a table
too wide for the terminal is split into blocks of columns, each repeating the first column.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

WIDTH = 120
"""Widest line any table prints."""

MAX_CELL = 36
"""Longest text kept in a cell; longer text is cut with an ellipsis."""

GAP = "  "


def format_number(value: Any, digits: int = 4) -> str:
    """``value`` as a person reads it: integers whole, other numbers to ``digits`` significant
    digits (no float32 noise: 0.9900000095367432 prints 0.99), NaN and None as an en dash."""
    if value is None or isinstance(value, str):
        return "–" if value is None else value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "–"
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        if number.is_integer() and abs(number) < 1e6:
            return str(int(number))
        if 1e-3 <= abs(number) < 1e6:
            text = f"{number:.{digits}g}"
            return f"{number:.0f}" if "e" in text else text
        mantissa, exponent = f"{number:.{digits - 1}e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return str(value)


def _cell(value: Any, max_cell: int) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    text = format_number(value) if not isinstance(value, (list, tuple, dict)) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= max_cell else text[: max_cell - 1] + "…"


def _is_numeric(column: Sequence[Any]) -> bool:
    present = [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(present) and all(
        isinstance(v, numbers.Number) and not isinstance(v, bool) for v in present
    )


def _wrap(label: str, text: str, width: int) -> list[str]:
    """``label: text`` wrapped at ``width``, continuation lines indented."""
    import textwrap

    return textwrap.wrap(
        text, width=width, initial_indent=f"{label}: ", subsequent_indent="  "
    ) or [f"{label}:"]


def format_table(
    frame: pd.DataFrame | Iterable[dict[str, Any]],
    *,
    title: str | None = None,
    width: int = WIDTH,
    max_cell: int = MAX_CELL,
    common: bool = True,
    vertical: bool = True,
) -> str:
    """``frame`` as aligned text no wider than ``width``.

    ``common``: with two or more rows, columns holding one value in every row are printed once,
    above the table. One row prints as ``key  value`` lines (unless ``vertical`` is False: a
    listing whose rows people search keeps its one row a row). Numbers are right-aligned with
    :func:`format_number`; text longer than ``max_cell`` is cut.
    """
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(list(frame))
    lines: list[str] = []
    if title:
        lines.append(title)
    if frame.empty:
        lines.append("(no rows)")
        return "\n".join(lines)
    columns = [str(c) for c in frame.columns]
    values = {name: frame.iloc[:, i].tolist() for i, name in enumerate(columns)}
    if len(frame) == 1 and vertical:
        shown = [(name, values[name][0]) for name in columns if not _missing(values[name][0])]
        key_width = min(max(len(name) for name, _ in shown), 40) if shown else 0
        for name, value in shown:
            text = _cell(value, width - key_width - 2)
            lines.append(f"{name:<{key_width}}  {text}"[:width])
        return "\n".join(lines)
    if common:
        constant = [
            name
            for name in columns[1:]
            if len({_cell(v, 10_000) for v in values[name]}) == 1 and len(columns) > 2
        ]
        for name in constant:
            value = values[name][0]
            if not _missing(value):
                lines.extend(_wrap(name, _cell(value, 10_000), width))
        columns = [c for c in columns if c not in constant]
    cells = {name: [_cell(v, max_cell) for v in values[name]] for name in columns}
    numeric = {name: _is_numeric(values[name]) for name in columns}
    widths = {
        name: min(max(len(name), *(len(c) for c in cells[name])), max(max_cell, 12))
        for name in columns
    }

    def render(block: list[str]) -> list[str]:
        def fit(text: str, name: str) -> str:
            text = text if len(text) <= widths[name] else text[: widths[name] - 1] + "…"
            return text.rjust(widths[name]) if numeric[name] else text.ljust(widths[name])

        out = [GAP.join(fit(name, name) for name in block).rstrip()]
        for row in range(len(frame)):
            out.append(GAP.join(fit(cells[name][row], name) for name in block).rstrip())
        return out

    first, rest = columns[0], columns[1:]
    blocks: list[list[str]] = [[first]]
    for name in rest:
        used = sum(widths[c] for c in blocks[-1]) + len(GAP) * len(blocks[-1])
        if used + widths[name] > width and len(blocks[-1]) > 1:
            blocks.append([first])
        blocks[-1].append(name)
    for number, block in enumerate(blocks):
        if number:
            lines.append("")
        lines.extend(line[:width] for line in render(block))
    return "\n".join(lines)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def print_table(
    frame: pd.DataFrame | Iterable[dict[str, Any]], *, title: str | None = None, **options: Any
) -> None:
    """Print :func:`format_table` of ``frame`` (a blank line first when ``title`` is given)."""
    if title:
        print()
    print(format_table(frame, title=title, **options))


def round_trip_float32(value: float) -> float:
    """``value`` itself, or, when it is exactly a float32 (a tensor's number), the shortest
    decimal that reads back as that float32: 0.9900000095367432 -> 0.99."""
    if not math.isfinite(value):
        return value
    single = np.float32(value)
    if float(single) != value:
        return value
    return float(np.format_float_positional(single, unique=True))


def tidy_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every float that is exactly a float32 replaced by its shortest decimal, so
    a CSV says 0.99 where a tensor held 0.99 (not 0.9900000095367432). Other values unchanged."""
    tidy = frame.copy()
    for name in tidy.columns:
        column = tidy[name]
        if pd.api.types.is_float_dtype(column):
            tidy[name] = column.map(round_trip_float32)
        elif column.dtype == object:
            tidy[name] = column.map(lambda v: round_trip_float32(v) if type(v) is float else v)
    return tidy


def tidy_value(value: Any) -> Any:
    """:func:`round_trip_float32` through dicts and lists (for JSON summaries)."""
    if isinstance(value, dict):
        return {k: tidy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy_value(v) for v in value]
    if type(value) is float:
        return round_trip_float32(value)
    return value


NORM_SYMBOLS = {"linf": "L∞", "l2": "L2", "l1": "L1"}
METHOD_NAMES = {"pgd_at": "PGD-AT", "trades": "TRADES", "mart": "MART"}


def radius_text(eps: float, norm: str) -> str:
    """An attack radius as papers write it: 8/255 for L∞ radii on the 1/255 grid, else 4
    significant digits."""
    if norm == "linf" and 0 < eps < 0.2 and abs(eps * 255 - round(eps * 255)) < 1e-3:
        return f"{round(eps * 255)}/255"
    return f"{eps:.4g}"


def threat_text(adversary: Any) -> str:
    """A model recipe's training threat (its ``adversary``: a mapping or the recipe's
    dataclass; None for standard training) in a few words: ``standard``, ``PGD-AT L∞ 0.2``,
    ``TRADES L∞ 8/255 (β=6)``, ``MART L2 0.5 (λ=5)``."""
    if not adversary:
        return "standard"
    if not isinstance(adversary, Mapping):  # a recipe's adversary dataclass
        adversary = vars(adversary)
    norm = str(adversary.get("norm", "?"))
    method = str(adversary.get("method", "pgd_at"))
    text = f"{METHOD_NAMES.get(method, method)} {NORM_SYMBOLS.get(norm, norm)} "
    text += radius_text(float(adversary.get("eps", float("nan"))), norm)
    beta = adversary.get("beta")
    if method in ("trades", "mart") and beta is not None:
        text += f" ({'β' if method == 'trades' else 'λ'}={float(beta):g})"
    return text
