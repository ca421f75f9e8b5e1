"""`logger=tensorboard|mlflow|wandb`: each tool's own reader finds the per-epoch curves and the
summary numbers of a finished run (all offline: event files, a local MLflow store, a W&B
offline run directory)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reprlab.errors import ReprlabError
from reprlab.io.loggers import check_installed, log_run, numbers

HISTORY = (
    "epoch,train_loss,train_acc,eval_clean_acc,eval_pgd5_acc\n"
    "1,0.9,0.70,0.80,0.30\n2,0.4,0.90,0.95,0.55\n"
)
RECORD = {
    "analysis": "train",
    "overrides": ["model=cnn_small_at", "model.train.epochs=2"],
    "summary": {"epochs": 2, "eval_clean_acc": 0.95, "nested": {"rv": 1.25}, "note": "text"},
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "train" / "r0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(HISTORY)
    (run / "run.json").write_text(json.dumps(RECORD))
    return run


def test_summary_numbers_are_flattened_and_text_left_out() -> None:
    assert numbers(RECORD["summary"]) == {"epochs": 2.0, "eval_clean_acc": 0.95, "nested.rv": 1.25}


def test_csv_is_the_run_directory_and_a_missing_package_is_one_line(run_dir: Path) -> None:
    assert log_run({"name": "csv"}, run_dir, RECORD) is None
    with pytest.raises(ReprlabError, match="logger=nope is invalid"):
        check_installed("nope")


def test_tensorboard_event_files_hold_the_curves(run_dir: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    where = log_run({"name": "tensorboard", "subdir": "tensorboard"}, run_dir, RECORD)
    assert where == run_dir / "tensorboard" and list(where.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(where))
    events.Reload()
    curve = [(e.step, round(e.value, 6)) for e in events.Scalars("train/eval_pgd5_acc")]
    assert curve == [(1, 0.3), (2, 0.55)]
    assert events.Scalars("summary/nested.rv")[0].value == pytest.approx(1.25)


def test_mlflow_local_store_holds_params_curves_and_figures(run_dir: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    (run_dir / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    store = tmp_path / "mlruns"
    log_run({"name": "mlflow", "tracking_uri": str(store), "experiment": "demo"}, run_dir, RECORD)
    client = mlflow.MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("demo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.train.epochs"] == "2"
    assert run.data.metrics["summary.eval_clean_acc"] == pytest.approx(0.95)
    history = client.get_metric_history(run.info.run_id, "eval_clean_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.8), (2, 0.95)]
    assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow  # tens of seconds on the 2-core CPU; `make test-all` runs it
def test_wandb_offline_run_directory_holds_history_and_summary(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    where = log_run(
        {"name": "wandb", "project": "demo", "mode": "offline", "dir": str(tmp_path)},
        run_dir,
        RECORD,
    )
    assert where.name.startswith("offline-run-") and where.parent == tmp_path / "wandb"
    # What `wandb sync` uploads: the records of the run file, read with W&B's own reader.
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    def records() -> list[wandb_internal_pb2.Record]:
        store = DataStore()
        store.open_for_scan(str(next(where.glob("run-*.wandb"))))
        found = []
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            found.append(record)
        return found

    deadline = time.monotonic() + 60  # W&B's service may still be flushing the file
    found = records()
    while not any(r.WhichOneof("record_type") == "exit" for r in found):
        assert time.monotonic() < deadline, "the offline run file never got its exit record"
        time.sleep(0.5)
        found = records()
    steps, summary, config = [], {}, {}
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            steps.append((items["_step"], items["eval_pgd5_acc"]))
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.summary.update})  # fmt: skip
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
    assert steps == [(1, 0.3), (2, 0.55)]
    assert summary["summary.eval_clean_acc"] == pytest.approx(0.95)
    assert config["model.train.epochs"] == "2"
