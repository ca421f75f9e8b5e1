"""RobustBench's model zoo (Croce et al. 2021) as store entries: published robust models by name.

``reprlab cache import robustbench:<name> dataset=cifar10 threat=Linf`` finds the recipe file
``conf/model/rb_*.yaml`` whose ``pretrained`` block names that zoo model, gets the zoo's weights
and stores them under that recipe, which then works as ``model=``/``ref=`` in every study.

Where the weights come from:

- with the ``robustbench`` package installed (``pip install 'reprlab[zoo]'``): through
  ``robustbench.utils.load_model`` itself, which reads ``<model_dir>/<dataset>/<threat>/<name>.pt``
  and downloads it first where it is absent (network needed). The imported model's logits are
  then compared with the package's own model on seeded images; an import that differs by more
  than :data:`MAX_LOGIT_DIFF` is refused, and the difference is recorded in meta.json.
- without it: from that same file in a local RobustBench ``model_dir``, read as the package reads
  it (``checkpoint['state_dict']``, else the dict itself; ``module.`` and ``model.`` prefixes
  stripped; ``checkpoint['last']`` for the two zoo entries saved that way).

A zoo model normalises inside the network (``mu``/``sigma`` or DeepMind's ``mean``/``std``; many
use none). That normalisation, from the recipe's ``pretrained.mean``/``std``, becomes the reprlab
model's first layer, so inputs stay [0, 1] pixels and radii stay in pixel units. The zoo's keys
are the reprlab architecture's own (``wrn28_10``/``wrn34_10``: TRADES/RobustBench WideResNet,
``preact_resnet18``, ``dm_wrn28_10``/``dm_wrn70_16``: DeepMind's WideResNet), so the mapping is
``* -> net.*`` (DeepMind's final ``logits.*`` -> ``net.fc.*``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from reprlab.errors import ReprlabError
from reprlab.run.config import DatasetSpec, ModelRecipe, config_dir

SOURCE = "robustbench:"
DATASETS = ("cifar10", "cifar100", "imagenet")  # RobustBench's BenchmarkDataset values
THREATS = ("Linf", "L2", "corruptions")  # RobustBench's ThreatModel values
MAX_LOGIT_DIFF = 1e-4  # an import whose logits differ more from the package's model is refused
# Zoo checkpoints saved as {'last': ..., 'best': ...}; RobustBench takes 'last' (utils.load_model).
LAST_WRAPPED = ("Kireev2021Effectiveness", "Andriushchenko2020Understanding")


def zoo_source(text: str) -> str | None:
    """The zoo name in ``robustbench:<name>``, or None for any other checkpoint argument."""
    if not text.startswith(SOURCE):
        return None
    name = text[len(SOURCE) :]
    if not name:
        raise ReprlabError("robustbench: needs a model name, e.g. robustbench:Carmon2019Unlabeled")
    return name


@functools.cache
def zoo_recipes() -> dict[tuple[str, str, str], str]:
    """(zoo dataset, threat, zoo name) -> the ``conf/model`` recipe holding that zoo model."""
    found = {}
    for path in sorted((config_dir() / "model").glob("rb_*.yaml")):
        pretrained = OmegaConf.load(path).get("pretrained")
        if pretrained is not None and pretrained.source == "robustbench":
            found[(str(pretrained.dataset), str(pretrained.threat), str(pretrained.name))] = (
                path.stem
            )
    return found


def find_recipe(name: str, dataset: str, threat: str) -> str:
    """The recipe (``model=`` option) of zoo model ``name`` for ``dataset`` and ``threat``;
    a ReprlabError naming the known ones otherwise."""
    if dataset not in DATASETS:
        raise ReprlabError(
            f"RobustBench has no dataset '{dataset}'; its zoo covers {', '.join(DATASETS)}: pass "
            "dataset=cifar10 (or cifar100, imagenet)"
        )
    if threat not in THREATS:
        raise ReprlabError(
            f"RobustBench has no threat model '{threat}'; use threat= one of {', '.join(THREATS)}"
        )
    recipes = zoo_recipes()
    if (dataset, threat, name) in recipes:
        return recipes[(dataset, threat, name)]
    elsewhere = [f"{d}/{t}" for d, t, n in recipes if n == name]
    known = sorted(n for d, t, n in recipes if (d, t) == (dataset, threat))
    if elsewhere:
        hint = f"reprlab has it for {', '.join(elsewhere)}: pass those dataset= and threat="
    elif _in_package(name, dataset, threat):
        hint = (
            "RobustBench lists it, but its architecture has no reprlab recipe yet (add a "
            "conf/model/rb_*.yaml with its arch and normalisation, see docs/pretrained.md)"
        )
    else:
        hint = f"known for {dataset}/{threat}: {', '.join(known) or 'none'}"
    raise ReprlabError(f"unknown RobustBench model '{name}' for {dataset}/{threat}; {hint}")


def robustbench_installed() -> bool:
    """Import the robustbench package; False where it is not installed.

    robustbench 1.1.1 depends on PyPI's ``pyautoattack`` but imports it as ``autoattack`` (the
    name of the authors' git install), so a pip-only install fails at ``import robustbench``;
    the PyPI module is registered under the name the package imports. It also needs
    ``pkg_resources`` (setuptools < 81, pinned by the ``zoo`` extra).
    """
    import importlib.util
    import sys

    if importlib.util.find_spec("robustbench") is None:
        return False
    if importlib.util.find_spec("autoattack") is None and "autoattack" not in sys.modules:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    import robustbench  # noqa: F401

    return True


def _in_package(name: str, dataset: str, threat: str) -> bool:
    """Whether the installed robustbench package lists ``name`` (False without the package)."""
    if not robustbench_installed():
        return False
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return name in model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]


def import_command(spec: ModelRecipe) -> str:
    """The command that imports zoo recipe ``spec``'s weights."""
    p = spec.pretrained
    assert p is not None
    return f"reprlab cache import {SOURCE}{p.name} dataset={p.dataset} threat={p.threat}"


