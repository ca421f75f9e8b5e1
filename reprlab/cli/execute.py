"""The body of one Hydra job: validate, seed, open the run directory, dispatch to the runner.

Every run that starts ends recorded in its run.json: ``completed``, ``failed`` (with the error)
or ``interrupted`` (SIGINT or SIGTERM, with the signal). A signal ends the process with the
shell's convention, 128 + the signal number (130 for Ctrl-C, 143 for ``kill``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprlab.cli.console import shown_path
from reprlab.errors import ReprlabError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("reprlab")


class Interrupted(BaseException):
    """The process was asked to stop by a signal (SIGTERM, or SIGINT as a KeyboardInterrupt).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (Hydra's
    job wrapper included) mistakes it for a failure of the run.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.signal_name)

    @classmethod
    def from_keyboard(cls) -> Interrupted:
        return cls(signal.SIGINT)

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def describe(self) -> str:
        return f"interrupted by {self.signal_name} (exit {self.exit_code})"


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM raise :class:`Interrupted` (SIGINT already raises KeyboardInterrupt), so a
    run ends recorded instead of being killed mid-write. Only the main thread can do this."""
    with contextlib.suppress(ValueError):  # not the main thread: leave the defaults
        signal.signal(signal.SIGTERM, _raise_interrupted)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (while an ending run is recorded)."""
    previous = {}
    with contextlib.suppress(ValueError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _discard_unused_run_dir(path: Path) -> None:
    """Remove a run directory holding nothing but Hydra's snapshot and an empty log."""
    leftovers = [
        p
        for p in path.iterdir()
        if p.name != ".hydra" and not (p.suffix == ".log" and p.stat().st_size == 0)
    ]
    if not leftovers:
        shutil.rmtree(path, ignore_errors=True)


_WRITE_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EIO,
}


def write_failure(err: OSError, run_dir: Path | None = None) -> str | None:
    """One line for an OSError that means "the run's files cannot be written here" (disk full,
    quota, read-only, permission, a file where a directory should be), naming the path and the
    remedy; None for any other error."""
    if err.errno not in _WRITE_ERRORS:
        return None
    where = err.filename or run_dir or "the outputs directory"
    return (
        f"cannot write {where}: {err.strerror}; free space or fix the path, or point "
        "paths.outputs= (or hydra.run.dir=) at a writable directory"
    )


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis ``cfg.analysis.name`` in Hydra's output directory; return its summary.

    Raises ReprlabError (run.json ``failed``; a write failure such as a full disk becomes one,
    recorded ``failed`` when run.json can still be written), :class:`Interrupted` on SIGINT or
    SIGTERM (run.json ``interrupted``), or the runner's own exception (run.json ``failed``).
    """
    from hydra.core.hydra_config import HydraConfig

    from reprlab.analyses import get_analysis, validate_run
    from reprlab.io.runs import RunDirectory
    from reprlab.run.config import dataset_choice
    from reprlab.run.context import RunContext
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
    try:
        run = RunDirectory(path)
    except OSError as err:
        problem = write_failure(err, path)
        if problem is None:
            raise
        raise ReprlabError(problem) from None
    try:
        ctx = RunContext(cfg, run)
        run.start(
            analysis=analysis.name,
            overrides=list(hydra_cfg.overrides.task),
            seed=int(cfg.seed),
            device=str(ctx.device),
        )
        run.update(seeds=seeds, dataset=ctx.dataset.name, trainer=ctx.trainer.record())
        choice = dataset_choice(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task)
        run.update(dataset_choice=choice.record())
        log.info("%s run in %s", analysis.name, shown_path(path))
        summary = analysis.run(cfg, ctx)
    except (KeyboardInterrupt, Interrupted) as err:
        stop = err if isinstance(err, Interrupted) else Interrupted.from_keyboard()
        with signals_deferred():
            if run.record:
                run.finish("interrupted", error=stop.describe())
        raise stop from None
    except OSError as err:
        problem = write_failure(err, path)
        if problem is None:
            raise
        with signals_deferred(), contextlib.suppress(OSError):  # the disk may still be full
            if run.record:
                run.finish("failed", error=problem)
        raise ReprlabError(problem) from None
    except BaseException as err:
        with signals_deferred():
            if run.record:
                error = (
                    str(err)
                    if isinstance(err, ReprlabError)
                    else "".join(traceback.format_exception_only(type(err), err)).strip()
                )
                run.finish("failed", error=error)
        raise
    run.finish("completed", summary)
    _log_to_tracker(cfg, path, run.record)
    log.info("results in %s", shown_path(path))
    return summary


def _log_to_tracker(cfg: DictConfig, path: Path, record: dict[str, Any]) -> None:
    """Hand the finished run to the chosen ``logger=`` (nothing more for ``csv``); a tracker
    that fails is a warning, never a failed run: the results are already on disk."""
    from omegaconf import OmegaConf

    from reprlab.io.loggers import log_run

    settings = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {}
    try:
        where = log_run(settings, path, record)  # type: ignore[arg-type]
    except Exception as err:  # a tracker's own failure
        log.warning("logger=%s failed: %s", settings.get("name"), err)  # type: ignore[union-attr]
        return
    if where is not None:
        log.info("logger=%s wrote %s", settings["name"], where)  # type: ignore[index]
