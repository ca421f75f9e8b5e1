"""reprlab's public Python API: the functions a notebook calls, and the CLI's runners call too.

Models are :class:`~reprlab.models.Classifier` objects on pixels in [0, 1]: a stored recipe
(:func:`load_model`), a freshly trained one (:func:`train`), or any ``nn.Module`` made into one
(:func:`wrap`). ``data`` is, everywhere, a tensor of images [n, c, h, w] in [0, 1], a
``(images, labels)`` pair, a ``Dataset`` of ``(image, label)`` items, a ``DataLoader``, or any
iterable of such batches. Results are pandas DataFrames (settings and sample size in
``frame.attrs``); the figures are one call away in :mod:`reprlab.io.plots`.

Example, the CKA matrix of two stored recipes on MNIST's seeded test sample::

    import reprlab
    x, _ = reprlab.images("mnist", examples=1000)
    a, b = reprlab.load_model("cnn_small"), reprlab.load_model("cnn_small_at")
    matrix = reprlab.cka(a, b, x)          # rows: a's block taps, columns: b's

Nothing here trains unless asked (``load_model(..., train=True)`` or :func:`train`), and nothing
here reaches the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reprlab.core.attacks import PGD, Attack, robust_accuracy
from reprlab.errors import ReprlabError
from reprlab.methods.layerwise import JointCKA, Member, joint_layer_cka
from reprlab.models import Classifier, select_taps
from reprlab.models.base import TapSpec

# The same names as reprlab/__init__.py's lazy attributes (tests/cli/test_api.py checks it).
__all__ = [
    "RunRecord",
    "batches_of",
    "cka",
    "evaluate",
    "fit_critic",
    "images",
    "invert",
    "joint_cka",
    "list_models",
    "load_model",
    "open_run",
    "stir",
    "stitch",
    "train",
    "vulnerability",
    "wrap",
]

Data = Any
"""A tensor of images, an (images, labels) pair, a Dataset, a DataLoader or an iterable of
batches; see :func:`batches_of`."""


# --- data ---------------------------------------------------------------------------------------


def batches_of(
    data: Data, batch_size: int = 256, *, labels: bool = False, device: Any = None
) -> Iterator[Any]:
    """The batches of ``data``: image tensors [b, c, h, w] (``labels=True``: ``(x, y)`` pairs).

    ``data`` may be a tensor of images in [0, 1] (split into batches of ``batch_size`` in
    order), an ``(images, labels)`` pair of tensors, a ``Dataset`` of ``(image, label)`` items,
    a ``DataLoader``, or any iterable of image tensors or ``(x, y)`` batches (used as they are).
    Labels are required when ``labels=True``.
    """
    if isinstance(data, torch.Tensor) or _is_pair(data):
        x, y = (data, None) if isinstance(data, torch.Tensor) else data
        if x.dim() != 4:
            raise ReprlabError(
                f"images must be a tensor [n, c, h, w] in [0, 1], got shape {tuple(x.shape)}"
            )
        if labels and y is None:
            raise ReprlabError("this needs labels: pass (images, labels) or a labelled Dataset")
        for start in range(0, x.shape[0], batch_size):
            xb = _to(x[start : start + batch_size], device)
            yield (xb, _to(y[start : start + batch_size], device)) if labels else xb
        return
    if (isinstance(data, Dataset) and not isinstance(data, Iterable)) or isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        if isinstance(batch, torch.Tensor):
            if labels:
                raise ReprlabError("this needs labels: the data yields images without labels")
            yield _to(batch, device)
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            if labels:
                if len(batch) < 2:
                    raise ReprlabError("this needs labels: the data's batches have none")
                yield _to(batch[0], device), _to(batch[1], device)
            else:
                yield _to(batch[0], device)
        else:
            raise ReprlabError(
                f"cannot read a batch of type {type(batch).__name__}; give image tensors or "
                "(images, labels) batches"
            )


def _is_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].dim() == 4
    )


def _to(t: torch.Tensor, device: Any) -> torch.Tensor:
    return t if device is None else t.to(device)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def images(
    dataset: str,
    *,
    split: str = "test",
    examples: int | None = 1000,
    seed: int = 0,
    root: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [n, c, h, w] in [0, 1], y [n])``: the seeded sample of ``examples`` images of
    ``split`` that a CLI run with ``seed=<seed> analysis.examples=<examples>`` uses (None: all).

    ``root`` defaults to the data root (``$REPRLAB_DATA``, else ``outputs/data``); a dataset
    that is not on disk is a one-line error naming ``reprlab download <name>``.
    """
    from reprlab.data import default_data_root, make_loader
    from reprlab.data.registry import check_available

    where = Path(root) if root is not None else default_data_root()
    check_available(dataset, where, split=split)
    loader = make_loader(
        dataset, str(where), split, batch_size=1 << 30, train=False, seed=seed, limit=examples
    )
    x, y = zip(*loader.epoch(0), strict=True)
    return torch.cat(x), torch.cat(y)


