"""The training job: train one model recipe into its store entry, resuming where it stopped.

Called by the run context when the store misses a model. It builds the loaders, the settings
and the held-out monitor, and hands checkpoints, snapshots and metrics to the entry's files; the
loop itself is :func:`reprlab.train.train_classifier`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from reprlab.attacks import PGD, robust_accuracy
from reprlab.config import DatasetSpec, ModelRecipe
from reprlab.data import DatasetInfo, make_loader
from reprlab.errors import ReprlabError
from reprlab.recipes import build_for, describe_adversary, train_settings
from reprlab.runtime import seeded_generator
from reprlab.store import TrainingFiles
from reprlab.train import train_classifier

log = logging.getLogger("reprlab")


@dataclass(frozen=True)
class Monitor:
    """Held-out metrics after every epoch (they never change the weights): clean and PGD
    accuracy on a fixed sample of ``examples`` test images drawn with ``seed``. The attack is
    the recipe's own (:func:`reprlab.recipes.monitor_attack`)."""

    examples: int
    batch_size: int
    attack: PGD
    seed: int

    def settings(self) -> dict[str, Any]:
        """What the monitor's numbers mean, as recorded in the store entry's meta.json."""
        a = self.attack
        return {
            "split": "test",
            "examples": self.examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "attack": {
                "norm": a.norm,
                "eps": a.eps,
                "step_size": a.step_size,
                "steps": a.steps,
                "random_start": a.random_start,
                "restarts": a.restarts,
                "keep_best": a.keep_best,
                "model_mode": a.model_mode,
            },
        }


def train_recipe(
    spec: ModelRecipe,
    dataset: DatasetSpec,
    info: DatasetInfo,
    files: TrainingFiles,
    *,
    device: torch.device,
    monitor: Monitor,
    num_workers: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``spec`` on ``dataset`` into store entry ``files``; return (weights, summary).

    Resumes from the entry's checkpoint when one is there; writes a checkpoint and the metrics
    after every epoch and keeps the weights of ``spec.snapshot_epochs``. The summary records the
    monitor's settings (``monitor``) next to its final numbers.
    """
    log.info(
        "model %s: training (%s, %d epochs)",
        spec.name,
        describe_adversary(spec),
        spec.train.epochs,
    )
    model = build_for(spec, info)
    loader = make_loader(
        dataset.name,
        dataset.root,
        "train",
        batch_size=spec.train.batch_size,
        train=True,
        augment=spec.train.augment,
        seed=spec.seed,
        device=device,
        limit=dataset.train_limit,
        num_workers=num_workers,
    )
    if len(loader) == 0:
        raise ReprlabError(
            f"fewer training images than model.train.batch_size={spec.train.batch_size}; "
            "lower the batch size or raise dataset.train_limit"
        )
    monitor_batches = list(
        make_loader(
            dataset.name,
            dataset.root,
            "test",
            batch_size=monitor.batch_size,
            train=False,
            seed=monitor.seed,
            device=device,
            limit=monitor.examples,
            num_workers=num_workers,
        ).epoch(0)
    )

    def evaluate(net: torch.nn.Module, epoch: int) -> dict[str, float]:
        generator = seeded_generator(monitor.seed, device)
        return {
            "eval_clean_acc": robust_accuracy(net, monitor_batches, None, progress=False),
            f"eval_pgd{monitor.attack.steps}_acc": robust_accuracy(
                net, monitor_batches, monitor.attack, generator=generator, progress=False
            ),
        }

    snapshots = set(spec.snapshot_epochs)

    def on_epoch_end(state: dict[str, Any], record: dict[str, Any]) -> None:
        # The checkpoint last: it vouches for the snapshot and metrics written before it, and a
        # run killed before it redoes this epoch (rewriting both).
        if record["epoch"] in snapshots:
            files.save_snapshot(record["epoch"], state["model"])
        files.write_metrics(state["history"])
        files.save_checkpoint(state)

    resume = files.load_checkpoint()
    if resume is not None:
        log.info("model %s: resuming after epoch %d", spec.name, resume["epoch"])
    history = train_classifier(
        model,
        loader,
        train_settings(spec),
        device=device,
        evaluate=evaluate,
        resume=resume,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    summary = {
        "final": history[-1] if history else {},
        "epochs_trained": len(history),
        "monitor": monitor.settings(),
    }
    return model.state_dict(), summary
