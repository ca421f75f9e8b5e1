"""Config schemas and validation: the typed view of what Hydra composed from conf/.

Defaults live only in the YAML files of conf/; the dataclasses here carry no defaults that could
contradict them. :func:`validate` turns every mistake a user can make in a composed config into a
one-line :class:`~reprlab.errors.ReprlabError` before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reprlab.core.attacks import PGD_LOSSES
from reprlab.core.autoattack import AA_COMPONENTS, AA_VERSIONS
from reprlab.core.fit import OPTIMIZERS, SCHEDULES
from reprlab.core.optimize import NORMS
from reprlab.core.training_methods import TRAINING_METHODS
from reprlab.errors import ReprlabError
from reprlab.run.groups import (  # noqa: F401  (torch-free: the CLI imports them first)
    GROUPS,
    config_dir,
    group_options,
    register_ref_group,
    register_resolvers,
    snapshot_epochs_upto,
)
from reprlab.runtime import MODES as MODEL_MODES

MAX_SEED = 2**32 - 1
MAX_ATTACK_STEPS = 100_000
"""The most steps an attack may take (published PGD: 7 to 1000; APGD: 100)."""
"""Seeds are 0..2**32-1: what NumPy, torch and Python all accept."""


# --- schemas -------------------------------------------------------------------------------


ATTACK_KINDS = ("pgd", "autoattack")
CHECKPOINTS = ("last", "best")
BN_MODES = ("eval", "train")


@dataclass
class AdversarySpec:
    """The adversary and robust loss of an adversarial training recipe (all of it is part of the
    model's identity).

    ``method``: ``pgd_at`` (Madry et al. 2018: cross-entropy on PGD examples), ``trades`` (Zhang
    et al. 2019: CE + β·KL(clean ‖ adversarial), KL inner maximisation) or ``mart`` (Wang et al.
    2020: boosted CE on adversarial examples + λ·(1 − p_y)·KL). ``beta``: TRADES' β / MART's λ
    (unused by ``pgd_at``). ``bn_mode``: BatchNorm's mode while the adversary attacks (``eval``, as
    the reference code of all three, or ``train``). ``keep_best``: the adversary returns each
    example's strongest iterate instead of the last (Madry et al. use the last). The later
    fields carry defaults so that recipes written before them keep their meaning.
    """

    norm: str
    eps: float
    step_size: float
    steps: int
    random_start: bool
    method: str = "pgd_at"
    beta: float = 0.0
    bn_mode: str = "eval"
    keep_best: bool = False


@dataclass
class ValidationSpec:
    """A held-out validation split carved from the training data (part of the identity: it
    changes the training set). ``examples`` images drawn with ``seed`` never reach training; the
    monitor attacks them after every epoch with the recipe's own threat (``attack_steps`` PGD
    steps, in batches of ``batch_size``); with ``keep_best`` the weights of the epoch with the
    highest robust validation accuracy are kept besides the last (Rice et al. 2020)."""

    examples: int
    seed: int
    batch_size: int
    attack_steps: int
    keep_best: bool


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
class PretrainedSpec:
    """Where a recipe's weights come from when reprlab does not train them: a published model
    imported with ``reprlab cache import`` (see :mod:`reprlab.run.zoo`). ``mean``/``std``: the
    normalisation the model applies inside itself ([0]*c and [1]*c: none)."""

    source: str  # robustbench
    name: str  # the zoo's own name, e.g. Carmon2019Unlabeled
    dataset: str  # the zoo's dataset: cifar10 | cifar100 | imagenet
    threat: str  # the zoo's threat model: Linf | L2 | corruptions
    mean: list[float]
    std: list[float]


@dataclass
class ModelRecipe:
    """A trained model recipe: architecture + training recipe (+ adversary) + seed."""

    name: str
    arch: str
    seed: int
    train: TrainSpec
    adversary: AdversarySpec | None
    snapshot_epochs: list[int] = field(default_factory=list)
    validation: ValidationSpec | None = None
    checkpoint: str = "last"  # which weights analyses use: last | best (not part of the key)
    dataset: str | None = None  # its own training dataset (cross-task analyses); None: the run's
    pretrained: PretrainedSpec | None = None  # imported, never trained here (reprlab.run.zoo)


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
class TrainerSpec:
    """How models are trained on this machine (``trainer.*``): never part of a store key."""

    devices: int
    sync_batchnorm: bool
    bf16: str
    channels_last: str
    compile: str


@dataclass
class RunSettings:
    """The top-level settings of every run (conf/config.yaml documents them)."""

    device: str
    seed: int
    progress: bool
    num_workers: int
    monitor: MonitorSpec
    paths: PathsSpec
    trainer: TrainerSpec


@dataclass
class AttackSpec:
    """A PGD attack an analysis uses (robust evaluation, adversarial inputs): ``kind: pgd``.

    ``loss``: ``ce`` or ``cw`` (PGD-CW); ``clean_first``: the first run starts from the clean
    input (never weaker than the no-start attack). Defaults for the later fields keep attack
    configs written before them valid.
    """

    norm: str
    eps: float
    step_size: float | None
    steps: int
    random_start: bool
    restarts: int
    targeted: bool
    keep_best: bool
    model_mode: str
    kind: str = "pgd"
    loss: str = "ce"
    clean_first: bool = False


@dataclass
class AutoAttackSpec:
    """AutoAttack or its components (``kind: autoattack``), run by the authors' code.

    ``version``: standard | plus | rand | custom (``attacks`` lists the components of a custom
    run); ``seed`` null: the run's seed; ``target_classes`` null: min(9, classes − 1).
    """

    kind: str
    norm: str
    eps: float
    version: str
    attacks: list[str] | None
    seed: int | None
    batch_size: int
    target_classes: int | None
    apgd_iterations: int | None
    apgd_restarts: int | None
    model_mode: str
    targeted: bool = False


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
    if spec.dataset is not None:  # a dataset config (recipe_dataset reads it), e.g. a subset
        check_choice(f"{where}.dataset", spec.dataset, tuple(group_options("dataset")))
    if spec.adversary is not None:
        a = spec.adversary
        check_choice(f"{where}.adversary.norm", a.norm, NORMS)
        check_non_negative(f"{where}.adversary.eps", a.eps)
        check_positive(f"{where}.adversary.step_size", a.step_size)
        check_positive(f"{where}.adversary.steps", a.steps)
        check_choice(f"{where}.adversary.method", a.method, TRAINING_METHODS[1:])
        check_non_negative(f"{where}.adversary.beta", a.beta)
        check_choice(f"{where}.adversary.bn_mode", a.bn_mode, BN_MODES)
    if spec.validation is not None:
        v = spec.validation
        check_positive(f"{where}.validation.examples", v.examples)
        check_non_negative(f"{where}.validation.seed", v.seed)
        check_positive(f"{where}.validation.batch_size", v.batch_size)
        check_positive(f"{where}.validation.attack_steps", v.attack_steps)
    check_choice(f"{where}.checkpoint", spec.checkpoint, CHECKPOINTS)
    if spec.checkpoint == "best" and (spec.validation is None or not spec.validation.keep_best):
        raise ReprlabError(
            f"{where}.checkpoint=best needs a recipe that keeps its best-robust-validation "
            f"weights, and {spec.name} does not; set {where}.validation.keep_best=true (with "
            f"{where}.validation.examples=N) or use {where}.checkpoint=last"
        )
    return spec


def compose_model_node(name: str) -> DictConfig:
    """The ``model`` node Hydra composes for ``model=<name>`` (the recipe file with its defaults
    list resolved, e.g. ``cnn_small_at`` on top of ``cnn_small``), without a run.

    Works outside a Hydra app (a private initialisation of the config directory, cleared after)
    and inside one (``hydra.compose`` on the running app's config search path). Overrides given
    on the command line for ``model.*`` do not apply: this is the named recipe as written.
    Raises ReprlabError for a name that is not a recipe in conf/model.
    """
    options = group_options("model")
    if name not in options:
        raise ReprlabError(f"unknown model recipe '{name}'; choose one of: {', '.join(options)}")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"model={name}"]
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=overrides)
    else:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="reprlab"):
            cfg = compose(config_name="config", overrides=overrides)
    _HOME_DATASETS.setdefault(name, str(cfg.dataset.name))
    return cfg.model


_HOME_DATASETS: dict[str, str] = {}


def recipe_home_dataset(name: str) -> str:
    """The dataset recipe file ``conf/model/<name>.yaml`` is meant for: the ``dataset`` group
    option its defaults list picks (``override /dataset@_global_.dataset: cifar10``), which a run
    without ``dataset=`` uses. Raises ReprlabError for a name that is not a recipe."""
    if name not in _HOME_DATASETS:
        compose_model_node(name)
    return _HOME_DATASETS[name]


def run_recipe_names(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, str]:
    """Where each recipe of a run comes from -> its recipe file's name: ``model=`` and ``ref=``
    (as chosen, by the command line, a ``pair`` or an experiment: Hydra's ``choices``) and the
    entries of ``analysis.models`` (a name, or ``{recipe: name, ...}``)."""
    names = {
        f"{where}={choices[where]}": str(choices[where])
        for where in ("model", "ref")
        if choices.get(where) is not None
    }
    models = OmegaConf.select(cfg, "analysis.models", default=None)
    if isinstance(models, ListConfig):
        for index, entry in enumerate(models):
            name = entry.get("recipe") if isinstance(entry, DictConfig) else entry
            if isinstance(name, str) and name in group_options("model"):
                names[f"analysis.models[{index}]={name}"] = name
    if models is not None and choices.get("model") is not None:
        names.pop(f"model={choices['model']}")  # a model set: `model` is not used
    return names


SAMPLE_KEYS = {"examples": "test", "train_examples": "train", "ls_examples": "train"}
"""``analysis.*`` sample sizes and the split they draw from (``examples``: ``analysis.split``
where the analysis has one)."""


def check_asked_samples(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Raise ReprlabError when a sample size given on the command line (``analysis.examples``,
    ``analysis.train_examples``, ``analysis.ls_examples``) exceeds the images of its split of
    the run's dataset (after ``dataset.train_limit``). Defaults larger than a small dataset
    (e.g. ``synthetic``) keep meaning "all of it"."""
    from reprlab.data import split_size

    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    dataset = cfg.dataset
    for key, split in SAMPLE_KEYS.items():
        value = OmegaConf.select(cfg, f"analysis.{key}", default=None)
        if f"analysis.{key}" not in given or isinstance(value, bool) or not isinstance(value, int):
            continue
        if key == "examples":
            split = OmegaConf.select(cfg, "analysis.split", default=None) or split
        size = split_size(str(dataset.name), str(split))
        if split == "train" and dataset.train_limit is not None and size is not None:
            size = min(size, int(dataset.train_limit))
        if size is not None and value > size:
            raise ReprlabError(
                f"analysis.{key}={value} is more than the {size:,} {split} images of "
                f"{dataset.name}; lower it to {size} or less"
            )


@dataclass(frozen=True)
class DatasetChoice:
    """The run's dataset and who chose it: ``source`` is ``command line`` (``dataset=``),
    ``experiment <name>``, or ``recipe`` (no ``dataset=`` given: the recipes' own dataset);
    ``recipes`` maps each recipe of the run (``model=resnet18_at``) to the dataset it is meant
    for."""

    name: str
    source: str
    recipes: dict[str, str]

    def describe(self) -> str:
        """One line for the start of a run, e.g. ``dataset: cifar10 (model=resnet18_at's)``."""
        others = {where: home for where, home in self.recipes.items() if home != self.name}
        if self.source == "recipe":
            whose = ", ".join(self.recipes) or "the default"
            return f"dataset: {self.name} (the dataset of {whose}; dataset=<name> chooses another)"
        text = f"dataset: {self.name} (chosen by {self.source}"
        if others:
            meant = ", ".join(f"{where} is meant for {home}" for where, home in others.items())
            text += f"; {meant}"
        return text + ")"

    def record(self) -> dict[str, Any]:
        """As recorded in run.json."""
        return {"name": self.name, "chosen_by": self.source, "recipes_meant_for": self.recipes}


def dataset_choice(
    cfg: DictConfig, choices: Mapping[str, Any], overrides: Sequence[str]
) -> DatasetChoice:
    """Who chose the run's dataset (``choices``: Hydra's group choices; ``overrides``: the job's
    command-line overrides); raises ReprlabError when nobody did and the run's recipes are meant
    for different datasets (a one-line request for ``dataset=``)."""
    recipes = {
        where: recipe_home_dataset(name) for where, name in run_recipe_names(cfg, choices).items()
    }
    name = str(cfg.dataset.name)
    if any(o.lstrip("+~").split("=", 1)[0] == "dataset" for o in overrides):
        return DatasetChoice(name, "command line", recipes)
    if choices.get("experiment") is not None:
        return DatasetChoice(name, f"experiment {choices['experiment']}", recipes)
    homes = sorted(set(recipes.values()))
    if len(homes) > 1:
        meant = ", ".join(f"{where} is meant for {home}" for where, home in recipes.items())
        raise ReprlabError(
            f"the run's recipes are meant for different datasets ({meant}); choose one with "
            + " or ".join(f"dataset={home}" for home in homes)
        )
    return DatasetChoice(name, "recipe", recipes)


def recipe_named(
    name: str, changes: Mapping[str, Any] | None = None, where: str | None = None
) -> ModelRecipe:
    """The validated :class:`ModelRecipe` of recipe file ``conf/model/<name>.yaml``.

    ``changes`` (optional) are merged into it, nested like the recipe (e.g.
    ``{"seed": 1, "name": "cnn_small_s1"}`` or ``{"train": {"epochs": 1}}``); ``where`` names the
    setting the name came from in error messages (default ``model=<name>``).
    """
    where = where or f"model={name}"
    node = compose_model_node(name)
    if changes:
        try:
            node = OmegaConf.merge(node, OmegaConf.create(dict(changes)))
        except OmegaConfBaseException as err:
            raise ReprlabError(f"{where}: {str(err).splitlines()[0]}") from None
    return recipe(node, where)


def attack_spec(node: Any, where: str = "attack") -> AttackSpec | AutoAttackSpec:
    """The validated spec of an ``attack`` config node: :class:`AttackSpec` (``kind: pgd``, the
    default) or :class:`AutoAttackSpec` (``kind: autoattack``)."""
    if node is None:
        raise ReprlabError(f"{where} is missing; pick an option for it on the command line")
    kind = node.get("kind", "pgd") if hasattr(node, "get") else "pgd"
    check_choice(f"{where}.kind", kind, ATTACK_KINDS)
    if kind == "autoattack":
        return _autoattack_spec(node, where)
    spec: AttackSpec = typed(node, AttackSpec, where)
    check_choice(f"{where}.loss", spec.loss, PGD_LOSSES)
    check_choice(f"{where}.norm", spec.norm, NORMS)
    check_non_negative(f"{where}.eps", spec.eps)
    if spec.step_size is not None:
        check_positive(f"{where}.step_size", spec.step_size)
    check_positive(f"{where}.steps", spec.steps)
    if spec.steps > MAX_ATTACK_STEPS:
        raise ReprlabError(
            f"{where}.steps={spec.steps} is invalid: at most {MAX_ATTACK_STEPS} (published attacks "
            "take 7 to 1000 steps; this many would not finish)"
        )
    check_positive(f"{where}.restarts", spec.restarts)
    if spec.restarts > 1 and not spec.random_start:
        raise ReprlabError(
            f"{where}.restarts={spec.restarts} needs {where}.random_start=true "
            "(restarts from the same start repeat one run)"
        )
    check_choice(f"{where}.model_mode", spec.model_mode, MODEL_MODES)
    return spec


def _autoattack_spec(node: Any, where: str) -> AutoAttackSpec:
    spec: AutoAttackSpec = typed(node, AutoAttackSpec, where)
    check_choice(f"{where}.norm", spec.norm, NORMS)
    check_non_negative(f"{where}.eps", spec.eps)
    check_choice(f"{where}.version", spec.version, AA_VERSIONS)
    if spec.version == "custom":
        if not spec.attacks:
            raise ReprlabError(
                f"{where}.version=custom needs {where}.attacks=[...], e.g. [apgd-ce]"
            )
        for name in spec.attacks:
            check_choice(f"{where}.attacks", name, AA_COMPONENTS)
    elif spec.attacks:
        raise ReprlabError(
            f"{where}.attacks is set but version={spec.version} fixes the attacks; "
            f"use {where}.version=custom to choose them"
        )
    check_positive(f"{where}.batch_size", spec.batch_size)
    for name in ("target_classes", "apgd_iterations", "apgd_restarts"):
        value = getattr(spec, name)
        if value is not None:
            check_positive(f"{where}.{name}", value)
    if spec.targeted:
        raise ReprlabError(
            f"{where}.targeted=true is not offered for AutoAttack (it is untargeted; its "
            "APGD-T and FAB-T stages target classes themselves)"
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
        check_train_limit(spec)
    check_non_negative("dataset.eps_linf", spec.eps_linf)
    check_non_negative("dataset.eps_l2", spec.eps_l2)
    return spec


def check_train_limit(spec: DatasetSpec) -> None:
    """Raise ReprlabError when ``dataset.train_limit`` exceeds the training split: it would
    select every image, yet name a different model (a second training of the same one)."""
    from reprlab.data import train_size

    size = train_size(spec.name)
    if size is not None and spec.train_limit is not None and spec.train_limit > size:
        raise ReprlabError(
            f"dataset.train_limit={spec.train_limit} is more than the {size} training images of "
            f"{spec.name}; use dataset.train_limit=null for all of them"
        )


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


def check_recipe_for(spec: ModelRecipe, where: str, dataset: DatasetSpec) -> None:
    """Raise ReprlabError unless recipe ``spec`` can be trained on ``dataset``: a known
    architecture, an adversary radius within the dataset's range, a training batch no larger
    than the training set. ``where`` names the setting in the message (``model``, ``ref``,
    ``analysis.models[1]``)."""
    from reprlab.data import dataset_info, train_size
    from reprlab.models import available_archs

    info = dataset_info(dataset.name)
    available = train_size(dataset.name)
    if dataset.train_limit is not None:
        available = min(available or dataset.train_limit, dataset.train_limit)
    check_choice(f"{where}.arch", spec.arch, tuple(available_archs()))
    check_recipe_dataset(spec, dataset, where)
    check_validation_fits(spec, recipe_dataset(spec, dataset), where)
    if spec.adversary is not None:
        check_radius(f"{where}.adversary.eps", spec.adversary.eps, spec.adversary.norm, info)
    if available is not None and spec.train.batch_size > available:
        raise ReprlabError(
            f"{where}.train.batch_size={spec.train.batch_size} is invalid: {dataset.name} "
            f"has {available} training images here; lower it (or raise dataset.train_limit)"
        )


def validate(cfg: DictConfig) -> None:
    """Check what every run shares; raise ReprlabError (one line) on the first problem found.

    Checks the top-level settings, the dataset, the model (and ref) recipes and the attack,
    including ranges that depend on the dataset (attack radii, the training batch size). The
    analysis's own parameters are its runner's schema and the dataset's files are checked by
    :func:`check_data`; :func:`reprlab.analyses.validate_run` calls all three.
    """
    from reprlab.data import dataset_info
    from reprlab.runtime import resolve_device

    settings = run_settings(cfg)
    dataset = dataset_spec(cfg.get("dataset"))
    info = dataset_info(dataset.name)
    if cfg.get("model") is None:
        raise ReprlabError(
            f"no model chosen; every analysis needs one: add model=<recipe> "
            f"(one of: {', '.join(group_options('model'))})"
        )
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        check_recipe_for(spec, where, dataset)
    attack = attack_spec(cfg.get("attack"))
    check_radius("attack.eps", attack.eps, attack.norm, info)
    if isinstance(attack, AutoAttackSpec):
        check_autoattack_fits(attack, info.num_classes, dataset.name)
    if isinstance(attack, AttackSpec) and attack.targeted:
        raise ReprlabError(
            "attack.targeted=true is invalid: reprlab's analyses measure and craft untargeted "
            "attacks (there are no target labels to aim at); use attack.targeted=false"
        )
    check_trainer(settings.trainer, resolve_device(settings.device), cfg)
    analysis = cfg.get("analysis")
    if not isinstance(analysis, DictConfig) or "name" not in analysis:
        raise ReprlabError("no analysis chosen; pick one, e.g. analysis=evaluate")
    try:
        name = analysis.name
    except OmegaConfBaseException as err:
        raise ReprlabError(f"analysis.name: {str(err).splitlines()[0]}") from None
    if not isinstance(name, str):
        raise ReprlabError(f"analysis.name={_show(name)} is invalid: name an analysis")


def check_autoattack_fits(spec: AutoAttackSpec, classes: int, dataset: str) -> None:
    """Raise ReprlabError unless AutoAttack's seed is a seed and its targeted stages have that
    many other classes of ``dataset`` to aim at."""
    if spec.seed is not None:
        check_seed("attack.seed", spec.seed)
    if spec.target_classes is not None and spec.target_classes > classes - 1:
        raise ReprlabError(
            f"attack.target_classes={spec.target_classes} is invalid: {dataset} has "
            f"{classes - 1} other classes to target; lower it or leave it null "
            f"(min(9, {classes - 1}))"
        )


def check_validation_fits(spec: ModelRecipe, dataset: DatasetSpec, where: str = "model") -> None:
    """Raise ReprlabError unless ``spec``'s validation split leaves at least one training batch
    of ``dataset`` (after ``train_limit``), and the dataset is one it can be carved from."""
    if spec.validation is None:
        return
    from reprlab.data import dataset_info, train_size

    size = train_size(dataset.name)
    if size is None or not dataset_info(dataset.name).in_memory:
        raise ReprlabError(
            f"{where}.validation: a validation split of {dataset.name} (streamed from disk) is "
            f"not supported; set {where}.validation=null"
        )
    if dataset.train_limit is not None:
        size = min(size, dataset.train_limit)
    examples = spec.validation.examples
    if examples + spec.train.batch_size > size:
        raise ReprlabError(
            f"{where}.validation.examples={examples} leaves fewer than one batch "
            f"({spec.train.batch_size}) of the {size} training images of {dataset.name}; "
            f"lower {where}.validation.examples (or raise dataset.train_limit)"
        )


def check_trainer(trainer: TrainerSpec, device: Any, cfg: DictConfig) -> None:
    """Raise ReprlabError unless the ``trainer`` settings can run on ``device`` here: the speed
    switches (:func:`reprlab.runtime.resolve_speed`), SyncBatchNorm (CUDA only), that many
    devices present, and every trained recipe's batch size splitting evenly over them."""
    from reprlab.core.distributed import check_devices
    from reprlab.runtime import resolve_speed

    if trainer.devices > 1 and device.type == "cuda" and device.index is not None:
        raise ReprlabError(
            f"device={device} with trainer.devices={trainer.devices}: each DDP process takes "
            "the visible GPU of its local rank, so the index would be ignored; choose the GPUs "
            "with CUDA_VISIBLE_DEVICES=... and use device=cuda"
        )
    if str(trainer.compile).lower() in ("on", "true") and device.type == "cpu":
        raise ReprlabError(
            "trainer.compile=on is refused on the CPU: torch.compile spends minutes compiling "
            "before the first step, longer than reprlab's CPU runs take; use trainer.compile=off "
            "(or auto: on for CUDA only)"
        )
    resolve_speed(trainer.bf16, trainer.channels_last, trainer.compile, device)
    if trainer.devices < 1:
        raise ReprlabError(f"trainer.devices={trainer.devices} is invalid: it must be >= 1")
    if trainer.sync_batchnorm and trainer.devices > 1 and device.type != "cuda":
        raise ReprlabError(
            "trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm does not run on the "
            "CPU); use trainer.sync_batchnorm=false with device=cpu"
        )
    check_devices(trainer.devices, device)
    if trainer.devices > 1:
        for where in ("model", "ref"):
            if cfg.get(where) is None:
                continue
            batch = int(cfg[where].train.batch_size)
            if batch % trainer.devices:
                raise ReprlabError(
                    f"{where}.train.batch_size={batch} does not split over trainer.devices="
                    f"{trainer.devices}: the recipe's batch is the global one; pick a multiple"
                )


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