# --- models -------------------------------------------------------------------------------------


def _compose(overrides: Sequence[str]) -> Any:
    from reprlab.run.groups import compose

    return compose(overrides)


def _model_overrides(
    recipe: str, dataset: str | None, store: str | Path | None, overrides: Sequence[str]
) -> list[str]:
    args = [f"model={recipe}"]
    if dataset is not None:
        args.append(f"dataset={dataset}")
    if store is not None:
        args.append(f"paths.store={store}")
    return [*args, *overrides]


def load_model(
    recipe: str,
    dataset: str | None = None,
    *,
    train: bool = False,
    store: str | Path | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> Classifier:
    """The trained model of ``recipe`` (a file of ``conf/model/``) from the store, eval mode.

    ``dataset`` as ``dataset=`` on the command line; ``store`` defaults to the CLI's
    (``$REPRLAB_STORE``, else ``outputs/store``); ``overrides`` are further command-line
    overrides (``"model.seed=1"``). The entry is verified before use, exactly as a run does.
    A recipe not in the store raises a one-line :class:`ReprlabError` unless ``train=True``,
    which trains it (recorded in a run directory under ``<paths.outputs>/runs/api``) and stores it.
    """
    from reprlab.io.store import ArtifactStore, store_key
    from reprlab.run.config import dataset_spec, recipe_dataset
    from reprlab.run.config import recipe as recipe_of
    from reprlab.run.recipes import model_identity

    cfg = _compose(_model_overrides(recipe, dataset, store, overrides))
    spec = recipe_of(cfg.model, "model")
    data = recipe_dataset(spec, dataset_spec(cfg.dataset))
    key = store_key(model_identity(spec, data))
    if not train and ArtifactStore(cfg.paths.store).get(key) is None:
        raise ReprlabError(
            f"{spec.name} ({data.name}) is not in the store {cfg.paths.store}; train it with "
            f"load_model(..., train=True) or `reprlab run analysis=train model={recipe}`"
        )
    with _context(cfg, device, record=train) as ctx:
        return ctx.model("model").model


def train(
    recipe: str,
    dataset: str | None = None,
    *,
    store: str | Path | None = None,
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> Classifier:
    """Train ``recipe`` (or find it in the store) and return it: ``load_model(..., train=True)``."""
    return load_model(recipe, dataset, train=True, store=store, device=device, overrides=overrides)


class _Detached:
    """A run record that keeps what a run would write to run.json in memory."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self.path = Path("<api>")

    def update(self, **fields: Any) -> None:
        for key, value in fields.items():
            if isinstance(value, Mapping) and isinstance(self.record.get(key), dict):
                self.record[key].update(value)
            else:
                self.record[key] = value


class _context:
    """A :class:`~reprlab.run.context.RunContext` for API calls: detached from any run
    directory, or (``record=True``, when a model may train) a run directory under
    ``<paths.outputs>/runs/api``."""

    def __init__(self, cfg: Any, device: str, *, record: bool) -> None:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.device = device
            cfg.progress = False
        self.cfg, self.record, self.run = cfg, record, None

    def __enter__(self) -> Any:
        from reprlab.io.runs import RUN_ID, RunDirectory
        from reprlab.run.context import RunContext

        if not self.record:
            return RunContext(self.cfg, _Detached())  # type: ignore[arg-type]
        self.run = RunDirectory(Path(self.cfg.paths.outputs) / "runs" / "api" / RUN_ID)
        ctx = RunContext(self.cfg, self.run)
        self.run.start(analysis="train", overrides=[], seed=ctx.seed, device=str(ctx.device))
        return ctx

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.run is not None and self.run.record:
            if error is None:
                self.run.finish("completed", {})
            else:
                self.run.finish("failed", error=str(error))


def list_models(store: str | Path | None = None) -> pd.DataFrame:
    """The store's complete entries: key, kind, name, dataset, adversary, created, size (bytes)."""
    from reprlab.io.store import ArtifactStore

    root = Path(store) if store is not None else Path(_compose([]).paths.store)
    rows = []
    for key, meta, state in ArtifactStore(root).entries():
        if meta is None or state != "complete":
            continue
        recipe = meta.get("recipe") or {}
        adversary = recipe.get("adversary")
        rows.append(
            {
                "key": key,
                "kind": meta.get("kind"),
                "name": recipe.get("name") or meta.get("name"),
                "dataset": meta.get("dataset"),
                "adversary": (
                    f"{adversary['norm']} {adversary['eps']:.4g}" if adversary else "standard"
                )
                if meta.get("kind") == "model"
                else None,
                "size": sum(p.stat().st_size for p in (root / key).rglob("*") if p.is_file()),
            }
        )
    return pd.DataFrame(rows, columns=["key", "kind", "name", "dataset", "adversary", "size"])


def wrap(module: nn.Module, *args: Any, **kwargs: Any) -> Classifier:
    """Any ``nn.Module`` as the :class:`~reprlab.models.Classifier` the studies take; see
    :func:`reprlab.models.wrap.wrap`."""
    from reprlab.models.wrap import wrap as wrap_module

    return wrap_module(module, *args, **kwargs)


# --- robustness -----------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    data: Data,
    *,
    eps: float | Sequence[float] = (),
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    attack: Attack | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """Clean and robust accuracy of ``model`` on labelled ``data``: one row per radius.

    Each ``eps`` (pixel units, ``norm`` ``"linf"`` or ``"l2"``) is attacked with PGD-``steps``
    (step 2.5·ε/steps unless given, random start; Madry et al. 2018), or give a ready
    ``attack`` (e.g. :class:`~reprlab.core.autoattack.AutoAttack`). Columns: eps, attack,
    clean_acc, robust_acc (fractions).
    """
    device = _device_of(model)
    batches = list(batches_of(data, batch_size, labels=True, device=device))
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = robust_accuracy(model, batches, None, progress=False)
    attacks: list[tuple[float, Attack]] = []
    if attack is not None:
        attacks.append((float(getattr(attack, "eps", math.nan)), attack))
    for radius in [eps] if isinstance(eps, (int, float)) else eps:
        size = 2.5 * radius / steps if step_size is None else step_size
        attacks.append((float(radius), PGD(norm=norm, eps=radius, step_size=size, steps=steps)))
    rows = [{"eps": 0.0, "attack": "clean", "clean_acc": clean, "robust_acc": clean}]
    for radius, chosen in attacks:
        generator.manual_seed(seed)
        robust = robust_accuracy(model, batches, chosen, generator=generator, progress=False)
        rows.append(
            {
                "eps": radius,
                "attack": _attack_name(chosen),
                "clean_acc": clean,
                "robust_acc": robust,
            }
        )
    return pd.DataFrame(rows)


def _attack_name(attack: Attack) -> str:
    describe = getattr(attack, "describe", None)
    return describe() if callable(describe) else type(attack).__name__


# --- CKA ----------------------------------------------------------------------------------------


def joint_cka(
    members: Sequence[Member],
    data: Data,
    *,
    estimator: str = "unbiased",
    kernel: str = "linear",
    rbf_threshold: float = 1.0,
    features: str = "flatten",
    batch_size: int = 256,
    groups: Sequence[Sequence[str]] | None = None,
    progress: bool = False,
    batches: int | None = None,
) -> JointCKA:
    """Layer CKA between every pair of taps of several models over the same inputs, in one
    pass over ``data`` (Kornblith et al. 2019; minibatch estimator of Nguyen et al. 2021).

    ``members`` name each model and its taps; ``data`` batches may be tuples with one batch per
    member (e.g. adversarial inputs crafted against each). ``estimator`` ``"unbiased"`` (the
    default everywhere in reprlab) or ``"biased"``; ``features`` ``"flatten"`` or ``"pool"``
    (spatial mean). ``groups`` restricts the pairs computed to within each group of labels.
    ``batches``: how many batches an iterable ``data`` yields, for the progress bar's total and
    time left (known without it for tensors, datasets and loaders).
    """
    if estimator not in ("unbiased", "biased"):
        raise ReprlabError(f"estimator={estimator!r} is invalid; use unbiased or biased")
    if features not in ("flatten", "pool"):
        raise ReprlabError(f"features={features!r} is invalid; use flatten or pool")
    device = _device_of(members[0].model)
    if isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, Dataset, DataLoader)):
        stream = data if not _is_pair(data) else batches_of(data, batch_size, device=device)
    else:
        stream = batches_of(data, batch_size, device=device)
    return joint_layer_cka(
        members,
        stream,
        kernel=kernel,
        unbiased=estimator == "unbiased",
        rbf_threshold=float(rbf_threshold),
        pool=features == "pool",
        groups=groups,
        progress=progress,
        total=batches,
    )


