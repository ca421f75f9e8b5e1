"""Config schemas and validation: the typed view of what Hydra composed from conf/.

Defaults live only in the YAML files of conf/; the dataclasses here carry no defaults that could
contradict them. :func:`validate` turns every mistake a user can make in a composed config into a
one-line :class:`~reprlab.errors.ReprlabError` before any work starts.
"""

from __future__ import annotations

import math
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

GROUPS = ("dataset", "model", "attack", "analysis", "ref", "experiment")
"""Config groups a user picks options from; ``ref`` offers the same options as ``model``."""

MAX_SEED = 2**32 - 1
"""Seeds are 0..2**32-1: what NumPy, torch and Python all accept."""


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


def snapshot_epochs_upto(epochs_list: Any, epochs: Any) -> Any:
    """``${reprlab_snapshots:[1, 5, 10, ...],${.train.epochs}}``: a recipe's default snapshots.

    Keeps the listed epochs up to ``epochs`` and adds ``epochs`` itself, so the default follows
    ``model.train.epochs`` (``model.train.epochs=1`` keeps epoch 1). A list given on the command
    line replaces the default and is checked as given. A malformed ``epochs`` returns the list
    unchanged, so the recipe check names ``train.epochs`` itself.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return epochs_list
    try:
        kept = sorted({int(e) for e in epochs_list if int(e) <= epochs})
    except (TypeError, ValueError):
        return epochs_list
    return [*(e for e in kept if e != epochs), epochs]


def register_resolvers() -> None:
    """Register the resolvers reprlab's YAML uses; safe to call again.

    ``reprlab_snapshots``: :func:`snapshot_epochs_upto`. ``reprlab_once``: its argument, cached,
    so every job of a sweep sees the value the sweep's own config resolved first (the sweep
    directory stays one directory when ``analysis=`` is swept).
    """
    if not OmegaConf.has_resolver("reprlab_snapshots"):
        OmegaConf.register_new_resolver("reprlab_snapshots", snapshot_epochs_upto)
    if not OmegaConf.has_resolver("reprlab_once"):
        OmegaConf.register_new_resolver("reprlab_once", lambda value: value, use_cache=True)


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


@dataclass
class DatasetSpec:
    """Which dataset, where it lives, and its customary attack radii."""

    name: str
    root: str
    train_limit: int | None
    eps_linf: float
    eps_l2: float


@dataclass
class MonitorSpec:
    """Held-out metrics after every training epoch (``monitor.*``)."""

    examples: int | None
    batch_size: int
    attack_steps: int


@dataclass
class PathsSpec:
    """Where runs, data and the store live (``paths.*``)."""

    outputs: str
    data: str
    store: str


@dataclass
class RunSettings:
    """The top-level settings of every run (conf/config.yaml documents them)."""

    device: str
    seed: int
    progress: bool
    num_workers: int
    monitor: MonitorSpec
    paths: PathsSpec


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
    if not isinstance(node, (dict, DictConfig)):
        raise ReprlabError(f"{where}={_show(node)} is invalid: it must be a group of keys")
    try:
        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        name = ".".join(part for part in (where, key) if part)
        raise ReprlabError(f"{name}: {reason}" if name else reason) from None


def recipe(node: Any, where: str = "model") -> ModelRecipe:
    """The validated :class:`ModelRecipe` of a ``model`` or ``ref`` config node."""
    spec: ModelRecipe = typed(node, ModelRecipe, where)
    check_label(f"{where}.name", spec.name)
    check_seed(f"{where}.seed", spec.seed)
    t = spec.train
    check_positive(f"{where}.train.epochs", t.epochs)
    if not t.batch_size >= 2:
        raise ReprlabError(
            f"{where}.train.batch_size={t.batch_size} is invalid: it must be >= 2 "
            "(BatchNorm cannot train on one example)"
        )
    check_positive(f"{where}.train.lr", t.lr)
    check_non_negative(f"{where}.train.weight_decay", t.weight_decay)
    if not 0 <= t.momentum < 1:
        raise ReprlabError(
            f"{where}.train.momentum={_show(t.momentum)} is invalid: it must be in [0, 1) "
            "(SGD momentum, Adam's beta1)"
        )
    check_positive(f"{where}.train.gamma", t.gamma)
    if t.nesterov and t.optimizer == "sgd" and t.momentum == 0:
        raise ReprlabError(
            f"{where}.train.nesterov=true needs {where}.train.momentum > 0 (Nesterov momentum "
            "without momentum is plain SGD); set one of them"
        )
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
            f"{where}.snapshot_epochs has {bad} outside 1..{t.epochs} ({where}.train.epochs)"
        )
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
    check_positive(f"{where}.steps", spec.steps)
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
    check_nonempty("dataset.root", spec.root)
    if spec.train_limit is not None:
        check_positive("dataset.train_limit", spec.train_limit)
    check_non_negative("dataset.eps_linf", spec.eps_linf)
    check_non_negative("dataset.eps_l2", spec.eps_l2)
    return spec


def run_settings(cfg: DictConfig) -> RunSettings:
    """The validated top-level :class:`RunSettings` of a composed run config."""
    from dataclasses import fields

    values = {}
    for item in fields(RunSettings):
        try:
            node = cfg.get(item.name)
            if isinstance(node, (DictConfig, ListConfig)):
                node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ReprlabError(f"{item.name}: {reason}") from None
        values[item.name] = node
    spec: RunSettings = typed(values, RunSettings, "")
    check_seed("seed", spec.seed)
    check_non_negative("num_workers", spec.num_workers)
    if spec.monitor.examples is not None:
        check_positive("monitor.examples", spec.monitor.examples)
    check_positive("monitor.batch_size", spec.monitor.batch_size)
    check_positive("monitor.attack_steps", spec.monitor.attack_steps)
    for name in ("outputs", "data", "store"):
        check_nonempty(f"paths.{name}", getattr(spec.paths, name))
    return spec


def max_radius(norm: str, info: Any) -> float:
    """The largest meaningful attack radius in pixel units: the diameter of the image cube
    [0, 1]^(c×h×w) under ``norm`` (1 for L∞, sqrt(c·h·w) for L2)."""
    if norm == "l2":
        return math.sqrt(info.channels * info.image_size**2)
    return 1.0


def check_radius(key: str, eps: float, norm: str, info: Any) -> None:
    """Raise ReprlabError unless 0 <= ``eps`` <= the image cube's diameter under ``norm``."""
    check_non_negative(key, eps)
    bound = max_radius(norm, info)
    if eps > bound:
        raise ReprlabError(
            f"{key}={_show(eps)} is invalid: {norm} radii are in pixel units (images in [0, 1]), "
            f"so at most {bound:.4g} on {info.name}"
        )


