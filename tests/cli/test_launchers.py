"""Sweeps through Hydra's launcher plugins.

A 4-job sweep through joblib and through submitit_local runs its jobs in parallel processes,
trains the model they share once (the store's flock across processes), and gathers the same
summary.csv as Hydra's sequential launcher. A job that fails in another process still reaches
the summary and the exit code.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import FAST, run_reprlab
from omegaconf import OmegaConf

from reprlab.cli import sweeps

# Four jobs that need one model (model.seed is fixed; `seed` draws the evaluation sample).
SWEEP = [
    *FAST,
    "analysis=evaluate",
    "analysis.examples=200",
    "analysis.eps=[0,0.05]",
    "attack.steps=3",
    "device=cpu",
    "seed=0,1,2,3",
]
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20"],
}


def sweep_dir(root: Path) -> Path:
    (summary,) = (root / "outputs" / "runs").rglob("summary.csv")
    return summary.parent


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir(root).glob("*/run.json"))]


@pytest.mark.slow
def test_parallel_launchers_train_once_and_match_the_sequential_summary(workdir: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    summaries = {}
    for name, launcher in LAUNCHERS.items():
        root = workdir / name
        root.mkdir()
        result = run_reprlab("run", "-m", *launcher, *SWEEP, cwd=root, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        runs = records(root)
        assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
        # one model, trained once, by one of the jobs; the others loaded it
        assert len({r["models"]["model"]["key"] for r in runs}) == 1
        assert sorted(r["models"]["model"]["trained_now"] for r in runs) == [0, 0, 0, 1]
        trainer = next(r for r in runs if r["models"]["model"]["trained_now"])
        log = (Path(sweep_dir(root)) / trainer["id"] / "reprlab.log").read_text()
        assert "training cnn_small (standard" in log
        pids = {r["pid"] for r in runs}
        if name == "basic":
            assert len(pids) == 1  # one process, one job after another
        else:
            assert len(pids) >= 2
            # parallel: some job started before another one finished
            spans = sorted((r["started_unix"], r["started_unix"] + r["timings"]["total_seconds"])
                           for r in runs)  # fmt: skip
            assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
        summaries[name] = pd.read_csv(sweep_dir(root) / "summary.csv")
    for name in ("joblib", "submitit_local"):
        pd.testing.assert_frame_equal(summaries[name], summaries["basic"])


def test_failures_of_jobs_in_other_processes_reach_the_sweep(tmp_path: Path) -> None:
    """record_failure in a job process leaves failure.json; the sweep's process gathers it."""
    sweep = tmp_path / "sweep"
    sweeps.FAILURES.clear()
    for num in (2, 0):
        cfg = OmegaConf.create(
            {
                "job": {"num": num},
                "overrides": {"task": [f"seed={num}", "model=cnn_small"]},
                "runtime": {"output_dir": str(sweep / str(num))},
            }
        )
        sweeps.record_failure(cfg, f"job {num} broke")
    sweeps.FAILURES.clear()  # the parent process never saw them
    sweeps.gather_failures(sweep)
    assert [(f.num, f.error) for f in sweeps.FAILURES] == [(0, "job 0 broke"), (2, "job 2 broke")]
    sweeps.gather_failures(sweep)  # idempotent
    assert len(sweeps.FAILURES) == 2
    assert sweeps.FAILURES[1].describe({"seed"}) == "2 [seed=2] failed: job 2 broke"
    rows = sweeps.failure_rows(sweep, pd.DataFrame({"run": ["1"]}))
    assert [r["run"] for r in rows] == ["0", "2"] and rows[0]["status"] == "failed"
    sweeps.FAILURES.clear()
    assert os.path.exists(sweep / "0" / sweeps.FAILURE_FILE)


def test_the_sweep_directory_is_pinned_for_job_processes(tmp_path: Path) -> None:
    """Each launcher process would re-resolve ${now:...} and the run id: the sweep directory
    composed up front is handed to Hydra as a literal, unless the user set one."""
    from reprlab.cli.run import pin_sweep_dir

    args = ["-m", "seed=0,1"]
    pinned = pin_sweep_dir(args, "outputs/runs/evaluate/x_sweep")
    assert pinned[:2] == args
    assert pinned[2] == f"hydra.sweep.dir='{Path.cwd() / 'outputs/runs/evaluate/x_sweep'}'"
    mine = [*args, "hydra.sweep.dir=/tmp/mine"]
    assert pin_sweep_dir(mine, "elsewhere") == mine
    assert pin_sweep_dir(args, None) == args
    assert pin_sweep_dir(args, "/tmp/it's") == args  # would need Hydra's escapes
