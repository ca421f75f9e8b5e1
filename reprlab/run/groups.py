"""The config files and what Hydra needs to compose them: groups, options, the ``ref`` group,
reprlab's resolvers. Imports no torch, so ``reprlab run --help``, ``--cfg`` and a refused
override answer in about a second."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

GROUPS = ("dataset", "model", "attack", "analysis", "ref", "pair", "logger", "experiment")
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
    # A ListConfig, not a list: OmegaConf 2.3 refuses a resolver's plain list when a config is
    # resolved as a whole (``--cfg job --resolve``).
    return ListConfig([*(e for e in kept if e != epochs), epochs])


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


def register_config_extras() -> None:
    """Register the ``ref`` group's options and reprlab's resolvers (once per process)."""
    global _EXTRAS_REGISTERED
    if _EXTRAS_REGISTERED:
        return
    from reprlab.io.runs import RUN_ID

    register_ref_group()
    register_resolvers()
    OmegaConf.register_new_resolver("reprlab_run_id", lambda: RUN_ID, replace=True)
    _EXTRAS_REGISTERED = True


_EXTRAS_REGISTERED = False


def compose(
    overrides: Sequence[str],
    *,
    with_hydra: bool = False,
    explain: Callable[[str, Sequence[str]], str | None] | None = None,
) -> DictConfig:
    """The run config composed from ``overrides`` exactly as ``reprlab run`` composes it, with
    nothing run and nothing written. ``with_hydra`` keeps the ``hydra`` node.

    Raises ReprlabError with Hydra's or OmegaConf's message on one line, or with what
    ``explain(message, overrides)`` makes of it (the command line's "did you mean").
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from reprlab.errors import ReprlabError

    register_config_extras()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="reprlab"):
            return hydra_compose(
                "config", overrides=list(overrides), return_hydra_config=with_hydra
            )
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        # ValueError: Hydra's answer to some malformed overrides (e.g. a null group choice).
        message = explain(str(err), overrides) if explain is not None else None
        raise ReprlabError(message or one_line(str(err)) or type(err).__name__) from None


def one_line(message: str) -> str:
    """A Hydra/OmegaConf error message as one whole line.

    Indented lists (``Available options in 'model':`` followed by one option per line) are
    joined with commas; Hydra's config search path and its HYDRA_FULL_ERROR hint are dropped.
    """
    parts: list[str] = []
    listing: list[str] = []
    for raw in message.splitlines():
        line = raw.strip()
        if line.startswith("Config search path") or line.startswith("Set the environment"):
            break
        if not line:
            continue
        if raw[:1] in ("\t", " ") and parts and parts[-1].endswith(":"):
            listing.append(line)
            continue
        if listing:
            parts[-1] += " " + ", ".join(listing)
            listing = []
        parts.append(line)
    if listing:
        parts[-1] += " " + ", ".join(listing)
    return " ".join(parts)
