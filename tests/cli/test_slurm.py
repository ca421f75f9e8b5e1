"""Sweeps on a real SLURM cluster (``hydra/launcher=slurm``): ``make test-slurm`` starts a one-node
cluster with ``scripts/slurm_cluster.py`` and runs these (marked ``slurm``; skipped when no
cluster answers). Jobs are tiny: synthetic data, the small CNN, one or two epochs, 50 examples.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO, reprlab_env

pytestmark = pytest.mark.slurm

SLURM = [
    "run",
    "-m",
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=20",
]
TINY = [
    "analysis=evaluate",
    "dataset=synthetic",
    "model=cnn_small",
    "model.train.epochs=1",
    "model.snapshot_epochs=[1]",
    "monitor.examples=50",
    "monitor.attack_steps=1",
    "analysis.examples=50",
    "attack.steps=2",
    "progress=false",
]


def cluster_up() -> bool:
    try:
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "slurm_cluster.py"), "status"],
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


if not cluster_up():
    pytest.skip("no SLURM cluster answers: `make test-slurm` starts one", allow_module_level=True)


def reprlab(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**reprlab_env(), "REPRLAB_STORE": str(cwd / "store")}
    return subprocess.run(
        [sys.executable, "-m", "reprlab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**reprlab_env(), "REPRLAB_STORE": str(cwd / "store")}
    return subprocess.Popen(
        [sys.executable, "-m", "reprlab", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def summary(cwd: Path, sweep: str) -> pd.DataFrame:
    return pd.read_csv(cwd / sweep / "summary.csv").sort_values("run").reset_index(drop=True)


def trained_now(cwd: Path, sweep: str) -> list[bool]:
    return [
        json.loads(p.read_text())["models"]["model"].get("trained_now", False)
        for p in sorted((cwd / sweep).glob("*/run.json"))
    ]


def job_ids(output: str) -> dict[int, str]:
    return {int(n): j for n, j in re.findall(r"sweep job (\d+): SLURM job (\S+),", output)}


def squeue_state(job: str) -> str:
    done = subprocess.run(
        ["squeue", "--states=all", "--array", "-h", "-o", "%i %T", f"--jobs={job.split('_')[0]}"],
        capture_output=True,
        text=True,
    )
    states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    return states.get(job, "GONE")


def test_slurm_sweep_writes_the_sequential_summary_and_trains_once(tmp_path: Path) -> None:
    eps = "analysis.eps=[0.1],[0.2]"
    done = reprlab(*SLURM, *TINY, eps, "hydra.sweep.dir=slurm", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "Bypassing sacct" not in out and "Traceback" not in out
    ids = job_ids(out)
    assert sorted(ids) == [0, 1], out[-2000:]
    for log in re.findall(r"SLURM job \S+, log (\S+)", out):
        assert Path(log).exists(), log
    assert sorted(trained_now(tmp_path, "slurm")) == [False, True], "the shared model trains once"

    sequential = reprlab("run", "-m", *TINY, eps, "hydra.sweep.dir=sequential", cwd=tmp_path)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    ours, theirs = summary(tmp_path, "slurm"), summary(tmp_path, "sequential")
    columns = ["run", "status", "model", "eps", "clean_acc", "robust_acc"]
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])


def test_a_failing_job_is_listed_with_its_error_and_exit_1(tmp_path: Path) -> None:
    # lr 1e30 diverges: the weights are not finite, and the store refuses to keep them.
    done = reprlab(*SLURM, *TINY, "model.train.lr=0.01,1e30", "hydra.sweep.dir=s", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("reprlab: error:")]
    assert len(errors) == 1 and "sweep job 1" in errors[0] and "non-finite" in errors[0], errors
    table = summary(tmp_path, "s")
    assert list(table.status) == ["completed", "failed"]


@pytest.mark.parametrize(
    ("option", "names"),
    [
        ("hydra.launcher.gpus_per_node=1", "hydra.launcher.gpus_per_node"),
        ("hydra.launcher.partition=nope", "hydra.launcher.partition"),
        ("hydra.launcher.cpus_per_task=64", "hydra.launcher.cpus_per_task"),
    ],
)
def test_sbatch_refusals_are_one_line_before_anything_is_written(
    tmp_path: Path, option: str, names: str
) -> None:
    done = reprlab(*SLURM, option, *TINY, "analysis.eps=[0.1],[0.2]", cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("reprlab: error: sbatch refuses") and names in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written"


def test_a_cancelled_job_is_recorded_and_a_rerun_resumes_its_training(tmp_path: Path) -> None:
    longer = [*TINY, "model.train.epochs=4", "model.snapshot_epochs=[4]", "seed=0,1"]
    sweep = start(*SLURM, *longer, "hydra.sweep.dir=s", cwd=tmp_path)
    checkpoint = None
    deadline = time.monotonic() + 600
    while checkpoint is None and time.monotonic() < deadline:
        checkpoint = next(iter((tmp_path / "store").glob("*/work/last.pt")), None)
        time.sleep(1)
    assert checkpoint is not None, "training never saved a checkpoint"
    subprocess.run(["scancel", "--name=reprlab"], check=True)  # every job of this sweep
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 1, out[-3000:]
    table = summary(tmp_path, "s")
    assert len(table) == 2 and set(table.status) <= {"interrupted", "failed"}, table
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "s").glob("*/run.json"))]
    assert any("CANCELLED" in (r.get("error") or "") for r in records), records

    again = reprlab(*SLURM, *longer, "hydra.sweep.dir=again", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    found = [
        *(tmp_path / "again").glob(".submitit/*/*_log.out"),
        *(tmp_path / "again").glob("*/*.log"),
    ]
    logs = "".join(p.read_text() for p in found)
    assert "resuming after epoch" in logs, logs[-3000:]


def test_eight_jobs_two_killed(tmp_path: Path) -> None:
    """8 short jobs sharing one model; 2 chosen at random get SIGKILL in their job step once
    running: 6 complete, 2 are recorded, the summary lists 8, the store verifies clean, and a
    rerun of the 2 completes them without training the shared model again."""
    values = [f"[{0.05 * (i + 1):.2f}]" for i in range(8)]
    sweep = start(*SLURM, *TINY, f"analysis.eps={','.join(values)}", "hydra.sweep.dir=s",
                  cwd=tmp_path)  # fmt: skip
    victims = set(random.Random(22).sample(range(1, 8), 2))
    ids: dict[int, str] = {}
    output = []
    assert sweep.stdout is not None
    for line in sweep.stdout:
        output.append(line)
        ids.update(job_ids(line))
        if len(ids) == 8:
            break
    killed: set[int] = set()
    deadline = time.monotonic() + 900
    while killed != victims and time.monotonic() < deadline:
        for num in victims - killed:
            if squeue_state(ids[num]) == "RUNNING":
                subprocess.run(["scancel", "--signal=KILL", ids[num]], check=True)
                killed.add(num)
        time.sleep(0.5)
    rest, _ = sweep.communicate(timeout=900)
    out = "".join(output) + rest
    assert killed == victims and sweep.returncode == 1, out[-3000:]
    table = summary(tmp_path, "s")
    assert len(table) == 8, table
    done = table[table.status == "completed"]
    assert len(done) == 6 and set(table.index) - set(done.index) == victims, table
    verify = subprocess.run(
        [sys.executable, "-m", "reprlab", "cache", "verify", "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        env=reprlab_env(),
    )
    print(verify.stdout)
    assert verify.returncode == 0 and "all intact" in verify.stdout, verify.stdout

    redo = ",".join(values[i] for i in sorted(victims))
    again = reprlab(*SLURM, *TINY, f"analysis.eps={redo}", "hydra.sweep.dir=again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(summary(tmp_path, "again").status) == ["completed", "completed"]
    assert trained_now(tmp_path, "again") == [False, False], "the shared model is not retrained"
    print(f"completed {len(done)}, recorded {8 - len(done)}, retrained in the rerun 0")
