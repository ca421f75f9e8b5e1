"""scripts/gpu_check.py: the one prepared GPU check. Its ``--dry`` form runs every step on the CPU
at tiny sizes; its full plan fits the 8 minutes a lent GPU gives it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = {"gpu_tests", "bench_train_gpu", "stir_bf16", "inversion_bf16", "experiment"}


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_full_plan_fits_eight_minutes(tmp_path: Path) -> None:
    """Every step's own time limit together, plus a minute for setup and start-up, <= 480 s."""
    check = load_gpu_check()
    plan = check.steps(dry=False, work=tmp_path)
    assert {name for name, _, _ in plan} == STEPS
    assert sum(limit for _, _, limit in plan) + 60 <= 480
    assert all("cuda" in " ".join(command) or name in ("gpu_tests", "experiment")
               for name, command, _ in plan)  # fmt: skip


def test_setup_names_the_remedy_when_wheels_are_missing(monkeypatch, tmp_path: Path) -> None:
    check = load_gpu_check()
    monkeypatch.setattr(check, "missing_packages", lambda: ["hydra", "antlr4"])
    monkeypatch.setattr(check, "WHEELS", tmp_path / "no_wheels")
    result = check.setup()
    assert result["rc"] == 1 and "make wheels" in result["note"] and "hydra" in result["note"]


@pytest.mark.slow
def test_dry_run_on_cpu_reports_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPRLAB_", "HYDRA_"))}
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry", "--out", str(out), "--work",
         str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert done.returncode == 0, json.dumps(report, indent=1)[-3000:]
    assert report["dry"] is True and report["device"] == "cpu"
    assert set(report["steps"]) == STEPS
    bench = report["steps"]["bench_train_gpu"]["figures"]
    assert bench  # the benchmark's own JSON, embedded
    experiment = report["steps"]["experiment"]["figures"]
    assert experiment["rc"] == 0 and experiment["stir"] is not None
