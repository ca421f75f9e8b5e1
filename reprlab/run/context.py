"""What a runner gets besides its config: models and artifacts from the store, data, the attack,
the run directory.

The run context is the one place a runner asks for services. It knows where things live and how
to obtain them (store hit, or train once under the store's lock); what a recipe means is
:mod:`reprlab.run.recipes`, how a model is trained is :mod:`reprlab.run.training_job`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from reprlab.core.attacks import Attack
from reprlab.core.fit import EpochBatches
from reprlab.data import DatasetInfo, dataset_info, make_loader
from reprlab.errors import ReprlabError
from reprlab.io.runs import RunDirectory
from reprlab.io.store import ArtifactStore, Payload, StoredArtifact, TrainingFiles, store_key
from reprlab.io.tables import threat_text
from reprlab.models import Classifier
from reprlab.run.config import (
    DatasetSpec,
    ModelRecipe,
    attack_spec,
    dataset_spec,
    recipe,
    recipe_dataset,
    recipe_named,
)
from reprlab.run.recipes import build_for, make_attack, model_identity, monitor_attack
from reprlab.run.training_job import Monitor, Trainer, train_recipe
from reprlab.runtime import resolve_device, resolve_speed, seeded_generator

log = logging.getLogger("reprlab")


@dataclass
class LoadedModel:
    """A model taken from the store, on the run's device, in eval mode: the last epoch's
    weights, or with ``model.checkpoint=best`` those of ``epoch``, the best robust validation
    accuracy (Rice et al. 2020); ``dataset`` is the one it was trained on (the run's, unless its
    recipe names its own)."""

    model: Classifier
    recipe: ModelRecipe
    entry: StoredArtifact
    checkpoint: str = "last"
    epoch: int | None = None
    dataset: DatasetSpec | None = None

    @property
    def label(self) -> str:
        return self.recipe.name

    @property
    def key(self) -> str:
        return self.entry.key


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def state_dict_mismatch(expected: Mapping[str, Any], given: Any) -> str:
    """How a state_dict ``given`` differs from ``expected`` (a model's own), as one line naming
    the keys: missing, unexpected, and those whose tensor shapes differ. Empty when it fits."""
    if not isinstance(given, Mapping):
        return f"it holds a {type(given).__name__}, not a state_dict of named tensors"
    missing = [k for k in expected if k not in given]
    unexpected = [str(k) for k in given if k not in expected]
    shapes = [
        f"{k} {list(given[k].shape)} vs {list(v.shape)} expected"
        for k, v in expected.items()
        if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != v.shape
    ]
    not_tensors = [
        str(k) for k in given if k in expected and not isinstance(given[k], torch.Tensor)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_names(unexpected)}")
    if shapes:
        parts.append(f"shapes differ: {_names(shapes, 3)}")
    if not_tensors:
        parts.append(f"not tensors: {_names(not_tensors)}")
    return "; ".join(parts)


def load_error(model: torch.nn.Module, state: Any, err: BaseException) -> str:
    """Why ``model.load_state_dict(state)`` failed, as one line naming the differing keys."""
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        return mismatch
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


class RunContext:
    """Services for one run: device, dataset, artifact store and the run directory."""

    def __init__(self, cfg: DictConfig, run: RunDirectory) -> None:
        self.cfg = cfg
        self.run = run
        self.device = resolve_device(str(cfg.device))
        self.dataset: DatasetSpec = dataset_spec(cfg.dataset)
        self.info: DatasetInfo = dataset_info(self.dataset.name)
        self.store = ArtifactStore(cfg.paths.store)
        self.progress = bool(cfg.progress)
        self.seed = int(cfg.seed)
        self.num_workers = int(cfg.num_workers)
        t = cfg.trainer
        self.trainer = Trainer(
            devices=int(t.devices),
            sync_batchnorm=bool(t.sync_batchnorm),
            speed=resolve_speed(t.bf16, t.channels_last, t.compile, self.device),
        )

    # --- models --------------------------------------------------------------------------

    def recipe(self, where: str = "model") -> ModelRecipe:
        """The validated recipe of config node ``where`` (``model`` or ``ref``)."""
        node = self.cfg.get(where)
        if node is None:
            what = "a model" if where == "model" else "a second model"
            raise ReprlabError(f"this analysis needs {what}: add {where}=<recipe>")
        return recipe(node, where)

    def training_dataset(self, spec: ModelRecipe) -> DatasetSpec:
        """The dataset ``spec`` is trained on: the run's, unless the recipe names its own."""
        return recipe_dataset(spec, self.dataset)

    def build(self, spec: ModelRecipe) -> Classifier:
        """A freshly initialised model of ``spec``'s architecture for its training dataset
        (the run's, or the recipe's own: its normaliser and classes), seeded."""
        return build_for(spec, dataset_info(self.training_dataset(spec).name))

    def model(self, where: str = "model") -> LoadedModel:
        """The trained model of recipe ``where`` from the store, training it first if missing.

        The entry is verified (every file against its recorded sha256, weights finite) before
        use. run.json records the key before training starts, then where the weights came from
        (``source``: trained or imported, with the imported file's sha256) and their sha256.
        """
        return self.obtain(self.recipe(where), where)

    def model_named(self, name: str, changes: Mapping[str, Any] | None = None) -> LoadedModel:
        """The trained model of recipe file ``conf/model/<name>.yaml`` on the run's dataset,
        as :meth:`model` gives the run's own ``model``/``ref`` (store hit, or trained once).

        For analyses over a list of recipes (e.g. ``analysis.models=[resnet18,vgg16_at]``).
        ``changes`` are merged into the recipe, nested like it (e.g. ``{"seed": 1, "name":
        "resnet18_s1"}``); command-line overrides of ``model.*`` do not apply. Recorded in
        run.json under ``models.<recipe's name>``.
        """
        spec = recipe_named(name, changes)
        return self.obtain(spec, spec.name)

    def obtain(self, spec: ModelRecipe, role: str) -> LoadedModel:
        """The trained model of recipe ``spec`` (store hit, or trained once under the store's
        lock), verified and on the run's device; run.json records it under ``models.<role>``."""
        dataset = self.training_dataset(spec)
        identity = model_identity(spec, dataset)
        key = store_key(identity)
        meta = {
            "kind": "model",
            "recipe": asdict(spec),
            "dataset": dataset.name,
            "identity": identity,
            "key": key,
            "device": str(self.device),
            "run": str(self.run.path),
        }
        if spec.pretrained is not None and self.store.get(key) is None:
            from reprlab.run.zoo import not_imported

            raise not_imported(spec)  # a published model is imported, never trained here
        # Recorded before the store is asked, so a run killed while training says which model.
        self.run.update(models={role: {"name": spec.name, "key": key}})
        entry, trained = self.store.obtain(
            key,
            meta,
            lambda files: self._train(spec, dataset, files),
            on_wait=lambda: log.info(
                "waiting for another process training %s (%s)", spec.name, key
            ),
        )
        if not trained:
            log.info("model %s: found in store (%s)", spec.name, key)
        source = entry.meta.get("source", "trained")
        record = {
            "name": spec.name,
            "threat": threat_text(meta["recipe"].get("adversary")),
            "key": key,
            "trained_now": trained,
            "source": source,
            "weights_sha256": entry.payload_sha256,
        }
        if source == "imported":
            record["checkpoint_sha256"] = entry.meta.get("checkpoint_sha256")
        epoch = None
        if spec.checkpoint == "best":
            best = entry.meta.get("best")
            if not isinstance(best, dict) or "epoch" not in best:
                raise ReprlabError(
                    f"store entry {key} ({spec.name}) kept no best-robust weights; use "
                    f"{role}.checkpoint=last"
                )
            epoch = int(best["epoch"])
            state = entry.load_snapshot(epoch)
            record.update(
                checkpoint="best",
                epoch=epoch,
                weights_sha256=entry.files[f"snapshots/epoch_{epoch:03d}.pt"]["sha256"],
            )
        else:
            state = entry.load()
            record["checkpoint"] = "last"
        self.run.update(models={role: record})
        model = self.load(spec, state, origin=f"store entry {key}")
        return LoadedModel(
            model=model,
            recipe=spec,
            entry=entry,
            checkpoint=spec.checkpoint,
            epoch=epoch,
            dataset=dataset,
        )

    def load(self, spec: ModelRecipe, state: dict[str, torch.Tensor], origin: str) -> Classifier:
        """Build ``spec``'s architecture and load the weights ``state`` (eval mode, on the run's
        device); ``origin`` names where they came from in an error."""
        model = self.build(spec)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise ReprlabError(
                f"{origin} does not fit {spec.arch}: {load_error(model, state, err)}"
            ) from None
        return model.to(self.device).eval()

    def _train(
        self, spec: ModelRecipe, dataset: DatasetSpec, files: TrainingFiles
    ) -> tuple[dict, dict]:
        monitor = self.cfg.monitor
        steps = int(monitor.attack_steps)
        self.run.update(seeds={"eval_sample": self.seed})
        return train_recipe(
            spec,
            dataset,
            dataset_info(dataset.name),
            files,
            device=self.device,
            monitor=Monitor(
                examples=int(monitor.examples),
                batch_size=int(monitor.batch_size),
                attack=monitor_attack(spec, dataset, steps),
                seed=self.seed,
            ),
            num_workers=self.num_workers,
            progress=self.progress,
            trainer=self.trainer,
        )

    # --- other artifacts -----------------------------------------------------------------

    def artifact(
        self,
        kind: str,
        identity: dict[str, Any],
        produce: Callable[[TrainingFiles], tuple[Payload, dict[str, Any]]],
        *,
        label: str,
    ) -> tuple[StoredArtifact, bool]:
        """The stored artifact of ``kind`` determined by ``identity``, produced once if missing.

        ``identity`` holds exactly what determines the artifact, including the store keys of the
        models it is trained against (e.g. ``{"front": key_a, "end": key_b, "tap": ..., ...}``).
        ``produce(files)`` trains or computes it (resuming from ``files.load_checkpoint()``) and
        returns (payload, summary). Recorded in run.json under ``artifacts.<label>``. Returns
        (entry, whether it was produced now).
        """
        identity = {"kind": kind, **identity}
        key = store_key(identity)
        meta = {
            "kind": kind,
            "label": label,
            "identity": identity,
            "key": key,
            "dataset": self.dataset.name,
            "device": str(self.device),
            "run": str(self.run.path),
        }
        entry, produced = self.store.obtain(
            key,
            meta,
            produce,
            on_wait=lambda: log.info("waiting for another process producing %s (%s)", label, key),
        )
        if not produced:
            log.info("%s %s: found in store (%s)", kind, label, key)
        self.run.update(artifacts={label: {"kind": kind, "key": key, "produced_now": produced}})
        return entry, produced

    def artifacts(
        self,
        kind: str,
        identities: Mapping[str, dict[str, Any]],
        produce: Callable[[TrainingFiles, list[str]], Mapping[str, tuple[Payload, dict[str, Any]]]],
        *,
        labels: Mapping[str, str],
    ) -> dict[str, StoredArtifact]:
        """Several artifacts of ``kind``, each stored under its own identity, the missing ones
        produced together by ONE call (e.g. every stitch point trained in one pass).

        ``identities`` and ``labels``: name -> the identity / run.json label of each.
        ``produce(files, names)`` returns name -> (payload, summary) for ``names`` (the ones
        missing from the store); ``files`` belong to the first of them, so a joint checkpoint
        lives there (put ``names`` into it, and resume only when they agree). Each artifact is
        then stored as if produced alone, so a later run asking for any subset reuses it. Only
        the first missing entry is locked while producing; a concurrent run waits on it, then
        finds the others complete or completes them from the same results.
        """
        keys = {name: store_key({"kind": kind, **ident}) for name, ident in identities.items()}
        missing = [name for name, key in keys.items() if self.store.get(key) is None]
        results: dict[str, tuple[Payload, dict[str, Any]]] = {}

        def one(name: str, files: TrainingFiles) -> tuple[Payload, dict[str, Any]]:
            if not results and name in missing:  # the first: produce every missing one
                results.update(produce(files, missing))
            if name not in results:  # removed from the store while this run went on
                results.update(produce(files, [name]))
            return results[name]

        entries = {}
        for name in [*missing, *(n for n in identities if n not in missing)]:
            entries[name], _ = self.artifact(
                kind,
                identities[name],
                lambda files, name=name: one(name, files),
                label=labels[name],
            )
        return {name: entries[name] for name in identities}

    # --- data and attacks ------------------------------------------------------------------

    def loader(
        self,
        split: str,
        examples: int | None,
        batch_size: int,
        *,
        seed: int | None = None,
        train: bool = False,
        augment: bool | None = False,
        dataset: DatasetSpec | None = None,
    ) -> EpochBatches:
        """A fixed sample of ``examples`` images of ``split`` ("train" or "test") drawn with
        ``seed`` (default: the run's seed; None examples: all) of the run's dataset (or
        ``dataset``, e.g. a recipe's own). ``train=False``: dataset order, every example;
        ``train=True``: shuffled per epoch by (seed, epoch), last incomplete batch dropped,
        augmented as the dataset's default when ``augment`` is None (no augmentation when
        False)."""
        seed = self.seed if seed is None else seed
        dataset = self.dataset if dataset is None else dataset
        suffix = "" if dataset is self.dataset else f"_{dataset.name}"
        self.run.update(seeds={f"{split}_sample{suffix}": seed})
        return make_loader(
            dataset.name,
            dataset.root,
            split,
            batch_size=batch_size,
            train=train,
            augment=augment,
            seed=seed,
            device=self.device,
            limit=examples,
            num_workers=self.num_workers,
        )

    def attack(self) -> Attack:
        """The run's attack (config group ``attack``: PGD, PGD-CW, APGD or AutoAttack); its
        settings (seed and version included) are recorded in run.json under ``attack``."""
        attack = make_attack(
            attack_spec(self.cfg.attack),
            seed=self.seed,
            progress=self.progress,
            num_classes=self.info.num_classes,
        )
        self.run.update(attack=attack.settings())
        return attack

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the run's device seeded with the run's seed (+ ``offset``)."""
        return seeded_generator(self.seed + offset, self.device)
