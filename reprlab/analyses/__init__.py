"""Analysis registry: ``analysis=<name>`` on the command line selects one runner module.

Each runner module exposes ``settings(cfg) -> Settings`` (its typed schema: the ``analysis.*``
keys merged into a dataclass and range-checked; raises ReprlabError on bad parameters, before any
work) and ``run(cfg, ctx) -> dict`` (the run's summary, stored in run.json). A runner that reads
files besides the run's dataset may also expose ``check_data(cfg)``, raising ReprlabError when
they are missing (run after the dataset check, before any file is written). Runners are the only
code that reads the config; they never import each other.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reprlab.errors import ReprlabError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from reprlab.run.context import RunContext

RUNNERS = {
    "train": "reprlab.analyses.train",
    "evaluate": "reprlab.analyses.evaluate",
    "cka": "reprlab.analyses.cka",
    "cka_panels": "reprlab.analyses.cka_panels",
    "cka_epochs": "reprlab.analyses.cka_epochs",
    "vulnerability": "reprlab.analyses.vulnerability",
    "vulnerability_learn": "reprlab.analyses.vulnerability_learn",
    "stir": "reprlab.analyses.stir",
    "stitching": "reprlab.analyses.stitching",
    # Engstrom et al. 2019: five analyses and the study running any of them (one runner).
    "inversion": "reprlab.analyses.inversion_study",
    "repr_distance": "reprlab.analyses.inversion_study",
    "feature_vis": "reprlab.analyses.inversion_study",
    "feature_manip": "reprlab.analyses.inversion_study",
    "interpolation": "reprlab.analyses.inversion_study",
    "inversion_study": "reprlab.analyses.inversion_study",
    # The findings study's report, assembled from the runs of experiment=findings_*.
    "findings_report": "reprlab.analyses.findings_report",
}


@dataclass(frozen=True)
class Analysis:
    """A registered analysis: its name, typed settings and runner."""

    name: str
    settings: Callable[[DictConfig], Any]
    run: Callable[[DictConfig, RunContext], dict[str, Any]]
    check_data: Callable[[DictConfig], None] | None = None


def settings_once(parse: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a runner's ``settings(cfg)`` so that a job's settings are parsed and validated
    once per process: the check before Hydra starts, the job's own check and the runner then
    share one result (a probe of both networks, for stitching, costs seconds).

    Keyed by the config's YAML, so a sweep's jobs each get their own; a parse that raises is not
    kept.
    """
    cache: dict[str, Any] = {}

    @functools.wraps(parse)
    def parsed(cfg: DictConfig) -> Any:
        from omegaconf import OmegaConf

        try:
            key = OmegaConf.to_yaml(cfg, resolve=True)
        except Exception:  # an unresolvable value: parse (and refuse) it each time
            return parse(cfg)
        if key not in cache:
            cache[key] = parse(cfg)
        return cache[key]

    return parsed


def get_analysis(name: str) -> Analysis:
    """The analysis registered as ``name``."""
    if name not in RUNNERS:
        raise ReprlabError(
            f"unknown analysis '{name}'; choose one of: {', '.join(sorted(RUNNERS))}"
        )
    module = importlib.import_module(RUNNERS[name])
    return Analysis(
        name=name,
        settings=module.settings,
        run=module.run,
        check_data=getattr(module, "check_data", None),
    )


def validate_run(cfg: DictConfig) -> None:
    """Check a composed run config: what every run shares, the analysis's own schema, then that
    the dataset is on disk. Raises ReprlabError (one line) on the first problem; writes nothing.
    """
    from reprlab.run.config import check_data, dataset_spec, recipe, validate
    from reprlab.run.zoo import check_imported

    validate(cfg)
    for where in ("model", "ref"):  # an imported zoo model is never trained: it must be stored
        spec = recipe(cfg[where], where) if cfg.get(where) is not None else None
        if spec is not None and spec.pretrained is not None:
            check_imported(spec, dataset_spec(cfg.dataset), str(cfg.paths.store))
    analysis = get_analysis(cfg.analysis.name)
    analysis.settings(cfg)
    check_data(cfg)
    if analysis.check_data is not None:
        analysis.check_data(cfg)
