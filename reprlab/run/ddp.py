"""One rank of a data-parallel training job: ``torchrun ... -m reprlab.run.ddp <job.json>``.

Started by :func:`reprlab.run.training_job.train_in_processes` (never by hand): the parent holds the
store entry's lock and wrote the job. Every rank joins the process group, builds the same model
and loaders, and runs :func:`reprlab.run.training_job.train_recipe` on its shard; rank 0 alone
writes the
entry's checkpoints, snapshots and metrics (the parent then seals the entry).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from reprlab.core import distributed
from reprlab.data import dataset_info
from reprlab.io.store import TrainingFiles
from reprlab.run.config import DatasetSpec, ModelRecipe, typed
from reprlab.run.recipes import monitor_attack
from reprlab.run.training_job import Monitor, Trainer, train_recipe
from reprlab.runtime import SpeedSwitches, seed_everything


class ReadOnlyFiles:
    """What ranks other than 0 get instead of the entry's files: nothing is written."""

    def load_checkpoint(self) -> None:
        return None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def save_snapshot(self, epoch: int, payload: Any) -> None:
        pass

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        pass


def run(job: dict[str, Any]) -> None:
    """Train this rank's part of ``job`` (the JSON :func:`train_in_processes` writes)."""
    device = distributed.init_from_env(job["device_type"])
    rank = distributed.rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s][reprlab rank {rank}][%(levelname)s] - %(message)s",
    )
    for path in job.get("log_files", []):  # the parent's run log: one log for the whole run
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(handler)
    spec: ModelRecipe = typed(job["recipe"], ModelRecipe, "model")
    dataset: DatasetSpec = typed(job["dataset"], DatasetSpec, "dataset")
    m = job["monitor"]
    t = job["trainer"]
    seed_everything(spec.seed)
    files: Any = (
        TrainingFiles(Path(job["entry"]), job["key"], Path(job["root"]))
        if rank == 0
        else ReadOnlyFiles()
    )
    try:
        train_recipe(
            spec,
            dataset,
            dataset_info(dataset.name),
            files,
            device=device,
            monitor=Monitor(
                examples=m["examples"],
                batch_size=m["batch_size"],
                attack=monitor_attack(spec, dataset, m["attack_steps"]),
                seed=m["seed"],
            ),
            num_workers=job["num_workers"],
            progress=bool(job["progress"]) and rank == 0,
            trainer=Trainer(
                devices=t["devices"],
                sync_batchnorm=t["sync_batchnorm"],
                speed=SpeedSwitches(
                    bf16=t["bf16"], channels_last=t["channels_last"], compile=t["compile"]
                ),
            ),
        )
        distributed.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
