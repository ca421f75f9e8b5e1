"""``reprlab report`` and ``reprlab download``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reprlab.errors import ReprlabError


def report(args: argparse.Namespace) -> int:
    from reprlab.io.report import gather_runs, print_table, write_report

    root = Path(args.runs_dir)
    if root.exists() and not root.is_dir():
        raise ReprlabError(f"{root} is a file; `reprlab report` needs a run or sweep directory")
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
    written = write_report(root, table, "report")
    print_table(table)
    print(f"\n{len(table)} runs -> {', '.join(str(p) for p in written)}")
    return 0


def download(args: argparse.Namespace) -> int:
    from reprlab.data import default_data_root
    from reprlab.data import download as fetch

    root = Path(args.root) if args.root else default_data_root()
    path = fetch(args.dataset, root)
    print(f"{args.dataset} is ready under {path}")
    return 0
