"""The body of one Hydra job: validate, seed, open the run directory, dispatch to the runner."""

from __future__ import annotations

import logging
import shutil
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reprlab.errors import ReprlabError

log = logging.getLogger("reprlab")


def _discard_unused_run_dir(path: Path) -> None:
    """Remove a run directory holding nothing but Hydra's snapshot and an empty log."""
    leftovers = [
        p
        for p in path.iterdir()
        if p.name != ".hydra" and not (p.suffix == ".log" and p.stat().st_size == 0)
    ]
    if not leftovers:
        shutil.rmtree(path, ignore_errors=True)


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis ``cfg.analysis.name`` in Hydra's output directory; return its summary."""
    from hydra.core.hydra_config import HydraConfig

    from reprlab.analyses import get_analysis, validate_run
    from reprlab.context import RunContext
    from reprlab.runs import RunDirectory
    from reprlab.runtime import seed_everything

    hydra_cfg = HydraConfig.get()
    path = Path(hydra_cfg.runtime.output_dir)
    try:
        validate_run(cfg)
    except ReprlabError:
        _discard_unused_run_dir(path)
        raise
    analysis = get_analysis(cfg.analysis.name)
    seeds = seed_everything(int(cfg.seed))
    run = RunDirectory(path)
    ctx = RunContext(cfg, run)
    run.start(
        analysis=analysis.name,
        overrides=list(hydra_cfg.overrides.task),
        seed=int(cfg.seed),
        device=str(ctx.device),
    )
    run.update(seeds=seeds, dataset=ctx.dataset.name)
    log.info("%s run in %s", analysis.name, path)
    try:
        summary = analysis.run(cfg, ctx)
    except BaseException as err:
        run.finish("failed", error="".join(traceback.format_exception_only(type(err), err)).strip())
        raise
    run.finish("completed", summary)
    log.info("results in %s", path)
    return summary
