"""Every ended run is recorded; sweeps survive a bad job; `reprlab report` reads what is there."""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import FAST, reprlab_env, run_reprlab

from reprlab.cli.app import main
from reprlab.cli.run import compose_config
from reprlab.data.mnist_offline import RAW_FILES
from reprlab.io.store import store_key
from reprlab.run.config import dataset_spec, recipe
from reprlab.run.recipes import model_identity

# Long enough (hundreds of epochs) that the run is still training when the signal comes.
SLOW_TRAINING = [*FAST, "analysis=train", "model.train.epochs=500", "monitor.examples=50"]


def wait_for_running(workdir: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The run.json of the one run under ``workdir`` once it says ``running``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for path in (workdir / "outputs" / "runs").rglob("run.json"):
            try:
                if json.loads(path.read_text()).get("models", {}).get("model"):
                    return path
            except json.JSONDecodeError:
                pass  # never: run.json is written atomically; checked anyway
        time.sleep(0.1)
    raise AssertionError("the run never started")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def expected_key(overrides: list[str]) -> str:
    cfg = compose_config(overrides)
    return store_key(model_identity(recipe(cfg.model), dataset_spec(cfg.dataset)))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_recorded_without_a_traceback(
    workdir: Path, signum: int, code: int
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reprlab", "run", *SLOW_TRAINING],
        cwd=workdir,
        env=reprlab_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored (and Python then keeps it ignored);
        # the run must see the signal as a user at a terminal sends it.
        preexec_fn=_default_sigint,
    )
    record_path = wait_for_running(workdir, process)
    during = json.loads(record_path.read_text())
    # The key of the model being trained is there before training ends.
    assert during["status"] == "running"
    assert during["models"]["model"]["key"] == expected_key(SLOW_TRAINING)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [f"reprlab: interrupted by {name} (exit {code})"]
    record = json.loads(record_path.read_text())
    assert record["status"] == "interrupted"
    assert name in record["error"]
    assert record["models"]["model"]["key"] == during["models"]["model"]["key"]
    assert record["timings"]["total_seconds"] > 0


@pytest.mark.slow
def test_a_run_killed_with_sigkill_reads_as_stale(workdir: Path, capsys) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reprlab", "run", *SLOW_TRAINING],
        cwd=workdir,
        env=reprlab_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record_path = wait_for_running(workdir, process)
    process.kill()
    process.wait(timeout=60)
    assert json.loads(record_path.read_text())["status"] == "running"  # nothing could record it
    code, out, errors = report(workdir / "outputs" / "runs", capsys)
    assert code == 0, errors
    table = pd.read_csv(io.StringIO(out))
    assert list(table.status) == ["stale"]


def write_record(directory: Path, record: object) -> Path:
    directory.mkdir(parents=True)
    path = directory / "run.json"
    path.write_text(json.dumps(record))
    return path


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def report(runs: Path, capsys) -> tuple[int, str, list[str]]:
    code = main(["report", str(runs), "--format", "csv"])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_report_shows_a_run_whose_process_is_gone_as_stale(tmp_path: Path, capsys) -> None:
    here = platform.node()
    base = {"analysis": "train", "host": here, "started_unix": time.time() - 5}
    write_record(tmp_path / "killed", {**base, "status": "running", "pid": gone_pid()})
    write_record(tmp_path / "alive", {**base, "status": "running", "pid": os.getpid()})
    write_record(
        tmp_path / "elsewhere",
        {**base, "status": "running", "pid": gone_pid(), "host": f"{here}-other"},
    )
    write_record(tmp_path / "done", {**base, "status": "completed", "pid": gone_pid()})
    code, out, errors = report(tmp_path, capsys)
    assert code == 0, errors
    table = pd.read_csv(io.StringIO(out)).set_index("run")
    assert table.status.to_dict() == {
        "alive": "running",
        "done": "completed",
        "elsewhere": "running",  # another machine's process: cannot tell
        "killed": "stale",
    }


def test_report_warns_about_and_skips_unreadable_run_json(tmp_path: Path, capsys) -> None:
    write_record(tmp_path / "good", {"status": "completed", "analysis": "train"})
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text('{"status": "compl')
    write_record(tmp_path / "a_list", [1, 2])
    write_record(tmp_path / "nothing", None)
    write_record(tmp_path / "odd_fields", {"status": "failed", "models": [], "overrides": 3})
    code, out, warnings = report(tmp_path, capsys)
    assert code == 0
    assert len(warnings) == 3, warnings
    assert all(line.startswith("reprlab: warning: skipping ") for line in warnings)
    text = "\n".join(warnings)
    assert "corrupt/run.json: it is not valid JSON" in text
    assert "a_list/run.json: it holds a JSON list, not an object" in text
    assert "nothing/run.json: it holds a JSON NoneType, not an object" in text
    assert "good" in out and "odd_fields" in out
    assert len(pd.read_csv(io.StringIO(out))) == 2


def test_report_with_only_a_corrupt_run_json_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("not json")
    code, _, lines = report(tmp_path, capsys)
    assert code == 2
    assert lines[0].startswith("reprlab: warning: skipping ")
    assert lines[1].startswith("reprlab: error: no readable run.json under ")
    assert "(1 unreadable, skipped)" in lines[1]


def test_report_on_a_file_asks_for_a_directory(tmp_path: Path, capsys) -> None:
    path = write_record(tmp_path / "run", {"status": "completed"})
    code, _, lines = report(path, capsys)
    assert code == 2
    assert lines == [f"reprlab: error: {path} is a file; `reprlab report` needs a run or sweep "
                     "directory"]  # fmt: skip


def test_a_sweep_survives_a_failed_job(workdir: Path) -> None:
    # MNIST files that exist but hold garbage pass the checks; job 0 fails when it reads them,
    # and job 1 (synthetic data) must still run, and both be in the summary.
    root = workdir / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name in RAW_FILES:
        (root / "MNIST" / "raw" / name).write_bytes(bytes(range(256)) * 4)
    result = run_reprlab(
        "run",
        "-m",
        *[arg for arg in FAST if not arg.startswith("dataset=")],
        "analysis=evaluate",
        "analysis.examples=60",
        "analysis.batch_size=30",
        "attack.steps=2",
        f"dataset.root={root}",
        "dataset=mnist,synthetic",
        cwd=workdir,
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reprlab: error: sweep job 0 [dataset=mnist] failed: ")
    assert "is incomplete or corrupt" in lines[0]
    (sweep,) = (workdir / "outputs" / "runs").glob("*/*/*_sweep")
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary.dataset) == ["mnist", "synthetic"]
    assert list(summary.status) == ["failed", "completed"]
    assert "is incomplete or corrupt" in summary.error[0]
    assert summary.clean_acc[1] > 0.1  # the synthetic job ran to the end