def not_imported(spec: ModelRecipe) -> ReprlabError:
    """The error for a zoo recipe whose weights are not in the store (they are never trained)."""
    assert spec.pretrained is not None
    return ReprlabError(
        f"model {spec.name} is RobustBench's {spec.pretrained.name}, which is imported, not "
        f"trained: run `{import_command(spec)}` first (same store)"
    )


def check_imported(spec: ModelRecipe, dataset: DatasetSpec, store: str) -> None:
    """Raise :func:`not_imported`'s error unless zoo recipe ``spec`` is in ``store``."""
    from reprlab.io.store import ArtifactStore, store_key
    from reprlab.run.config import recipe_dataset
    from reprlab.run.recipes import model_identity

    key = store_key(model_identity(spec, recipe_dataset(spec, dataset)))
    if ArtifactStore(store).get(key) is None:
        raise not_imported(spec)


def checkpoint_path(model_dir: str | Path, spec: ModelRecipe) -> Path:
    """``<model_dir>/<dataset>/<threat>/<name>.pt``: where RobustBench keeps the zoo model."""
    p = spec.pretrained
    assert p is not None
    return Path(model_dir) / p.dataset / p.threat / f"{p.name}.pt"


def zoo_state_dict(checkpoint: Any, name: str) -> dict[str, torch.Tensor]:
    """The zoo model's own state_dict from its checkpoint file, as RobustBench's ``load_model``
    takes it: ``['last']`` for the entries saved that way, then ``['state_dict']`` if present,
    then the ``module.`` and ``model.`` prefixes removed."""
    if not isinstance(checkpoint, dict):
        raise ReprlabError(f"the RobustBench checkpoint of {name} is not a dict of tensors")
    if name.startswith(LAST_WRAPPED) and "last" in checkpoint:
        checkpoint = checkpoint["last"]
    state = checkpoint.get("state_dict", checkpoint)
    for prefix in ("module.", "model."):
        state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    return state


def zoo_key(arch: str, key: str) -> str:
    """The reprlab name of zoo state_dict key ``key`` in architecture ``arch``: the same, except
    DeepMind WideResNets' final ``logits.*``, which is ``fc.*`` in reprlab."""
    if arch.startswith("dm_wrn") and key.startswith("logits."):
        return "fc." + key[len("logits.") :]
    return key


def to_reprlab(state: dict[str, torch.Tensor], spec: ModelRecipe) -> dict[str, torch.Tensor]:
    """A zoo state_dict in reprlab's keys: ``* -> net.*``, the zoo's own normaliser buffers
    (``mu``/``sigma``, ``mean``/``std``) replaced by the recipe's normalisation."""
    p = spec.pretrained
    assert p is not None
    skip = {"mu", "sigma", "mean", "std"}
    converted = {f"net.{zoo_key(spec.arch, k)}": v for k, v in state.items() if k not in skip}
    converted["normalize.mean"] = torch.tensor(p.mean, dtype=torch.float32).view(1, -1, 1, 1)
    converted["normalize.std"] = torch.tensor(p.std, dtype=torch.float32).view(1, -1, 1, 1)
    return converted