def validate(cfg: DictConfig) -> None:
    """Check what every run shares; raise ReprlabError (one line) on the first problem found.

    Checks the top-level settings, the dataset, the model (and ref) recipes and the attack,
    including ranges that depend on the dataset (attack radii, the training batch size). The
    analysis's own parameters are its runner's schema and the dataset's files are checked by
    :func:`check_data`; :func:`reprlab.analyses.validate_run` calls all three.
    """
    from reprlab.data import dataset_info, train_size
    from reprlab.models import available_archs
    from reprlab.runtime import resolve_device

    settings = run_settings(cfg)
    dataset = dataset_spec(cfg.get("dataset"))
    info = dataset_info(dataset.name)
    available = train_size(dataset.name)
    if dataset.train_limit is not None:
        available = min(available or dataset.train_limit, dataset.train_limit)
    if cfg.get("model") is None:
        raise ReprlabError(
            f"no model chosen; every analysis needs one: add model=<recipe> "
            f"(one of: {', '.join(group_options('model'))})"
        )
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        check_choice(f"{where}.arch", spec.arch, tuple(available_archs()))
        if spec.adversary is not None:
            check_radius(f"{where}.adversary.eps", spec.adversary.eps, spec.adversary.norm, info)
        if available is not None and spec.train.batch_size > available:
            raise ReprlabError(
                f"{where}.train.batch_size={spec.train.batch_size} is invalid: {dataset.name} "
                f"has {available} training images here; lower it (or raise dataset.train_limit)"
            )
    attack = attack_spec(cfg.get("attack"))
    check_radius("attack.eps", attack.eps, attack.norm, info)
    if attack.targeted:
        raise ReprlabError(
            "attack.targeted=true is invalid: reprlab's analyses measure and craft untargeted "
            "attacks (there are no target labels to aim at); use attack.targeted=false"
        )
    resolve_device(settings.device)
    analysis = cfg.get("analysis")
    if not isinstance(analysis, DictConfig) or "name" not in analysis:
        raise ReprlabError("no analysis chosen; pick one, e.g. analysis=evaluate")
    try:
        name = analysis.name
    except OmegaConfBaseException as err:
        raise ReprlabError(f"analysis.name: {str(err).splitlines()[0]}") from None
    if not isinstance(name, str):
        raise ReprlabError(f"analysis.name={_show(name)} is invalid: name an analysis")


def check_data(cfg: DictConfig) -> None:
    """Raise ReprlabError (one line, with the remedy) unless the dataset's files are on disk."""
    from reprlab.data import check_available

    dataset = dataset_spec(cfg.get("dataset"))
    check_available(dataset.name, dataset.root)


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
    """Raise ReprlabError unless ``value`` is a finite number > 0."""
    if not value > 0:
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be > 0")
    if not math.isfinite(value):
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be a finite number > 0")


def check_non_negative(key: str, value: float) -> None:
    """Raise ReprlabError unless ``value`` is a finite number >= 0."""
    if not value >= 0:
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be >= 0")
    if not math.isfinite(value):
        raise ReprlabError(f"{key}={_show(value)} is invalid: it must be a finite number >= 0")


def check_seed(key: str, value: int) -> None:
    """Raise ReprlabError unless ``value`` is a seed NumPy, torch and Python all take."""
    if not 0 <= value <= MAX_SEED:
        raise ReprlabError(f"{key}={value} is invalid: seeds are integers in 0..{MAX_SEED}")


def check_label(key: str, value: str) -> None:
    """Raise ReprlabError unless ``value`` can name files: non-empty, printable, no path
    separator (recipe names become parts of result file names)."""
    if not value.strip() or not value.isprintable() or "/" in value or value in (".", ".."):
        raise ReprlabError(
            f"{key}={value!r} is invalid: a name must be non-empty, printable and without '/'"
        )


def check_nonempty(key: str, value: str) -> None:
    """Raise ReprlabError unless ``value`` (a path) is a non-blank string."""
    if not value.strip():
        raise ReprlabError(f"{key}={value!r} is invalid: give a directory")
