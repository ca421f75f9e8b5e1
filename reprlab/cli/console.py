"""How the command line speaks: one-line errors and warnings on stderr, and the exit code
of a user error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


def _debug() -> bool:
    return os.environ.get("REPRLAB_DEBUG", "") not in ("", "0")


def fail(message: str) -> int:
    """Print a user error as one line on stderr; return the exit code."""
    print(f"reprlab: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def warn(message: str) -> None:
    """Print a warning as one line on stderr."""
    print(f"reprlab: warning: {message}", file=sys.stderr)


def shown_path(path: str | Path) -> str:
    """``path`` as a person reads it: relative to the working directory when inside it (e.g.
    ``outputs/runs/cka/2026-12-08/02-07-30_3332bd``), absolute otherwise."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)