def cka(
    a: Classifier,
    b: Classifier | None = None,
    data: Data = None,
    *,
    taps: TapSpec = "blocks",
    taps_b: TapSpec | None = None,
    estimator: str = "unbiased",
    kernel: str = "linear",
    rbf_threshold: float = 1.0,
    features: str = "flatten",
    batch_size: int = 256,
) -> pd.DataFrame:
    """The layer×layer CKA matrix of ``a`` with itself, or of ``a``'s taps (rows) against
    ``b``'s (columns), on the images ``data`` (Cianfarani et al. 2022, Fig. 1).

    ``taps``: ``"blocks"`` (default), ``"all"`` (every layer) or a list of tap names (see
    ``reprlab taps``); ``taps_b`` defaults to ``taps``. The estimator defaults to the unbiased
    minibatch one (Nguyen et al. 2021), as on the command line. ``frame.attrs`` holds
    ``examples``, ``batches`` and ``estimator``.
    """
    if data is None:
        raise ReprlabError("cka needs data: images [n, c, h, w] in [0, 1], a Dataset or loader")
    label_a, label_b = "a", "b"
    members = [Member(label_a, a, tuple(select_taps(a, taps)))]
    if b is not None:
        members.append(
            Member(label_b, b, tuple(select_taps(b, taps if taps_b is None else taps_b)))
        )
    result = joint_cka(
        members,
        data,
        estimator=estimator,
        kernel=kernel,
        rbf_threshold=rbf_threshold,
        features=features,
        batch_size=batch_size,
    )
    block = result.block(label_a, label_a if b is None else label_b)
    frame = pd.DataFrame(
        block.matrix.numpy(), index=list(block.row_taps), columns=list(block.col_taps)
    )
    frame.attrs.update(
        examples=result.n_examples, batches=result.n_batches, estimator=result.estimator
    )
    return frame


