"""``reprlab run``: split Hydra's arguments, compose and validate every job before anything is
written, then hand the arguments to Hydra unchanged."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprlab.cli.console import _debug, fail, warn
from reprlab.errors import ReprlabError

# Hydra flags after which nothing runs: no validation needed (or possible, for --help).
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
               "--shell-completion", "-sc"}  # fmt: skip
# Hydra flags whose value is the next argument.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}  # fmt: skip


def split_hydra_args(args: Sequence[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, info_only) from the arguments given after ``run``."""
    overrides: list[str] = []
    multirun = info_only = False
    arguments = iter(args)
    for arg in arguments:
        flag = arg.split("=", 1)[0]
        multirun = multirun or flag in ("-m", "--multirun")
        info_only = info_only or flag in _INFO_FLAGS
        if flag in _VALUE_FLAGS and "=" not in arg:
            next(arguments, None)
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun, info_only


REQUIRED_GROUPS = ("dataset", "model", "attack", "analysis", "logger")
"""Groups every run needs an option of (``ref`` and ``experiment`` may be null)."""


def check_group_choices(overrides: Sequence[str]) -> None:
    """Raise ReprlabError for ``group=option`` overrides naming an option that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from reprlab.run.groups import GROUPS, group_options

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        options = group_options(group)
        for value in values:
            if value == "null" and group in REQUIRED_GROUPS:
                raise ReprlabError(
                    f"{group}=null is invalid: every run needs a {group}; choose one of: "
                    f"{', '.join(options)}"
                )
            if value != "null" and value not in options:
                from reprlab.cli.guide import did_you_mean

                hint = did_you_mean(value, options)
                raise ReprlabError(
                    f"unknown {group} '{value}'{hint} (options: {', '.join(options)})"
                    if hint
                    else f"unknown {group} '{value}'; choose one of: {', '.join(options)}"
                )


def swept_keys(overrides: Sequence[str]) -> set[str]:
    """The keys (or groups) that a multirun's overrides sweep over."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_overrides(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a (multi)run will launch."""
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def compose_config(overrides: Sequence[str], *, with_hydra: bool = False) -> Any:
    """Compose the run config for ``overrides`` (no Hydra run, no directories written).

    ``with_hydra`` keeps the ``hydra`` node (run and sweep directories) in the result.
    """
    from reprlab.run.groups import compose

    try:
        return compose(overrides, with_hydra=with_hydra, explain=_explain)
    except ReprlabError as err:
        raise ReprlabError(unchosen_group(str(err), overrides) or str(err)) from None


def _explain(message: str, overrides: Sequence[str]) -> str | None:
    from reprlab.cli.guide import explain_override_error

    return explain_override_error(message, overrides, compose_config)


def unchosen_group(message: str, overrides: Sequence[str]) -> str | None:
    """For Hydra's "Could not override 'ref.arch'" about a key of a group no option was chosen
    for (``ref``, ``pair``, ``experiment`` default to null): a message naming the group to choose
    first. None for any other message."""
    import re

    match = re.match(r"Could not override '(ref|pair|experiment)\.([^']+)'", message)
    if match is None:
        return None
    group, key = match.groups()
    given = next((o for o in overrides if o.split("=", 1)[0] == f"{group}.{key}"), f"{group}.{key}")
    return (
        f"{given}: no {group} is chosen, so it has no {key}; choose one first, e.g. "
        f"{group}=<option> {given} (`reprlab run --help` lists the options)"
    )


