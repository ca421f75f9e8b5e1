"""What a runner gets besides its config: models from the store, data, attacks, the run directory.

This is the glue between config and computation: it reads the run's config, fetches or trains
models through the store, and hands plain tensors, modules and numbers to computation modules.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from reprlab.attacks import PGD, robust_accuracy
from reprlab.config import (
    AdversarySpec,
    AttackSpec,
    DatasetSpec,
    ModelRecipe,
    attack_spec,
    dataset_spec,
    recipe,
)
from reprlab.data import DatasetInfo, dataset_info, make_loader
from reprlab.errors import ReprlabError
from reprlab.models import Classifier, build_model
from reprlab.runs import RunDirectory
from reprlab.runtime import resolve_device
from reprlab.store import ModelStore, StoredModel, TrainingFiles, load_weights, store_key
from reprlab.train import EpochBatches as Batches
from reprlab.train import TrainSettings, train_classifier

log = logging.getLogger("reprlab")


def make_attack(spec: AttackSpec) -> PGD:
    """The PGD attack an analysis uses; a missing step size is 2.5·ε/steps (Madry et al.)."""
    step_size = spec.step_size
    if step_size is None:
        step_size = 2.5 * spec.eps / spec.steps if spec.eps > 0 and spec.steps > 0 else 1.0
    return PGD(
        norm=spec.norm,
        eps=spec.eps,
        step_size=step_size,
        steps=spec.steps,
        random_start=spec.random_start,
        restarts=spec.restarts,
        targeted=spec.targeted,
        keep_best=spec.keep_best,
        model_mode=spec.model_mode,
    )


def make_adversary(spec: AdversarySpec) -> PGD:
    """A recipe's training adversary: as Madry et al. train, the last iterate, in eval mode."""
    return PGD(
        norm=spec.norm,
        eps=spec.eps,
        step_size=spec.step_size,
        steps=spec.steps,
        random_start=spec.random_start,
        keep_best=False,
        model_mode="eval",
    )


def model_identity(spec: ModelRecipe, dataset: DatasetSpec) -> dict[str, Any]:
    """The fields that determine a model's weights: its store key is a hash of exactly these."""
    return {
        "arch": spec.arch,
        "seed": spec.seed,
        "dataset": {"name": dataset.name, "train_limit": dataset.train_limit},
        "train": asdict(spec.train),
        "adversary": asdict(spec.adversary) if spec.adversary is not None else None,
    }


def describe_adversary(spec: ModelRecipe) -> str:
    """Short text for a recipe's training adversary, e.g. ``linf 0.0314 x10`` or ``standard``."""
    a = spec.adversary
    return "standard" if a is None else f"{a.norm} {a.eps:.4g} x{a.steps}"


def build_for(spec: ModelRecipe, info: DatasetInfo) -> Classifier:
    """A freshly initialised model of ``spec``'s architecture for dataset ``info``.

    The initialisation is drawn with ``spec.seed`` without touching the global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return build_model(
            spec.arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            image_size=info.image_size,
            mean=info.mean,
            std=info.std,
        )


@dataclass
class LoadedModel:
    """A model taken from the store, on the run's device, in eval mode."""

    model: Classifier
    recipe: ModelRecipe
    entry: StoredModel

    @property
    def label(self) -> str:
        return self.recipe.name


