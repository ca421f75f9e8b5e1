"""Analysis registry: ``analysis=<name>`` on the command line selects one runner module.

Each runner module exposes ``validate(cfg) -> None`` (raise ReprlabError on bad parameters, before
any work) and ``run(cfg, ctx) -> dict`` (the run's summary, stored in run.json). Runners are the
only code that reads the config; they never import each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reprlab.errors import ReprlabError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from reprlab.context import RunContext

RUNNERS = {
    "train": "reprlab.analyses.train",
    "evaluate": "reprlab.analyses.evaluate",
    "cka": "reprlab.analyses.cka",
    "cka_panels": "reprlab.analyses.cka_panels",
    "cka_epochs": "reprlab.analyses.cka_epochs",
}


@dataclass(frozen=True)
class Analysis:
    """A registered analysis: its name, parameter check and runner."""

    name: str
    validate: Callable[[DictConfig], None]
    run: Callable[[DictConfig, RunContext], dict[str, Any]]


def get_analysis(name: str) -> Analysis:
    """The analysis registered as ``name``."""
    if name not in RUNNERS:
        raise ReprlabError(
            f"unknown analysis '{name}'; choose one of: {', '.join(sorted(RUNNERS))}"
        )
    module = importlib.import_module(RUNNERS[name])
    return Analysis(name=name, validate=module.validate, run=module.run)
