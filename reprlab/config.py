"""Config schemas and validation: the typed view of what Hydra composed from conf/.

Defaults live only in the YAML files of conf/; the dataclasses here carry no defaults that could
contradict them. :func:`validate` turns every mistake a user can make in a composed config into a
one-line :class:`~reprlab.errors.ReprlabError` before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reprlab.errors import ReprlabError
from reprlab.fit import OPTIMIZERS, SCHEDULES
from reprlab.optimize import NORMS
from reprlab.runtime import MODES as MODEL_MODES

GROUPS = ("dataset", "model", "attack", "analysis", "ref", "pair", "experiment")
"""Config groups a user picks options from; ``ref`` offers the same options as ``model``."""


def config_dir() -> Path:
    """Directory holding the YAML configs, shipped inside the package (``reprlab/conf``)."""
    return Path(str(resources.files("reprlab"))) / "conf"


def group_options(group: str) -> list[str]:
    """Sorted option names of config ``group`` (``ref`` lists the model recipes)."""
    directory = config_dir() / ("model" if group == "ref" else group)
    return sorted(path.stem for path in directory.glob("*.yaml"))


def register_ref_group() -> None:
    """Offer every model recipe in the ``ref`` group too, so ``ref=resnet18`` works.

    Each ``ref/<name>`` option is a config whose defaults list pulls ``model/<name>`` into the
    ``ref`` package: one source of truth for recipes, no copied files.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in group_options("model"):
        store.store(group="ref", name=name, node={"defaults": [f"/model/{name}@_here_"]})


# --- schemas -------------------------------------------------------------------------------


@dataclass
class AdversarySpec:
    """The PGD adversary of an adversarial training recipe (part of the model's identity)."""

    norm: str
    eps: float
    step_size: float
    steps: int
    random_start: bool


