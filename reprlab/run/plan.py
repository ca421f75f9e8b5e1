"""Cost before commitment: what a run will train, and how long that takes on this device.

A training's cost is estimated from *measured* passes: forward+backward passes of the recipe's
architecture, timed on the run's device (:func:`measure_pass`), give the seconds a pass of the
recipe's batch takes; the recipe fixes how many passes each batch costs (1 for standard
training, 1 + the adversary's steps for PGD-AT, 2 + steps for TRADES and MART), how many images
and epochs, and what the held-out monitor attacks after every epoch. :func:`plan_jobs` turns the
validated jobs of a run or sweep into the models they will train or reuse (a store lookup;
nothing is trained or written).

The estimate leaves out data loading, the optimiser's step and the first batches' warm-up, and
it is as fast as the device is *now* (a shared, loaded CPU is slower than an idle one). Training
prints a second estimate from its own first batches (:class:`reprlab.core.fit.OverallEta`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from reprlab.core.fit import format_duration
from reprlab.data import DatasetInfo, dataset_info, train_size
from reprlab.run.config import DatasetSpec, ModelRecipe, dataset_spec, recipe, recipe_dataset
from reprlab.run.recipes import build_for, describe_adversary, model_identity
from reprlab.runtime import seeded_generator

PROBE_SECONDS = 2.0
"""On a CPU the timed batch doubles (1, 4, 8, ...) up to the recipe's while a pass takes less."""

WHOLE_TEST_SPLIT = 10_000
"""Images the monitor is counted with when it takes the whole test split (``monitor.examples``
null): the size of the CIFAR and MNIST test splits."""


def passes_per_image(spec: ModelRecipe) -> int:
    """Forward+backward passes a training batch costs under recipe ``spec``: 1 (standard
    training); 1 + steps (PGD-AT: each adversary step is a pass w.r.t. the input, then the update;
    Madry et al. 2018); 2 + steps (TRADES and MART: the loss also needs the clean forward pass,
    Zhang et al. 2019, Wang et al. 2020)."""
    a = spec.adversary
    if a is None:
        return 1
    return a.steps + (1 if a.method == "pgd_at" else 2)