def package_normalisation(model: torch.nn.Module) -> tuple[list[float], list[float]] | None:
    """(mean, std) a RobustBench model applies inside itself, None if it applies none."""
    for mean, std in (("mu", "sigma"), ("mean", "std")):
        m, s = getattr(model, mean, None), getattr(model, std, None)
        if isinstance(m, torch.Tensor) and isinstance(s, torch.Tensor):
            return m.flatten().tolist(), s.flatten().tolist()
    return None


def _package_model(spec: ModelRecipe, model_dir: Path) -> torch.nn.Module:
    """``robustbench.utils.load_model`` for ``spec``'s zoo entry (downloads where absent)."""
    from robustbench.utils import load_model

    p = spec.pretrained
    assert p is not None
    target = checkpoint_path(model_dir, spec)
    try:
        return load_model(
            p.name, model_dir=str(model_dir), dataset=p.dataset, threat_model=p.threat
        )
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ReprlabError(
            f"robustbench could not load {p.name} ({type(err).__name__}: {reason}); without "
            f"network, put the zoo's file at {target}"
        ) from None


def logit_difference(
    ours: torch.nn.Module, theirs: torch.nn.Module, shape: tuple[int, ...], *, seed: int = 0
) -> float:
    """max |Δ| between two models' logits on 4 seeded uniform [0, 1] images of ``shape``
    (both in eval mode, float32, on the CPU)."""
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = ours.cpu().eval()(images)
        b = theirs.cpu().eval()(images)
    return float((a - b).abs().max())


def zoo_checkpoint(
    spec: ModelRecipe, model_dir: str | Path, info: Any
) -> tuple[Path, dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """(the zoo file, the weights in reprlab's keys, notes, meta) for zoo recipe ``spec``.

    Through the robustbench package when it is installed (and the logits compared with its
    model), else from the file in ``model_dir``. Nothing is written unless the package downloads.
    """
    from reprlab.io.store import load_weights
    from reprlab.run.recipes import build_for

    p = spec.pretrained
    assert p is not None
    model_dir = Path(model_dir)
    path = checkpoint_path(model_dir, spec)
    package = _package_model(spec, model_dir) if robustbench_installed() else None
    if package is None:
        if not path.exists():
            raise ReprlabError(
                f"RobustBench model file {path} not found; install the robustbench package "
                "(`pip install 'reprlab[zoo]'`) to download it, or pass --model-dir <the "
                "RobustBench model_dir that holds it>"
            )
        state = zoo_state_dict(load_weights(path), p.name)
        notes = [f"read {path} as robustbench.utils.load_model does (package not installed)"]
        meta: dict[str, Any] = {"loaded_by": "reprlab (robustbench package not installed)"}
    else:
        state = dict(package.state_dict())
        notes = [f"loaded by robustbench.utils.load_model from {model_dir}"]
        meta = {"loaded_by": "robustbench.utils.load_model"}
        inside = package_normalisation(package)
        expected = (p.mean, p.std)
        if inside is not None and not all(
            torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)
            for a, b in zip(inside, expected, strict=True)
        ):
            raise ReprlabError(
                f"the recipe {spec.name} normalises with mean {p.mean}, std {p.std} but "
                f"RobustBench's {p.name} with mean {inside[0]}, std {inside[1]}; fix the recipe"
            )
    converted = to_reprlab(state, spec)
    notes.append(
        f"* -> net.*; normaliser mean {p.mean}, std {p.std} (the zoo model's own)"
        if any(s != 1 for s in p.std)
        else "* -> net.*; no normaliser (the zoo model takes [0, 1] pixels as they are)"
    )
    if package is not None:
        from reprlab.run.importing import classifier_state

        ours = build_for(spec, info)
        ours.load_state_dict(classifier_state(converted, ours.state_dict(), "state_dict"))
        diff = logit_difference(ours, package, (info.channels, info.image_size, info.image_size))
        meta["package_logit_max_abs_diff"] = diff
        notes.append(f"logits equal robustbench's model within {diff:.1e}")
        if not diff <= MAX_LOGIT_DIFF:
            raise ReprlabError(
                f"the imported {p.name} computes other logits than RobustBench's own model "
                f"(max |diff| {diff:.3g} > {MAX_LOGIT_DIFF:g}); the architecture {spec.arch} does "
                "not match it"
            )
    if not path.exists():  # a timm-hosted zoo model has no file in model_dir
        raise ReprlabError(
            f"RobustBench keeps {p.name} outside {model_dir}; reprlab cannot import it"
        )
    return path, converted, notes, meta
