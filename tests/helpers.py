"""Test helpers: running the `reprlab` command in a scratch directory, fast run overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A run small enough for tests: synthetic data, the small CNN, one epoch, a few examples.
FAST = [
    "dataset=synthetic",
    "model=cnn_small",
    "model.train.epochs=1",
    "model.snapshot_epochs=[1]",
    "monitor.examples=100",
    "monitor.attack_steps=2",
    "progress=false",
]


def reprlab_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPRLAB_", "HYDRA_"))}
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


def run_reprlab(
    *args: str,
    cwd: Path,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run ``python -m reprlab <args>`` in ``cwd``; return the finished process (text output).

    ``env``: extra environment variables; ``prefix``: a command to run it under (e.g. setpriv).
    """
    return subprocess.run(
        [*prefix, sys.executable, "-m", "reprlab", *args],
        cwd=cwd,
        env={**reprlab_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