@dataclass
class TrainSpec:
    """Optimisation hyperparameters of a training recipe."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: list[float]
    gamma: float
    augment: bool


@dataclass
class ModelRecipe:
    """A trained model recipe: architecture + training recipe (+ adversary) + seed."""

    name: str
    arch: str
    seed: int
    train: TrainSpec
    adversary: AdversarySpec | None
    snapshot_epochs: list[int] = field(default_factory=list)
    dataset: str | None = None  # its own training dataset (cross-task analyses); None: the run's


@dataclass
class DatasetSpec:
    """Which dataset, where it lives, and its customary attack radii."""

    name: str
    root: str
    train_limit: int | None
    eps_linf: float
    eps_l2: float


@dataclass
class AttackSpec:
    """The attack an analysis uses (robust evaluation, adversarial inputs)."""

    norm: str
    eps: float
    step_size: float | None
    steps: int
    random_start: bool
    restarts: int
    targeted: bool
    keep_best: bool
    model_mode: str


def typed(node: Any, schema: type, where: str) -> Any:
    """Merge config ``node`` into dataclass ``schema``; return the dataclass instance.

    Raises ReprlabError naming the offending key for a missing field, a wrong type or an unknown
    key.
    """
    if node is None:
        raise ReprlabError(f"{where} is missing; pick an option for it on the command line")
    try:
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        reason = str(err).splitlines()[0]
        raise ReprlabError(f"{where}.{key}: {reason}" if key else f"{where}: {reason}") from None


def recipe(node: Any, where: str = "model") -> ModelRecipe:
    """The validated :class:`ModelRecipe` of a ``model`` or ``ref`` config node."""
    spec: ModelRecipe = typed(node, ModelRecipe, where)
    t = spec.train
    check_positive(f"{where}.train.epochs", t.epochs)
    check_positive(f"{where}.train.batch_size", t.batch_size)
    check_positive(f"{where}.train.lr", t.lr)
    check_non_negative(f"{where}.train.weight_decay", t.weight_decay)
    check_choice(f"{where}.train.optimizer", t.optimizer, OPTIMIZERS)
    check_choice(f"{where}.train.schedule", t.schedule, SCHEDULES)
    if not all(0 < m < 1 for m in t.milestones):
        raise ReprlabError(
            f"{where}.train.milestones={t.milestones} is invalid: "
            "use fractions of training in (0, 1)"
        )
    bad = [e for e in spec.snapshot_epochs if not 1 <= e <= t.epochs]
    if bad:
        raise ReprlabError(
            f"{where}.snapshot_epochs has {bad} outside 1..{t.epochs} (model.train.epochs)"
        )
    if spec.dataset is not None:
        from reprlab.data import available_datasets

        check_choice(f"{where}.dataset", spec.dataset, tuple(available_datasets()))
    if spec.adversary is not None:
        a = spec.adversary
        check_choice(f"{where}.adversary.norm", a.norm, NORMS)
        check_non_negative(f"{where}.adversary.eps", a.eps)
        check_positive(f"{where}.adversary.step_size", a.step_size)
        check_positive(f"{where}.adversary.steps", a.steps)
    return spec


def attack_spec(node: Any, where: str = "attack") -> AttackSpec:
    """The validated :class:`AttackSpec` of an ``attack`` config node."""
    spec: AttackSpec = typed(node, AttackSpec, where)
    check_choice(f"{where}.norm", spec.norm, NORMS)
    check_non_negative(f"{where}.eps", spec.eps)
    if spec.step_size is not None:
        check_positive(f"{where}.step_size", spec.step_size)
    check_non_negative(f"{where}.steps", spec.steps)
    check_positive(f"{where}.restarts", spec.restarts)
    if spec.restarts > 1 and not spec.random_start:
        raise ReprlabError(
            f"{where}.restarts={spec.restarts} needs {where}.random_start=true "
            "(restarts from the same start repeat one run)"
        )
    check_choice(f"{where}.model_mode", spec.model_mode, MODEL_MODES)
    return spec


def dataset_spec(node: Any) -> DatasetSpec:
    """The validated :class:`DatasetSpec` of the ``dataset`` config node."""
    from reprlab.data import available_datasets

    spec: DatasetSpec = typed(node, DatasetSpec, "dataset")
    check_choice("dataset.name", spec.name, tuple(available_datasets()))
    if spec.train_limit is not None:
        check_positive("dataset.train_limit", spec.train_limit)
    return spec


def recipe_dataset(spec: ModelRecipe, run: DatasetSpec) -> DatasetSpec:
    """The dataset recipe ``spec`` is trained on: the run's ``run``, unless the recipe names its
    own (``model.dataset=fashion_mnist``, for cross-task analyses).

    A recipe's own dataset is read from ``conf/dataset/<name>.yaml`` (its customary radii, the
    whole training split) with the run's data root.
    """
    if spec.dataset is None or spec.dataset == run.name:
        return run
    node = OmegaConf.load(config_dir() / "dataset" / f"{spec.dataset}.yaml")
    node.root = run.root
    return dataset_spec(node)


def check_recipe_dataset(spec: ModelRecipe, run: DatasetSpec, where: str) -> None:
    """Raise ReprlabError unless a recipe's own dataset has the run's input shape."""
    from reprlab.data import dataset_info

    own, theirs = dataset_info(recipe_dataset(spec, run).name), dataset_info(run.name)
    shape = (own.channels, own.image_size)
    if shape != (theirs.channels, theirs.image_size):
        raise ReprlabError(
            f"{where}.dataset={own.name} has {own.channels}x{own.image_size}x{own.image_size} "
            f"images but the run's dataset {theirs.name} has "
            f"{theirs.channels}x{theirs.image_size}x{theirs.image_size}; a recipe's own dataset "
            "must have the run's input shape"
        )


def validate(cfg: DictConfig) -> None:
    """Check what every run shares; raise ReprlabError (one line) on the first problem found.

    Checks the model (and ref) recipes, the dataset, the attack and the top-level settings. The
    analysis's own parameters are its runner's schema and the dataset's files are checked by
    :func:`check_data`; :func:`reprlab.analyses.validate_run` calls all three.
    """
    from reprlab.models import available_archs
    from reprlab.runtime import resolve_device

    run = dataset_spec(cfg.get("dataset"))
    for where in ("model", "ref"):
        if cfg.get(where) is not None:
            spec = recipe(cfg[where], where)
            check_choice(f"{where}.arch", spec.arch, tuple(available_archs()))
            check_recipe_dataset(spec, run, where)
    attack_spec(cfg.get("attack"))
    resolve_device(str(cfg.device))
    analysis = cfg.get("analysis")
    if analysis is None or "name" not in analysis:
        raise ReprlabError("no analysis chosen; pick one, e.g. analysis=evaluate")


def check_data(cfg: DictConfig) -> None:
    """Raise ReprlabError (one line, with the remedy) unless the dataset's files are on disk,
    and those of a recipe's own training dataset."""
    from reprlab.data import check_available

    dataset = dataset_spec(cfg.get("dataset"))
    check_available(dataset.name, dataset.root)
    for where in ("model", "ref"):
        if cfg.get(where) is not None:
            own = recipe_dataset(recipe(cfg[where], where), dataset)
            if own is not dataset:
                check_available(own.name, own.root)


# --- checks --------------------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(value))
    return repr(value) if isinstance(value, str) else str(value)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ReprlabError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ReprlabError(f"{key}={_show(value)} is invalid: choose one of {', '.join(choices)}")


def check_positive(key: str, value: float) -> None:
    """Raise ReprlabError unless ``value`` > 0."""
    if not value > 0:
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be > 0")


def check_non_negative(key: str, value: float) -> None:
    """Raise ReprlabError unless ``value`` >= 0."""
    if not value >= 0:
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be >= 0")