def training_images(spec: ModelRecipe, dataset: DatasetSpec) -> int | None:
    """Images one epoch of ``spec`` trains on: the training split (after ``dataset.train_limit``)
    less the recipe's validation split, in whole batches. None where the split's size is not
    fixed (Restricted ImageNet)."""
    size = train_size(dataset.name)
    if dataset.train_limit is not None:
        size = min(size, dataset.train_limit) if size is not None else None
    if size is None:
        return None
    if spec.validation is not None:
        size -= spec.validation.examples
    batch = spec.train.batch_size
    return max(size // batch, 0) * batch


def monitor_batches(
    spec: ModelRecipe, examples: int, batch_size: int, attack_steps: int
) -> tuple[int, int]:
    """(passes, images a pass) of the held-out monitor after each epoch: a clean pass and
    ``attack_steps`` PGD steps over each of its batches (the recipe's validation split and
    settings when it has one)."""
    if spec.validation is not None:
        v = spec.validation
        examples, batch_size, attack_steps = v.examples, v.batch_size, v.attack_steps
    return -(-examples // batch_size) * (attack_steps + 1), min(batch_size, examples)


@dataclass(frozen=True)
class PassCost:
    """Seconds of one forward+backward pass of ``n`` images: ``overhead + per_image * n``, fitted
    to passes timed at two batch sizes (a loaded CPU's per-pass overhead can outweigh the
    images)."""

    overhead: float
    per_image: float

    def seconds(self, images: int) -> float:
        return self.overhead + self.per_image * images


_MEASURED: dict[tuple[Any, ...], PassCost] = {}


def measure_pass(
    spec: ModelRecipe, info: DatasetInfo, device: torch.device, batch_size: int
) -> PassCost:
    """The :class:`PassCost` of ``spec``'s architecture on ``device`` for images of ``info``'s
    shape (random images, train mode, cross-entropy; cached per architecture, dataset, device
    and batch). On a GPU the recipe's batch is timed (after a warm-up pass); on a CPU (no
    warm-up: each new batch shape starts cold there anyway) passes of 1, 4, 8, ... images,
    doubling while a pass takes under :data:`PROBE_SECONDS`, up to the recipe's batch; the last
    two give the fit."""
    key = (spec.arch, info.name, str(device), batch_size)
    if key in _MEASURED:
        return _MEASURED[key]
    model = build_for(spec, info).to(device).train()
    generator = seeded_generator(0, device)  # leaves the global RNG alone

    def timed(images: int) -> float:
        shape = (images, info.channels, info.image_size, info.image_size)
        x = torch.rand(shape, device=device, generator=generator)
        y = torch.randint(info.num_classes, (images,), device=device, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    if device.type == "cuda":
        timed(batch_size)  # warm-up: allocations, cuDNN's algorithm search
        seconds = min(timed(batch_size) for _ in range(3))
        cost = PassCost(0.0, seconds / batch_size)
    else:
        points = [(n, timed(n)) for n in sorted({1, min(4, batch_size)})]
        while points[-1][0] < batch_size and points[-1][1] < PROBE_SECONDS:
            n = min(2 * points[-1][0], batch_size)
            points.append((n, timed(n)))
        if len(points) == 1:
            cost = PassCost(0.0, points[0][1] / points[0][0])
        else:
            (n1, t1), (n2, t2) = points[-2:]
            per_image = max((t2 - t1) / (n2 - n1), 0.0)
            cost = PassCost(max(t2 - per_image * n2, 0.0), per_image)
    _MEASURED[key] = cost
    return cost


@dataclass(frozen=True)
class TrainingCost:
    """What training recipe ``name`` costs: ``images`` per epoch (None: unknown) in batches of
    ``batch_size``, ``epochs``, ``passes`` per training batch, the monitor's ``monitor`` (passes,
    images a pass) after each epoch, and the measured ``pass_cost`` on ``device`` (None: not
    measured), shared by ``devices`` data-parallel processes (counted as a perfect speed-up)."""

    name: str
    threat: str
    dataset: str
    images: int | None
    batch_size: int
    epochs: int
    passes: int
    adversary_steps: int
    monitor: tuple[int, int]
    device: str
    pass_cost: PassCost | None = None
    devices: int = 1

    @property
    def seconds(self) -> float | None:
        """Estimated wall-clock seconds of the whole training (None when not estimable)."""
        if self.pass_cost is None or self.images is None:
            return None
        batches = self.images // self.batch_size
        train = batches * self.passes * self.pass_cost.seconds(self.batch_size)
        monitor = self.monitor[0] * self.pass_cost.seconds(self.monitor[1])
        return self.epochs * (train + monitor) / self.devices

    def what(self) -> str:
        """What will train, e.g. ``resnet18_at (linf 0.03137 x10) on cifar10: 49,024 images x
        200 epochs, 1 + 10 adversary passes a batch``."""
        images = "? images" if self.images is None else f"{self.images:,} images"
        own = self.passes - self.adversary_steps
        passes = f"{own} + {self.adversary_steps} adversary" if self.adversary_steps else "1"
        return (
            f"{self.name} ({self.threat}) on {self.dataset}: {images} x {self.epochs} "
            f"epoch{'s' if self.epochs != 1 else ''}, "
            f"{passes} pass{'es' if self.passes > 1 else ''} a batch"
        )

    def cost(self) -> str:
        """The estimate, e.g. ``about 3.2 days on cpu (a pass of the batch of 128: 9.1 s)``."""
        if self.seconds is None or self.pass_cost is None:
            why = "the training split's size is unknown" if self.images is None else "not measured"
            return f"cost unknown ({why})"
        devices = f" x{self.devices}" if self.devices > 1 else ""
        batch = self.pass_cost.seconds(self.batch_size)
        return (
            f"about {format_duration(self.seconds)} on {self.device}{devices} (a pass of the "
            f"batch of {self.batch_size}: {batch:.3g} s, measured here now)"
        )


def estimate(
    spec: ModelRecipe,
    dataset: DatasetSpec,
    device: torch.device,
    *,
    monitor_examples: int,
    monitor_batch_size: int,
    monitor_steps: int,
    devices: int = 1,
    measure: bool = True,
    images: int | None = None,
) -> TrainingCost:
    """The :class:`TrainingCost` of training ``spec`` on ``dataset`` (its training dataset) on
    ``device`` with ``devices`` data-parallel processes; ``measure`` times passes
    (:func:`measure_pass`). ``images``: the images an epoch trains on, when known from the
    loader (default: :func:`training_images`, from the split's published size)."""
    info = dataset_info(dataset.name)
    batch = spec.train.batch_size
    return TrainingCost(
        name=spec.name,
        threat=describe_adversary(spec),
        dataset=dataset.name,
        images=training_images(spec, dataset) if images is None else images,
        batch_size=batch,
        epochs=spec.train.epochs,
        passes=passes_per_image(spec),
        adversary_steps=spec.adversary.steps if spec.adversary is not None else 0,
        monitor=monitor_batches(spec, monitor_examples, monitor_batch_size, monitor_steps),
        device=str(device),
        pass_cost=measure_pass(spec, info, device, batch) if measure else None,
        devices=devices,
    )


# --- the plan of a run or sweep ------------------------------------------------------------


@dataclass
class PlannedModel:
    """One model a job needs: ``role`` (``model``, ``ref``, ``analysis.models[2]``), its store
    ``key``, and ``status``: ``reuse`` (in the store), ``train`` or ``trained by job N``."""

    job: int
    role: str
    key: str
    status: str
    cost: TrainingCost


@dataclass
class Plan:
    """The models every job of a run or sweep needs, in order, each trained at most once."""

    jobs: list[list[str]] = field(default_factory=list)
    models: list[PlannedModel] = field(default_factory=list)

    @property
    def to_train(self) -> list[PlannedModel]:
        return [m for m in self.models if m.status == "train"]

    def total_seconds(self) -> float | None:
        """Estimated seconds of all the training (None when some cost is unknown)."""
        costs = [m.cost.seconds for m in self.to_train]
        return None if any(c is None for c in costs) else float(sum(costs))  # type: ignore[arg-type]

    def render(self) -> str:
        """The plan as a person reads it (fits 120 columns per line, one line per model)."""
        lines = []
        width = max((len(m.role) for m in self.models), default=0)
        for index, job in enumerate(self.jobs):
            head = f"job {index}" if len(self.jobs) > 1 else "run"
            lines.append(f"{head}: {' '.join(job) or '(defaults)'}")
            for m in (m for m in self.models if m.job == index):
                lines.append(f"  {m.status:<16}  {m.role:<{width}}  {m.cost.what()}")
                indent = " " * (22 + width)
                if m.status == "train":
                    lines.append(f"{indent}{m.cost.cost()}")
                elif m.status == "reuse":
                    lines.append(f"{indent}store entry {m.key}")
            if not any(m.job == index for m in self.models):
                lines.append("  trains no model")
        total = self.total_seconds()
        count = len(self.to_train)
        reused = sum(m.status != "train" for m in self.models)
        summary = f"to train: {count} model{'s' * (count != 1)}, reused: {reused}"
        if count:
            summary += (
                f"; about {format_duration(total)} in all"
                if total is not None
                else "; total cost unknown"
            )
        lines.append(summary + " (--plan: nothing was run or written)")
        return "\n".join(lines)


def job_recipes(cfg: Any) -> list[tuple[str, ModelRecipe]]:
    """(role, recipe) of every model a run config asks for: ``model`` (unless an
    ``analysis.models`` set replaces it), ``ref``, and each entry of ``analysis.models``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from reprlab.run.config import recipe_named

    models = OmegaConf.select(cfg, "analysis.models", default=None)
    found: list[tuple[str, ModelRecipe]] = []
    if models is None and cfg.get("model") is not None:
        found.append(("model", recipe(cfg.model, "model")))
    if cfg.get("ref") is not None:
        found.append(("ref", recipe(cfg.ref, "ref")))
    if isinstance(models, ListConfig):
        for index, entry in enumerate(models):
            where = f"analysis.models[{index}]"
            if isinstance(entry, DictConfig):
                changes = OmegaConf.to_container(entry, resolve=True)
                name = str(changes.pop("recipe"))  # type: ignore[union-attr]
                found.append((where, recipe_named(name, changes, where)))  # type: ignore[arg-type]
            else:
                found.append((where, recipe_named(str(entry), None, where)))
    return found


def plan_jobs(composed: Sequence[tuple[Sequence[str], Any]], *, measure: bool = True) -> Plan:
    """The :class:`Plan` of validated jobs ``composed`` ((overrides, config) each): every model
    each job needs, looked up in the job's store (read only), each missing one planned to train
    once (by the first job needing it) with its estimated cost."""
    from reprlab.io.store import ArtifactStore, store_key
    from reprlab.runtime import resolve_device

    plan = Plan()
    first_job: dict[str, int] = {}
    for index, (overrides, cfg) in enumerate(composed):
        plan.jobs.append(list(overrides))
        run_dataset = dataset_spec(cfg.dataset)
        store = ArtifactStore(str(cfg.paths.store))
        device = resolve_device(str(cfg.device))
        for role, spec in job_recipes(cfg):
            dataset = recipe_dataset(spec, run_dataset)
            key = store_key(model_identity(spec, dataset))
            if key in first_job:
                status = f"trained by job {first_job[key]}"
            elif store.get(key) is not None:
                status = "reuse"
            else:
                status = "train"
                first_job[key] = index
            cost = estimate(
                spec,
                dataset,
                device,
                monitor_examples=int(cfg.monitor.examples or WHOLE_TEST_SPLIT),
                monitor_batch_size=int(cfg.monitor.batch_size),
                monitor_steps=int(cfg.monitor.attack_steps),
                devices=int(cfg.trainer.devices),
                measure=measure and status == "train",
            )
            plan.models.append(PlannedModel(index, role, key, status, cost))
    return plan
