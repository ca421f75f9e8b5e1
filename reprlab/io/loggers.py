"""Experiment-tracking loggers (``logger=csv|tensorboard|mlflow|wandb``): a finished run's
per-epoch curves (its ``metrics.csv``), summary numbers, config and files, written where each
tool's reader looks.

``csv`` is the run directory itself (run.json, CSV tables, figures) and adds nothing. The others
are optional packages (the ``loggers`` extra) imported only when chosen; none needs a server or
the network: TensorBoard event files in the run directory, an MLflow local file store, a W&B
offline run directory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from reprlab.errors import ReprlabError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_installed(name: str) -> None:
    """Raise ReprlabError (with the remedy) when logger ``name`` needs a package that is not
    installed, before the run starts."""
    import importlib.util

    if name not in LOGGERS:
        raise ReprlabError(f"logger={name} is invalid: choose one of {', '.join(LOGGERS)}")
    package = PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ReprlabError(
            f"logger={name} needs the '{package}' package: pip install 'reprlab[loggers]' "
            "(or use logger=csv)"
        )


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers in a (nested) summary, keys joined with '.'; booleans and text left
    out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numbers(value, f"{name}."))
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


def history_of(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch records of the run (its ``metrics.csv``, one row per epoch), or none."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    if "epoch" not in frame.columns:
        return []
    return [numbers(row) for row in frame.to_dict("records")]


def log_run(settings: Mapping[str, Any], run_dir: Path, record: Mapping[str, Any]) -> Path | None:
    """Write the finished run in ``run_dir`` (``record``: its run.json) to the logger
    ``settings['name']``; return where it wrote (None for ``csv``)."""
    name = str(settings.get("name", "csv"))
    check_installed(name)
    if name == "csv":
        return None
    history = history_of(run_dir)
    summary = numbers(record.get("summary") or {})
    params = {str(o).split("=", 1)[0]: str(o).split("=", 1)[1] for o in record.get("overrides", [])
              if "=" in str(o)}  # fmt: skip
    params["analysis"] = str(record.get("analysis"))
    title = f"{record.get('analysis')}/{run_dir.name}"
    writer = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}[name]
    return writer(settings, run_dir, title, params, history, summary)


def _tensorboard(settings, run_dir, title, params, history, summary) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    where = run_dir / str(settings.get("subdir", "tensorboard"))
    writer = SummaryWriter(log_dir=str(where))
    try:
        for row in history:
            epoch = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(f"train/{key}", value, epoch)
        for key, value in summary.items():
            writer.add_scalar(f"summary/{key}", value, 0)
        writer.add_text("run", f"{title}\n\n" + json.dumps(params, indent=1), 0)
    finally:
        writer.close()
    return where


def _mlflow(settings, run_dir, title, params, history, summary) -> Path:
    import mlflow

    uri = str(settings.get("tracking_uri"))
    if "://" not in uri:  # a directory: MLflow's local file store
        uri = Path(uri).resolve().as_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(str(settings.get("experiment", "reprlab")))
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(str(settings.get("experiment", "reprlab")))
    )
    run = client.create_run(experiment_id, run_name=title, tags={"reprlab.run_dir": str(run_dir)})
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key[:250], value[:500])
    for row in history:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                client.log_metric(run_id, key, value, step=epoch)
    for key, value in summary.items():
        client.log_metric(run_id, f"summary.{key}", value)
    for path in sorted(run_dir.iterdir()):
        if path.is_file() and path.suffix in (".png", ".csv", ".json"):
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)


def _wandb(settings, run_dir, title, params, history, summary) -> Path:
    import wandb

    mode = str(settings.get("mode", "offline"))
    directory = Path(str(settings.get("dir", run_dir))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=str(settings.get("project", "reprlab")),
        name=title,
        dir=str(directory),
        mode=mode,
        config=params,
        reinit="create_new",
    )
    try:
        for row in history:
            epoch = int(row["epoch"])
            run.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        run.summary.update({f"summary.{k}": v for k, v in summary.items()})
        where = Path(run.dir).parent
    finally:
        run.finish()
    return where