def check_output_dirs(cfg: Any, multirun: bool) -> None:
    """Raise ReprlabError unless the run (or sweep) directory Hydra will write is a real,
    writable path, and a new or empty directory (not ``/``, a system directory or an earlier
    run: :func:`reprlab.io.runs.run_dir_problem`).

    An empty ``hydra.run.dir`` would make Hydra write the run into the current directory; a
    read-only place would fail half-way. (The store is checked when something must be written to
    it: a read-only store of trained models is fine.)
    """
    from omegaconf.errors import OmegaConfBaseException

    from reprlab.io import atomic
    from reprlab.io.runs import run_dir_problem
    from reprlab.run.groups import one_line

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    node = cfg.hydra.sweep if multirun else cfg.hydra.run
    try:
        value = node.dir
    except OmegaConfBaseException as err:
        raise ReprlabError(f"{key}: {one_line(str(err))}") from None
    if not isinstance(value, str) or not value.strip():
        raise ReprlabError(
            f"{key}={value!r} is invalid: give a directory for the run's files (the default "
            "is under paths.outputs)"
        )
    problem = run_dir_problem(value, "sweep" if multirun else "run")
    if problem is not None:
        raise ReprlabError(
            f"{key}={value} is refused: {problem}; a {'sweep' if multirun else 'run'} writes "
            f"into a new or empty directory (leave {key} at its default, under paths.outputs)"
        )
    store = Path(os.path.abspath(str(cfg.paths.store)))
    blocked = next((p for p in (store, *store.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ReprlabError(
            f"the store paths.store={cfg.paths.store} cannot be a directory: {blocked} is a "
            "file; point paths.store= (or REPRLAB_STORE) at a directory"
        )
    problem = atomic.unwritable(Path(value))
    if problem is not None:
        raise ReprlabError(
            f"cannot create the run directory {value}: {problem}; choose a writable place "
            "with paths.outputs=..."
        )
    check_stored_models(cfg)


def check_stored_models(cfg: Any) -> None:
    """Raise ReprlabError, before any directory is made, when the store entry of the run's model
    or ref is damaged (any file not matching its sha256, or copied from another key), or is
    missing from a store that cannot be written (it could not be trained)."""
    from reprlab.io import atomic
    from reprlab.io.store import ArtifactStore, store_key
    from reprlab.run.config import dataset_spec, recipe, recipe_dataset
    from reprlab.run.recipes import model_identity

    store = ArtifactStore(str(cfg.paths.store))
    dataset = dataset_spec(cfg.dataset)
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        key = store_key(model_identity(spec, recipe_dataset(spec, dataset)))
        entry = store.get(key)
        if entry is not None:
            entry.verify()
            continue
        problem = atomic.unwritable(store.root)
        if problem is not None:
            raise ReprlabError(
                f"{where}={spec.name} is not in the store {store.root}, which cannot be "
                f"written ({problem}) to train it; point paths.store= (or REPRLAB_STORE) at a "
                "writable store, or at one that holds it"
            )


def preflight(
    overrides: Sequence[str],
    multirun: bool,
    *,
    validate: bool = True,
    composed: list[tuple[list[str], Any]] | None = None,
) -> str | None:
    """Compose and validate every job of the run; raise ReprlabError on the first problem.

    With ``validate=False`` (``--cfg``, ``--info``, ``--help``) only the composition is checked:
    unknown options and keys, malformed overrides. Returns the sweep directory of a validated
    multirun as composed now (None otherwise), for :func:`pin_sweep_dir`. ``composed``, when
    given, receives (overrides, config) of every validated job, and the run's dataset choice is
    printed (``dataset: cifar10 (model=resnet18_at's ...)``), once per distinct line.
    """
    from hydra.errors import HydraException

    from reprlab.analyses import validate_run
    from reprlab.cli import launchers
    from reprlab.run.groups import one_line

    try:
        check_group_choices(overrides)
        launcher = launchers.check_installed(launchers.chosen_launcher(overrides))
        jobs = job_overrides(overrides, multirun)
    except HydraException as err:
        raise ReprlabError(one_line(str(err))) from None
    stores = []
    sweep_dir = None
    choices: dict[str, None] = {}
    first = None
    for job in jobs:
        try:
            cfg = compose_config(job, with_hydra=validate)
            if validate:
                from reprlab.run.config import check_asked_samples, dataset_choice

                choice = dataset_choice(cfg, cfg.hydra.runtime.choices, job)
                check_asked_samples(cfg, job)
                validate_run(cfg)
                from reprlab.io.loggers import check_installed

                check_installed(str(cfg.logger.name))
                if composed is not None:
                    composed.append((job, cfg))
                    choices.setdefault(choice.describe(), None)
                check_output_dirs(cfg, multirun)
                stores.append(str(cfg.paths.store))
                first = cfg if first is None else first
                if multirun and sweep_dir is None:
                    sweep_dir = str(cfg.hydra.sweep.dir)
        except ReprlabError as err:
            prefix = f"in sweep job [{' '.join(job)}]: " if multirun and len(jobs) > 1 else ""
            raise ReprlabError(f"{prefix}{err}") from None
    if validate and multirun:
        launchers.check_cluster(launcher, stores, warn=warn)
        launchers.check_job_request(launcher, first)
    for line in choices:
        print(line, flush=True)
    return sweep_dir


def pin_sweep_dir(args: Sequence[str], sweep_dir: str | None) -> list[str]:
    """``args`` with ``hydra.sweep.dir`` fixed to ``sweep_dir`` (unless the user set it).

    The default sweep directory holds the time and this process's run id; a launcher plugin
    re-resolves it in each job's own process (another node, for SLURM), where both differ. A
    literal value keeps every job of the sweep in the one directory its summary gathers.
    """
    if (
        sweep_dir is None
        or any(a.split("=", 1)[0] == "hydra.sweep.dir" for a in args)
        or any(c in os.path.abspath(sweep_dir) for c in ("'", "\\", "${"))  # Hydra escapes
    ):
        return list(args)
    return [*args, f"hydra.sweep.dir='{os.path.abspath(sweep_dir)}'"]


def _register_config_extras() -> None:
    from reprlab.run.groups import register_config_extras

    register_config_extras()


def _hydra_task(cfg: Any) -> Any:
    """One Hydra job. In a sweep, a failed job is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from reprlab.cli import sweeps
    from reprlab.cli.execute import execute, install_signal_handlers

    _register_config_extras()  # a launcher plugin may run this job in a fresh process
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if "SLURM_JOB_ID" in os.environ:  # scancel and time limits: run.json says "interrupted"
        install_signal_handlers()
    try:
        return execute(cfg)
    except ReprlabError as err:
        if _debug():
            raise
        if not in_sweep:
            sys.exit(fail(str(err)))
        sweeps.record_failure(hydra_cfg, str(err))
    except Exception as err:
        if not in_sweep or _debug():
            raise  # a bug: Hydra prints its traceback
        logging.getLogger("reprlab").exception("sweep job %s failed", hydra_cfg.job.num)
        sweeps.record_failure(hydra_cfg, f"{type(err).__name__}: {err}".splitlines()[0])
    return None


PLAN_FLAG = "--plan"
"""``reprlab run ... --plan``: list the models the run (or sweep) would train or reuse, with their
estimated cost, and stop; nothing runs and nothing is written."""


def print_plan(composed: list[tuple[list[str], Any]]) -> int:
    """Print the plan of the validated jobs ``composed`` (:mod:`reprlab.run.plan`); exit code 0."""
    from reprlab.run.plan import plan_jobs

    print(plan_jobs(composed).render(), flush=True)
    return 0


def _help_page(args: Sequence[str], overrides: Sequence[str], multirun: bool) -> bool:
    """Refuse unknown flags and ``-m --cfg``; print reprlab's own ``--help`` page (True when
    printed). Hydra's ``--hydra-help`` stays Hydra's."""
    from reprlab.cli.guide import check_flags, run_help

    check_flags(args)
    if multirun and any(a.split("=", 1)[0] in ("--cfg", "-c") for a in args):
        raise ReprlabError(
            "--cfg prints one job's config and cannot be combined with -m; drop -m and give "
            "one value per key (e.g. model=cnn_small, not model=cnn_small,cnn_small_at)"
        )
    if not any(a in ("--help", "-h") for a in args):
        return False
    check_group_choices(overrides)
    analysis = str(compose_config([o for o in overrides if "," not in o]).analysis.name)
    print(run_help(overrides, analysis))
    return True


def run_command(args: Sequence[str]) -> int:
    """``reprlab run``: validate, then hand ``args`` to Hydra unchanged.

    Exit codes: 0 done; 2 a bad input (nothing written); 1 a run or some sweep jobs failed;
    130/143 interrupted by SIGINT/SIGTERM (run.json says so).
    """
    from reprlab.cli.execute import Interrupted, install_signal_handlers, write_failure

    install_signal_handlers()
    plan_only = PLAN_FLAG in args
    args = [arg for arg in args if arg != PLAN_FLAG]
    overrides, multirun, info_only = split_hydra_args(args)
    sweep_dir = None
    if "--shell-completion" not in args and "-sc" not in args:
        composed: list[tuple[list[str], Any]] = []
        try:
            if _help_page(args, overrides, multirun):
                return 0
            sweep_dir = preflight(overrides, multirun, validate=not info_only, composed=composed)
            if plan_only and not info_only:
                return print_plan(composed)
            args = pin_sweep_dir(args, sweep_dir)
        except ReprlabError as err:
            if _debug():
                raise
            return fail(str(err))
    import hydra

    from reprlab.cli import launchers, sweeps
    from reprlab.run.groups import config_dir

    if not info_only and launchers.is_slurm(launchers.chosen_launcher(overrides)):
        from reprlab.cli import slurm

        slurm.prepare(sweep_dir)

    _register_config_extras()
    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        _hydra_task
    )
    sys.argv = ["reprlab run", *args]
    sweeps.FAILURES.clear()
    # Hydra prints any exception that leaves a job with a traceback and exits 1; let write
    # failures (e.g. its config snapshot on a full disk) reach the handler below instead.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (KeyboardInterrupt, Interrupted):
        if sweep_dir is not None:  # the summary of the jobs that ran, then the usual exit
            with contextlib.suppress(Exception):
                sweeps.write_summary(Path(sweep_dir))
        raise
    except Exception as err:  # a full disk under Hydra's own writes; sbatch refusing
        problem = launchers.failure_line(err, write_failure)
        if problem is None or _debug():
            raise
        if sweep_dir is not None:
            with contextlib.suppress(Exception):
                sweeps.write_summary(Path(sweep_dir))
        return fail(problem)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    swept = swept_keys(overrides) if sweeps.FAILURES else set()
    for failure in sweeps.FAILURES:
        print(f"reprlab: error: sweep job {failure.describe(swept or None)}", file=sys.stderr)
    return 1 if sweeps.FAILURES else 0
