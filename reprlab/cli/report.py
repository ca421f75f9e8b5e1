"""``reprlab report`` and ``reprlab download``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reprlab.errors import ReprlabError


def report(args: argparse.Namespace) -> int:
    """``reprlab report PATH``: the runs under PATH as one table on the terminal (nothing
    written), or as CSV/Markdown on stdout, or as a static HTML site in PATH/report/."""
    from reprlab.io.report import gather_runs, print_table, select, to_markdown

    root = Path(args.runs_dir)
    if root.exists() and not root.is_dir():
        raise ReprlabError(f"{root} is a file; `reprlab report` needs a run or sweep directory")
    fmt = "html" if args.html else args.format
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        print(f"reprlab: warning: {message}", file=sys.stderr)

    table = gather_runs(root, warn=warn)
    if table.empty:
        unreadable = f" ({len(skipped)} unreadable, skipped)" if skipped else ""
        raise ReprlabError(
            f"no readable run.json under {root}{unreadable}; is it a runs directory?"
        )
    table = select(table, _names(args.columns), _names(args.sort))
    if fmt == "csv":
        from reprlab.io.tables import tidy_floats

        sys.stdout.write(tidy_floats(table).to_csv(index=False))
    elif fmt == "md":
        print(to_markdown(table))
    elif fmt == "html":
        from reprlab.io.html import write_site

        index = write_site(root, table)
        print(f"{len(table)} runs -> {index}")
    else:
        print_table(table)
        print(f"\n{len(table)} runs; --format csv|md|html (or --html) exports them")
    return 0


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def download(args: argparse.Namespace) -> int:
    from reprlab.data import default_data_root
    from reprlab.data import download as fetch

    root = Path(args.root) if args.root else default_data_root()
    path = fetch(args.dataset, root)
    print(f"{args.dataset} is ready under {path}")
    return 0
