"""The run directory: provenance (run.json), result tables, JSON and figures.

Hydra creates the directory (``outputs/runs/<analysis>/<date>/<time>_<id>/``, one sub-directory per
job in a sweep) and writes the config snapshot under ``.hydra/`` and the log. This module adds
``run.json`` and the results; it computes nothing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from reprlab.io import atomic

RUN_ID = uuid.uuid4().hex[:6]
"""This process's run id: part of every run directory name, so concurrent jobs never collide."""

PACKAGES = ("reprlab", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "pandas")


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The git commit of the reprlab source tree and whether it has uncommitted changes."""
    source = cwd or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of reprlab and the packages its results depend on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def to_jsonable(value: Any) -> Any:
    """``value`` with tensors, NumPy scalars/arrays and paths turned into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return value


SYSTEM_DIRECTORIES = ("/proc", "/sys", "/dev", "/run", "/etc", "/boot", "/bin", "/sbin", "/lib",
                      "/lib32", "/lib64", "/libx32", "/usr/bin", "/usr/sbin", "/usr/lib",
                      "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/include", "/usr/share",
                      "/var/lib", "/var/log", "/var/run")  # fmt: skip
"""Directories (and everything below them) that never hold a run: the kernel's and the
system's own. Their parents (``/``, ``/usr``, ``/var``, ``/home``) are refused only themselves:
site-specific places such as ``/usr/workspace`` stay usable."""

_TOP_DIRECTORIES = ("/", "/usr", "/var", "/home", "/opt", "/srv", "/mnt", "/media", "/tmp", "/root")


def run_dir_problem(directory: str | Path, what: str = "run") -> str | None:
    """Why ``directory`` must not receive a run's (or a sweep's) files, or None when it may.

    A run writes only into a new or empty directory: never ``/``, a system directory, or a
    directory that already holds files (an earlier run would be overwritten). Writes nothing.
    """
    path = Path(os.path.abspath(os.path.expanduser(str(directory))))
    text = str(path)
    if text in _TOP_DIRECTORIES or text in SYSTEM_DIRECTORIES:
        return f"{text} is a system directory, not a place for a {what}'s files"
    for system in SYSTEM_DIRECTORIES:
        if text.startswith(system + "/"):
            return f"{text} is under the system directory {system}"
    if path.is_dir():
        try:
            held = sorted(p.name for p in path.iterdir())
        except OSError as err:
            return f"{text} cannot be listed ({err.strerror})"
        if held:
            earlier = "run.json" in held or ".hydra" in held or "multirun.yaml" in held
            kind = f"an earlier {what}" if earlier else "other files"
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            return f"{text} already holds {kind} ({shown}), which this one would overwrite"
    return None


class RunDirectory:
    """Writes one run's provenance and results into ``path`` (atomic writes throughout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._record: dict[str, Any] = {}
        self._started = time.time()

    @property
    def record(self) -> dict[str, Any]:
        """The current content of run.json."""
        return self._record

    def start(self, analysis: str, overrides: list[str], seed: int, device: str) -> None:
        """Write run.json with status ``running`` and the run's provenance."""
        self._record = {
            "status": "running",
            "analysis": analysis,
            "id": self.path.name,
            "command": " ".join(["reprlab", "run", *overrides]),
            "overrides": overrides,
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "started_unix": round(self._started, 3),
            "git": git_state(),
            "versions": package_versions(),
            "host": platform.node(),
            "pid": os.getpid(),
            "device": device,
            "seeds": {"run": seed},
            "models": {},
            "timings": {},
        }
        self._flush()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json (e.g. seeds, store keys of the models used)."""
        for name, value in fields.items():
            if isinstance(value, dict) and isinstance(self._record.get(name), dict):
                self._record[name].update(to_jsonable(value))
            else:
                self._record[name] = to_jsonable(value)
        self._flush()

    def finish(
        self, status: str, summary: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """Mark the run ``completed``, ``failed`` or ``interrupted`` with its summary (or error)
        and total time."""
        self._record["status"] = status
        self._record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._record["timings"]["total_seconds"] = round(time.time() - self._started, 3)
        if summary is not None:
            from reprlab.io.tables import tidy_value

            self._record["summary"] = tidy_value(to_jsonable(summary))
        if error is not None:
            self._record["error"] = error
        self._flush()

    def _flush(self) -> None:
        atomic.write_text(self.path / "run.json", json.dumps(self._record, indent=2) + "\n")

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as ``<name>.json``."""
        path = self.path / f"{name}.json"
        atomic.write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")
        return path

    def write_csv(self, name: str, frame: Any, index: bool = False) -> Path:
        """Write a pandas DataFrame as ``<name>.csv``."""
        from reprlab.io.tables import tidy_floats

        path = self.path / f"{name}.csv"
        atomic.write_text(path, tidy_floats(frame).to_csv(index=index))
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` to the file ``name`` in the run directory."""
        path = self.path / name
        atomic.write_text(path, text)
        return path

    def save_figure(self, name: str, figure: Any, dpi: int = 150) -> Path:
        """Save a matplotlib figure as ``<name>.png`` and close it."""
        import io

        import matplotlib.pyplot as plt

        from reprlab.io.plots import annotate, figure_notes

        annotate(figure, figure_notes(self._record))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(figure)
        path = self.path / f"{name}.png"
        atomic.write_bytes(path, buffer.getvalue())
        return path