class RunContext:
    """Services for one run: device, dataset, model store and the run directory."""

    def __init__(self, cfg: DictConfig, run: RunDirectory) -> None:
        self.cfg = cfg
        self.run = run
        self.device = resolve_device(str(cfg.device))
        self.dataset: DatasetSpec = dataset_spec(cfg.dataset)
        self.info: DatasetInfo = dataset_info(self.dataset.name)
        self.store = ModelStore(cfg.paths.store)
        self.progress = bool(cfg.progress)
        self.seed = int(cfg.seed)

    # --- models --------------------------------------------------------------------------

    def recipe(self, where: str = "model") -> ModelRecipe:
        """The validated recipe of config node ``where`` (``model`` or ``ref``)."""
        node = self.cfg.get(where)
        if node is None:
            raise ReprlabError(f"this analysis needs a second model: add {where}=<recipe>")
        return recipe(node, where)

    def build(self, spec: ModelRecipe) -> Classifier:
        """A freshly initialised model of ``spec``'s architecture for this dataset (seeded)."""
        return build_for(spec, self.info)

    def model(self, where: str = "model") -> LoadedModel:
        """The trained model of recipe ``where`` from the store, training it first if missing."""
        spec = self.recipe(where)
        identity = model_identity(spec, self.dataset)
        key = store_key(identity)
        meta = {
            "recipe": asdict(spec),
            "dataset": self.dataset.name,
            "identity": identity,
            "key": key,
            "device": str(self.device),
            "run": str(self.run.path),
        }
        entry, trained = self.store.obtain(
            key,
            meta,
            train=lambda files: self._train(spec, files),
            on_wait=lambda: log.info(
                "waiting for another process training %s (%s)", spec.name, key
            ),
        )
        if not trained:
            log.info("model %s: found in store (%s)", spec.name, key)
        self.run.update(models={where: {"name": spec.name, "key": key, "trained_now": trained}})
        model = self.load(spec, entry.weights_path)
        return LoadedModel(model=model, recipe=spec, entry=entry)

    def load(self, spec: ModelRecipe, weights: Path) -> Classifier:
        """Build ``spec``'s architecture and load ``weights`` (eval mode, on the run's device)."""
        model = self.build(spec)
        state = load_weights(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ReprlabError(
                f"{weights} does not fit {spec.arch}: {str(err).splitlines()[0]}"
            ) from None
        return model.to(self.device).eval()

    def _train(self, spec: ModelRecipe, files: TrainingFiles) -> tuple[dict, dict]:
        """Train ``spec`` into store entry ``files`` (resuming a checkpoint if one is there)."""
        log.info(
            "model %s: training (%s, %d epochs)",
            spec.name,
            describe_adversary(spec),
            spec.train.epochs,
        )
        model = self.build(spec)
        train = spec.train
        loader = make_loader(
            self.dataset.name,
            self.dataset.root,
            "train",
            batch_size=train.batch_size,
            train=True,
            augment=train.augment,
            seed=spec.seed,
            device=self.device,
            limit=self.dataset.train_limit,
            num_workers=int(self.cfg.num_workers),
        )
        if len(loader) == 0:
            raise ReprlabError(
                f"fewer training images than model.train.batch_size={train.batch_size}; "
                "lower the batch size or raise dataset.train_limit"
            )
        settings = TrainSettings(
            epochs=train.epochs,
            optimizer=train.optimizer,
            lr=train.lr,
            momentum=train.momentum,
            nesterov=train.nesterov,
            weight_decay=train.weight_decay,
            schedule=train.schedule,
            milestones=tuple(train.milestones),
            gamma=train.gamma,
            adversary=make_adversary(spec.adversary) if spec.adversary is not None else None,
            seed=spec.seed,
        )
        monitor = self.cfg.monitor
        monitor_loader = self.test_loader(int(monitor.examples), int(monitor.batch_size))
        monitor_attack = make_attack(
            replace(attack_spec(self.cfg.attack), steps=int(monitor.attack_steps), step_size=None)
        )

        def evaluate(net: torch.nn.Module, epoch: int) -> dict[str, float]:
            batches = list(monitor_loader.epoch(0))
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
            return {
                "eval_clean_acc": robust_accuracy(net, batches, None, progress=False),
                f"eval_pgd{monitor_attack.steps}_acc": robust_accuracy(
                    net, batches, monitor_attack, generator=generator, progress=False
                ),
            }

        snapshots = set(spec.snapshot_epochs)

        def on_epoch_end(state: dict[str, Any], record: dict[str, Any]) -> None:
            files.save_checkpoint(state)
            files.write_metrics(state["history"])
            if record["epoch"] in snapshots:
                files.save_snapshot(record["epoch"], state["model"])

        resume = files.load_checkpoint()
        if resume is not None:
            log.info("model %s: resuming after epoch %d", spec.name, resume["epoch"])
        history = train_classifier(
            model,
            loader,
            settings,
            device=self.device,
            evaluate=evaluate,
            resume=resume,
            on_epoch_end=on_epoch_end,
            progress=self.progress,
        )
        summary = {"final": history[-1] if history else {}, "epochs_trained": len(history)}
        return model.state_dict(), summary

    # --- data and attacks ------------------------------------------------------------------

    def test_loader(self, examples: int | None, batch_size: int) -> Batches:
        """A fixed sample of ``examples`` test images drawn with the run's seed (None: all)."""
        self.run.update(seeds={"eval_sample": self.seed})
        return make_loader(
            self.dataset.name,
            self.dataset.root,
            "test",
            batch_size=batch_size,
            train=False,
            seed=self.seed,
            device=self.device,
            limit=examples,
            num_workers=int(self.cfg.num_workers),
        )

    def attack(self) -> PGD:
        """The run's attack (config group ``attack``)."""
        return make_attack(attack_spec(self.cfg.attack))
