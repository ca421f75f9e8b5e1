"""Importing external checkpoints into the model store as a recipe's weights.

Two formats: a plain ``state_dict`` (ours, a bare network's, or DataParallel's ``module.``-prefixed
one; optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``) and the ``robustness``
library's (Engstrom et al.): ``{"model": {"module.model.*", "module.attacker.model.*",
"module.normalizer.new_mean/new_std"}, "epoch", "nat_prec1", "adv_prec1", ...}``. Files are read
with ``weights_only=True``; a checkpoint keeps its own normaliser when it carries one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from reprlab.errors import ReprlabError

FORMATS = ("auto", "state_dict", "robustness")
UNUSED_PREFIXES = ("net.sub_block1.",)


def _is_robustness(obj: Any) -> bool:
    state = obj.get("model") if isinstance(obj, Mapping) else None
    return isinstance(state, Mapping) and any(
        str(k).startswith(("module.model.", "model.", "module.normalizer.")) for k in state
    )


def _strip(prefix: str, state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def classifier_state(
    checkpoint: Any, template: Mapping[str, torch.Tensor], fmt: str = "auto"
) -> dict[str, torch.Tensor]:
    """Convert a loaded checkpoint into a state_dict with exactly ``template``'s keys and shapes.

    ``template`` is a reprlab Classifier's state_dict (``normalize.*`` + ``net.*``); a checkpoint
    without a normaliser keeps the template's (the dataset's) mean and std.
    Raises ReprlabError when the checkpoint does not fit the architecture.
    """
    if fmt not in FORMATS:
        raise ReprlabError(f"unknown checkpoint format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not isinstance(checkpoint, Mapping):
        raise ReprlabError("the checkpoint is not a dict of tensors; is it a state_dict?")
    if fmt == "auto":
        fmt = "robustness" if _is_robustness(checkpoint) else "state_dict"
    state: dict[str, Any] = {}
    if fmt == "robustness":
        source = checkpoint.get("model", checkpoint)
        prefix = "module." if any(str(k).startswith("module.") for k in source) else ""
        state = {f"net.{k}": v for k, v in _strip(f"{prefix}model.", source).items()}
        normalizer = _strip(f"{prefix}normalizer.", source)
        if "new_mean" in normalizer and "new_std" in normalizer:
            state["normalize.mean"] = normalizer["new_mean"]
            state["normalize.std"] = normalizer["new_std"]
    else:
        source = checkpoint
        for wrapper in ("state_dict", "model"):
            if isinstance(source.get(wrapper), Mapping):
                source = source[wrapper]
        if source and all(str(k).startswith("module.") for k in source):
            source = _strip("module.", source)
        if any(str(k).startswith(("net.", "normalize.")) for k in source):
            state = dict(source)
        else:
            state = {f"net.{k}": v for k, v in source.items()}
    # TRADES/Rice et al. WideResNets build a `sub_block1` they never use; reprlab's WRN omits it.
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
    for name in ("normalize.mean", "normalize.std"):
        if name in state:
            state[name] = torch.as_tensor(state[name]).reshape(template[name].shape)
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
    return {k: torch.as_tensor(state[k]).to(template[k].dtype) for k in template}


def import_checkpoint(cfg: DictConfig, path: Path, fmt: str, store_root: str | Path) -> Any:
    """Store the checkpoint at ``path`` as the weights of ``cfg.model`` on ``cfg.dataset``."""
    from reprlab.config import dataset_spec, recipe
    from reprlab.data import dataset_info
    from reprlab.recipes import build_for, model_identity
    from reprlab.store import ArtifactStore, load_weights, store_key

    spec = recipe(cfg.model)
    dataset = dataset_spec(cfg.dataset)
    model = build_for(spec, dataset_info(dataset.name))
    checkpoint = load_weights(path)
    state = classifier_state(checkpoint, model.state_dict(), fmt)
    model.load_state_dict(state)
    identity = model_identity(spec, dataset)
    key = store_key(identity)
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
        "format": fmt,
        "reported": reported,
        "imported": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return ArtifactStore(store_root).put(key, state, meta)