# --- STIR and inversion -------------------------------------------------------------------------


def stir(
    m1: Classifier,
    m2: Classifier,
    data: Data,
    *,
    tap: str | None = None,
    tap_m2: str | None = None,
    steps: int = 1000,
    step_size: float = 0.5,
    seed_kind: str = "normal",
    seed: int = 0,
    batch_size: int = 100,
) -> pd.DataFrame:
    """STIR both ways and CKA of two models on images ``data`` (Nanda et al., ICML 2022).

    ``STIR(m2 | m1)``: find inputs X′ that ``m1`` represents like X at ``tap`` (default: its
    representation tap) from seeds of kind ``seed_kind`` (default N(0, 1) per pixel), with
    ``steps`` L2-normalised steps of ``step_size``; then linear CKA of ``m2`` on X and X′.
    Returns rows ``STIR(m2|m1)``, ``STIR(m1|m2)`` and ``CKA(m1,m2)`` with their values.
    """
    from reprlab.core.representation import Representation
    from reprlab.methods.stir import find_iris, seed_images
    from reprlab.methods.stir import stir as stir_of

    device = _device_of(m1)
    x = torch.cat(list(batches_of(data, 1 << 30, device=device)))
    tap1 = m1.representation_tap if tap is None else tap
    tap2 = m2.representation_tap if tap_m2 is None else tap_m2
    generator = torch.Generator().manual_seed(seed)
    seeds = seed_images(x, seed_kind, generator)
    rows = []
    for reference, other, ref_tap, other_tap, name in (
        (m1, m2, tap1, tap2, "STIR(m2|m1)"),
        (m2, m1, tap2, tap1, "STIR(m1|m2)"),
    ):
        iris = find_iris(
            reference, ref_tap, x, seeds, steps=steps, step_size=step_size, batch_size=batch_size
        )
        rows.append({"measure": name, "value": stir_of(other, other_tap, x, iris.x_prime)})
    from reprlab.methods.stir import linear_cka

    rows.append(
        {
            "measure": "CKA(m1,m2)",
            "value": linear_cka(
                Representation(m1, tap1).encode_all(x), Representation(m2, tap2).encode_all(x)
            ),
        }
    )
    frame = pd.DataFrame(rows)
    frame.attrs.update(examples=int(x.shape[0]), steps=steps, seed_kind=seed_kind)
    return frame


