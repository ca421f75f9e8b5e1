"""Importing external checkpoints into the model store as a recipe's weights.

Two formats: a plain ``state_dict`` (ours, a bare network's, or DataParallel's ``module.``-prefixed
one; optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``) and the ``robustness``
library's (Engstrom et al.): ``{"model": {"module.model.*", "module.attacker.model.*",
"module.normalizer.new_mean/new_std"}, "epoch", "nat_prec1", "adv_prec1", ...}``. Files are read
with ``weights_only=True``; a checkpoint keeps its own normaliser when it carries one. An import
never silently replaces a stored model, and it is checked on test images before it is stored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from reprlab.errors import ReprlabError
from reprlab.io.store import StoredArtifact, non_finite
from reprlab.run.config import DatasetSpec

FORMATS = ("auto", "state_dict", "robustness")
UNUSED_PREFIXES = ("net.sub_block1.",)


def _is_robustness(obj: Any) -> bool:
    state = obj.get("model") if isinstance(obj, Mapping) else None
    return isinstance(state, Mapping) and any(
        str(k).startswith(("module.model.", "model.", "module.normalizer.")) for k in state
    )


def _strip(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def convert_checkpoint(
    checkpoint: Any, template: Mapping[str, torch.Tensor], fmt: str = "auto"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert a loaded checkpoint into a state_dict with exactly ``template``'s keys and shapes.

    ``template`` is a reprlab Classifier's state_dict (``normalize.*`` + ``net.*``); a checkpoint
    without a normaliser keeps the template's (the dataset's) mean and std. Returns (state, the
    key remapping applied, as short notes for the user). Raises ReprlabError when the
    checkpoint does not fit the architecture or holds NaN/inf.
    """
    if fmt not in FORMATS:
        raise ReprlabError(f"unknown checkpoint format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not isinstance(checkpoint, Mapping):
        raise ReprlabError("the checkpoint is not a dict of tensors; is it a state_dict?")
    if fmt == "auto":
        fmt = "robustness" if _is_robustness(checkpoint) else "state_dict"
    notes: list[str] = []
    state: dict[str, Any] = {}
    if fmt == "robustness":
        source = checkpoint.get("model", checkpoint)
        prefix = "module." if any(str(k).startswith("module.") for k in source) else ""
        state = {f"net.{k}": v for k, v in _strip(f"{prefix}model.", source).items()}
        notes.append(f"robustness format: {prefix}model.* -> net.* ({len(state)} tensors)")
        normalizer = _strip(f"{prefix}normalizer.", source)
        if "new_mean" in normalizer and "new_std" in normalizer:
            state["normalize.mean"] = normalizer["new_mean"]
            state["normalize.std"] = normalizer["new_std"]
            notes.append(f"normaliser from {prefix}normalizer.new_mean/new_std")
        used = (f"{prefix}model.", f"{prefix}normalizer.")
        ignored = [str(k) for k in source if not str(k).startswith(used)]
        if ignored:
            notes.append(f"ignored {len(ignored)} other tensors ({_families(ignored)})")
    else:
        source = checkpoint
        for wrapper in ("state_dict", "model"):
            if isinstance(source.get(wrapper), Mapping):
                source = source[wrapper]
                notes.append(f"weights under '{wrapper}'")
        if source and all(str(k).startswith("module.") for k in source):
            source = _strip("module.", source)
            notes.append("module.* (DataParallel) -> *")
        if any(str(k).startswith(("net.", "normalize.")) for k in source):
            state = dict(source)
            notes.append("reprlab keys (net.*, normalize.*) as they are")
        else:
            state = {f"net.{k}": v for k, v in source.items()}
            notes.append("* -> net.*")
    # TRADES/Rice et al. WideResNets build a `sub_block1` they never use; reprlab's WRN omits it.
    unused = [k for k in state if k.startswith(UNUSED_PREFIXES)]
    if unused:
        notes.append(f"dropped {len(unused)} unused net.sub_block1.* tensors")
    state = {k: v for k, v in state.items() if k not in set(unused)}
    for name in ("normalize.mean", "normalize.std"):
        if name in state:
            state[name] = torch.as_tensor(state[name]).reshape(template[name].shape)
        elif name == "normalize.mean":
            notes.append("normaliser: the dataset's mean and std (the checkpoint has none)")
            state[name] = template[name]
        else:
            state[name] = template[name]
    missing = sorted(set(template) - set(state))
    unexpected = sorted(set(state) - set(template))
    if missing or unexpected:
        shown = ", ".join(
            [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        )
        raise ReprlabError(
            f"the checkpoint does not fit this architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys: {shown}); check model= and --format"
        )
    wrong = [k for k in template if tuple(state[k].shape) != tuple(template[k].shape)]
    if wrong:
        raise ReprlabError(
            f"the checkpoint's {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the "
            f"architecture expects {tuple(template[wrong[0]].shape)}; check model= and dataset="
        )
    converted = {k: torch.as_tensor(state[k]).to(template[k].dtype) for k in template}
    bad = non_finite(converted)
    if bad is not None:
        raise ReprlabError(
            f"the checkpoint holds non-finite values (NaN or inf) in {bad}; it cannot be used"
        )
    return converted, notes


def classifier_state(
    checkpoint: Any, template: Mapping[str, torch.Tensor], fmt: str = "auto"
) -> dict[str, torch.Tensor]:
    """:func:`convert_checkpoint` without the notes."""
    return convert_checkpoint(checkpoint, template, fmt)[0]


def _families(keys: list[str]) -> str:
    """``module.attacker.* (122), ...``: the first two key components, most common first."""
    counts = Counter(".".join(k.split(".")[:2]) + ".*" if "." in k else k for k in keys)
    shown = [f"{name} ({n})" for name, n in counts.most_common(3)]
    return ", ".join(shown) + (", ..." if len(counts) > 3 else "")


@dataclass
class Imported:
    """What ``reprlab cache import`` did: the entry, the key remapping, the accuracy check."""

    entry: StoredArtifact
    notes: list[str]
    clean_acc: float | None
    examples: int
    chance: float
    skipped: str | None = None

    @property
    def near_chance(self) -> bool:
        """Clean accuracy within 10 points of chance (1/classes): the weights most likely did
        not load as meant (a prefix or version mismatch)."""
        return self.clean_acc is not None and self.clean_acc < self.chance + 0.1 * (1 - self.chance)


def clean_accuracy(
    model: torch.nn.Module,
    dataset: DatasetSpec,
    *,
    examples: int,
    seed: int,
    device: torch.device,
    batch_size: int = 250,
) -> tuple[float, int]:
    """(clean accuracy, images used) of ``model`` on a fixed sample of ``examples`` test images
    drawn with ``seed`` (dataset order, unaugmented; all of them if there are fewer)."""
    from reprlab.core.attacks import robust_accuracy
    from reprlab.data import make_loader

    loader = make_loader(
        dataset.name,
        dataset.root,
        "test",
        batch_size=batch_size,
        train=False,
        seed=seed,
        device=device,
        limit=examples,
        num_workers=0,
    )
    batches = list(loader.epoch(0))
    used = sum(int(y.numel()) for _, y in batches)
    return robust_accuracy(model.to(device).eval(), batches, None, progress=False), used


def import_checkpoint(
    cfg: DictConfig,
    path: Path,
    fmt: str,
    store_root: str | Path,
    *,
    force: bool = False,
    examples: int = 1000,
    checkpoint: Any = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> Imported:
    """Store the checkpoint at ``path`` as the weights of ``cfg.model`` on ``cfg.dataset``.

    Refuses to replace a trained or imported entry unless ``force``. Before storing, measures
    the clean accuracy on ``examples`` test images drawn with ``cfg.seed`` (0: skip; skipped
    with a note when the dataset's files are not on disk). meta.json records the file's
    sha256 (``checkpoint_sha256``: the imported weights' identity), the key remapping and the
    accuracy. ``checkpoint``: the file's contents already loaded (and converted, e.g. by
    :mod:`reprlab.run.zoo`); ``extra_meta`` is added to meta.json.
    """
    from reprlab.data import dataset_info
    from reprlab.io.store import ArtifactStore, file_sha256, load_weights, store_key
    from reprlab.run.config import dataset_spec, recipe, recipe_dataset
    from reprlab.run.recipes import build_for, model_identity
    from reprlab.runtime import resolve_device

    spec = recipe(cfg.model)
    dataset = recipe_dataset(spec, dataset_spec(cfg.dataset))
    info = dataset_info(dataset.name)
    model = build_for(spec, info)
    if checkpoint is None:
        checkpoint = load_weights(path)
    state, notes = convert_checkpoint(checkpoint, model.state_dict(), fmt)
    model.load_state_dict(state)
    identity = model_identity(spec, dataset)
    key = store_key(identity)
    store = ArtifactStore(store_root)
    if not force:
        existing = store.describe_existing(key)
        if existing is not None:  # refuse before spending time on the evaluation
            raise ReprlabError(
                f"store entry {key} already holds {existing}; replacing it would lose it: pass "
                f"--force to replace it, or `reprlab cache rm {key}` first"
            )
    clean_acc, used, skipped = None, 0, None
    seed = int(cfg.seed)
    if examples > 0:
        try:
            clean_acc, used = clean_accuracy(
                model, dataset, examples=examples, seed=seed, device=resolve_device(str(cfg.device))
            )
        except ReprlabError as err:
            skipped = str(err)
    else:
        skipped = "--examples 0"
    reported = {
        k: float(checkpoint[k])
        for k in ("nat_prec1", "adv_prec1", "epoch")
        if isinstance(checkpoint, Mapping)
        and isinstance(checkpoint.get(k), (int, float, torch.Tensor))
    }
    meta = {
        "kind": "model",
        "recipe": asdict(spec),
        "dataset": dataset.name,
        "identity": identity,
        "key": key,
        "source": "imported",
        "checkpoint": str(path.resolve()),
        "checkpoint_sha256": file_sha256(path),
        "format": fmt,
        "key_remapping": notes,
        "reported": reported,
        "import_check": {
            "clean_acc": clean_acc,
            "examples": used,
            "seed": seed,
            "split": "test",
            "skipped": skipped,
        },
        "imported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra_meta or {}),
    }
    entry = store.put(key, state, meta, force=force)
    return Imported(
        entry=entry,
        notes=notes,
        clean_acc=clean_acc,
        examples=used,
        chance=1.0 / info.num_classes,
        skipped=skipped,
    )