def invert(
    model: Classifier,
    targets: Data,
    *,
    tap: str | None = None,
    steps: int = 1000,
    step_size: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert ``model``'s representation of the images ``targets`` (Engstrom et al. 2019).

    From N(0.5, 1/20²) noise seeds, minimise ‖R(x) − R(x_t)‖₂ / ‖R(x_t)‖₂ at ``tap`` (default:
    the representation tap) with ``steps`` L2-normalised steps of ``step_size`` in the image box.
    Returns ``(images [n, c, h, w], relative distances [n])``.
    """
    from reprlab.core.representation import Representation
    from reprlab.methods.inversion import invert as invert_with
    from reprlab.methods.inversion import noise_seeds

    device = _device_of(model)
    x = torch.cat(list(batches_of(targets, 1 << 30, device=device)))
    generator = torch.Generator().manual_seed(seed)
    seeds = noise_seeds(x.shape, generator=generator, device=device)
    represent = Representation(model, model.representation_tap if tap is None else tap)
    was_training = model.training
    model.eval()
    try:
        result = invert_with(represent, x, seeds, steps=steps, step_size=step_size)
    finally:
        model.train(was_training)
    return result.x.detach(), result.value.detach()


def stitch(
    front: Classifier,
    end: Classifier,
    train_data: Data,
    test_data: Data,
    *,
    taps: Sequence[str] | Sequence[tuple[str, str]] | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    init: str = "least_squares",
    eps: float | None = None,
    norm: str = "linf",
    attack_steps: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Model stitching (Balogh & Jelasity, ICML 2023): ``front`` up to a tap, a trained 1×1
    conv (affine, with bias), then ``end`` after the matching tap; donors frozen.

    ``taps``: block tap names both models have (stitched at the same name) or
    ``(front_tap, end_tap)`` pairs; default: every block tap both have (not the logits) whose
    activation shapes admit a 1×1 conv. Stitches start from the least-squares fit (direct
    matching, Csiszárik et al. 2021; ``init="random"`` for PyTorch's default) and train with Adam
    (``lr``, ``weight_decay``) for ``epochs`` on labelled ``train_data``. One row per point:
    clean accuracy of the stitched model on labelled ``test_data``, relative to the end model's,
    and with ``eps`` (pixel units, ``norm``), robust accuracy under PGD-``attack_steps``.
    """
    from reprlab.core.fit import FitSettings
    from reprlab.data.loaders import TensorLoader
    from reprlab.methods.stitching import (
        StitchedModel,
        StitchPoint,
        incompatibility,
        least_squares,
        make_stitch,
        point_seed,
        train_stitches,
    )

    device = _device_of(end)
    pairs = _stitch_pairs(front, end, taps)
    points = [StitchPoint(f"{a}->{b}", a, b) for a, b in pairs]
    for point in points:
        problem = incompatibility(front.tap_shape(point.front_tap), end.tap_shape(point.end_tap))
        if problem is not None:
            raise ReprlabError(f"cannot stitch {point.name}: {problem}")
    x_train, y_train = _labelled(train_data, device)
    loader = TensorLoader(
        x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed, device=device,
        drop_last=True,
    )  # fmt: skip
    solutions = (
        least_squares(front, end, points, loader.epoch(0)) if init == "least_squares" else {}
    )
    stitches = {
        p.name: make_stitch(
            front.tap_shape(p.front_tap),
            end.tap_shape(p.end_tap),
            init=init,
            seed=point_seed(seed, p.name),
            solution=solutions.get(p.name),
        ).to(device)
        for p in points
    }
    settings = FitSettings(
        epochs=epochs, optimizer="adam", lr=lr, momentum=0.9, weight_decay=weight_decay,
        schedule="constant", seed=seed,
    )  # fmt: skip
    trained = train_stitches(
        front, end, points, stitches, loader, settings, device=device, frozen_bn="eval",
        progress=False,
    )  # fmt: skip
    del trained
    test = list(batches_of(test_data, 256, labels=True, device=device))
    end_clean = robust_accuracy(end, test, None, progress=False)
    attack = None
    if eps is not None:
        attack = PGD(norm=norm, eps=eps, step_size=2.5 * eps / attack_steps, steps=attack_steps)
    rows = []
    for p in points:
        model = StitchedModel(front, stitches[p.name], end, p.front_tap, p.end_tap)
        clean = robust_accuracy(model, test, None, progress=False)
        row = {
            "front_tap": p.front_tap,
            "end_tap": p.end_tap,
            "clean_acc": clean,
            "relative_acc": clean / end_clean if end_clean > 0 else math.nan,
        }
        if attack is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
            row["robust_acc"] = robust_accuracy(
                model, test, attack, generator=generator, progress=False
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(end_clean_acc=end_clean, epochs=epochs, init=init)
    return frame


def _stitch_pairs(
    front: Classifier, end: Classifier, taps: Sequence[Any] | None
) -> list[tuple[str, str]]:
    if taps is None:
        shared = [t for t in front.block_taps if t in set(end.block_taps) and t != "logits"]
        pairs = [(t, t) for t in shared]
        if not pairs:
            raise ReprlabError(
                "the two models share no block tap name; give taps=[(front_tap, end_tap), ...]"
            )
        return pairs
    pairs = [(t, t) if isinstance(t, str) else (str(t[0]), str(t[1])) for t in taps]
    for a, b in pairs:
        if a not in front.block_taps or b not in end.block_taps:
            raise ReprlabError(
                f"cannot stitch at {a}->{b}: stitching cuts at block taps (front: "
                f"{', '.join(front.block_taps)}; end: {', '.join(end.block_taps)})"
            )
    return pairs


def _labelled(data: Data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = list(batches_of(data, 1 << 30, labels=True))
    return torch.cat([x for x, _ in pairs]).to(device), torch.cat([y for _, y in pairs]).to(device)


# --- representation vulnerability -----------------------------------------------------------


def fit_critic(
    model: Classifier,
    tap: str,
    train_batches: Any,
    heldout: Sequence[Any],
    *,
    search: Any = None,
    estimator: str = "dv",
    epochs: int = 5,
    lr: float = 1e-4,
    units: int = 512,
    channels: Sequence[int] = (64, 128),
    scope: str = "global",
    seed: int = 0,
    progress: bool = False,
    what: str | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a Deep-InfoMax critic of I(X; g(X)) for ``model``'s representation at ``tap``
    (frozen, eval mode); return it and its per-epoch history (``train_mi``, and ``heldout_mi``:
    the held-out estimate after each epoch, nats; the estimate is the last).

    Zhu, Zhang & Evans (ICML 2020): ``estimator`` ``"dv"`` (Donsker–Varadhan, theirs),
    ``"jsd"`` or ``"infonce"``; Adam ``lr`` (theirs: 1e-4), no schedule. ``search``
    (a :class:`reprlab.methods.mi.WorstCase`) makes it the worst-case MI over inputs in its
    ball, searched before each step and again for the held-out estimate. ``scope="global"``:
    the whole-image critic (estimates I(X; Z), the quantity Fano's bound takes); ``"local"``:
    the authors' per-location critic (a patch's MI). ``train_batches`` is an epoch loader
    (``epoch(i)``) of (x, y); ``heldout`` a list of (x, y) batches. The estimate is the last.
    ``what`` names the critic in the log (default: ``critic at <tap>``).
    """
    from reprlab.core.fit import FitSettings
    from reprlab.core.representation import Representation
    from reprlab.methods import mi

    device = _device_of(model)
    torch.manual_seed(seed)
    represent = Representation(model, tap)
    critic = mi.DIMCritic(
        model.input_shape, represent.dim, units=units, channels=channels, scope=scope
    ).to(device)
    history = mi.fit_mi(
        critic,
        train_batches,
        FitSettings.adam(epochs, lr, seed=seed),
        encoder=model,
        encode=represent,
        estimator=estimator,
        search=search,
        heldout=heldout,
        device=device,
        progress=progress,
        what=what or f"critic at {tap}",
    )
    return critic, history


def vulnerability(
    model: Classifier,
    train_data: Data,
    heldout_data: Data,
    *,
    tap: str = "logits",
    eps: float = 0.3,
    norm: str = "linf",
    search_steps: int = 7,
    search_step_size: float = 0.01,
    estimator: str = "dv",
    critic_epochs: int = 5,
    scope: str = "global",
    batch_size: int = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """Representation vulnerability at ``tap`` (Zhu, Zhang & Evans, ICML 2020), in nats: the
    normal-case MI I(X; g(X)), the worst-case MI over inputs within ``eps`` (``norm``, pixel
    units; PGD of ``search_steps`` steps on the MI bound, the encoder frozen), RV = I − I_ε, and
    Fano's bound on any classifier's adversarial accuracy on g from I_ε (``bound``).

    Each MI is the held-out bound of a critic trained by :func:`fit_critic` on labelled
    ``train_data``; ``heldout_data`` gives the estimate. One row.
    """
    from reprlab.data.loaders import TensorLoader
    from reprlab.methods import mi

    device = _device_of(model)
    x, y = _labelled(train_data, device)
    train_batches = TensorLoader(
        x, y, batch_size=batch_size, shuffle=True, seed=seed, device=device, drop_last=True
    )
    heldout = list(batches_of(heldout_data, batch_size, labels=True, device=device))
    search = mi.WorstCase(eps=eps, step_size=search_step_size, steps=search_steps, norm=norm)
    estimates = {}
    for name, case in (("mi", None), ("worst_mi", search)):
        _, history = fit_critic(
            model, tap, train_batches, heldout, search=case, estimator=estimator,
            epochs=critic_epochs, scope=scope, seed=seed,
        )  # fmt: skip
        estimates[name] = float(history[-1]["heldout_mi"])
    classes = int(torch.cat([yb for _, yb in heldout]).max()) + 1
    frame = pd.DataFrame(
        [
            {
                "tap": tap,
                "mi": estimates["mi"],
                "worst_mi": estimates["worst_mi"],
                "rv": estimates["mi"] - estimates["worst_mi"],
                "bound": mi.fano_bound(estimates["worst_mi"], max(classes, 2)),
            }
        ]
    )
    frame.attrs.update(eps=eps, norm=norm, estimator=estimator, examples=int(x.shape[0]))
    return frame


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """A finished run directory: ``record`` (run.json), ``config`` (the composed config as a
    dict), ``tables`` (every CSV as a DataFrame, by file stem) and ``figures`` (PNG paths)."""

    path: Path
    record: dict[str, Any]
    config: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path]

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.record.get("summary") or {})


def open_run(path: str | Path) -> RunRecord:
    """Read a run directory written by ``reprlab run`` (or a sweep job's)."""
    import json

    import yaml

    root = Path(path)
    record_path = root / "run.json"
    if not record_path.is_file():
        raise ReprlabError(f"{root} holds no run.json; give a run directory")
    record = json.loads(record_path.read_text())
    config_path = root / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    tables = {p.stem: pd.read_csv(p) for p in sorted(root.glob("*.csv"))}
    figures = {p.stem: p for p in sorted(root.glob("*.png"))}
    return RunRecord(root, record, config or {}, tables, figures)
