"""The ``reprlab`` command: ``run`` (Hydra), ``cache``, ``taps``, ``report``, ``download``.

``reprlab run <args>`` hands ``<args>`` to Hydra unchanged (``-m`` sweeps, ``--cfg job``,
``--help`` and ``hydra.*`` overrides all work). Before Hydra starts, every job of the run is
composed and validated, so a mistake a user can make prints one line and exits non-zero before any
work starts or any directory is written. Heavy imports (torch) happen inside the commands, so
``reprlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprlab.errors import ReprlabError

EXIT_USER_ERROR = 2

# Hydra flags after which nothing runs: no validation needed (or possible, for --help).
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
               "--shell-completion", "-sc"}  # fmt: skip
# Hydra flags whose value is the next argument.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}  # fmt: skip


def _debug() -> bool:
    return os.environ.get("REPRLAB_DEBUG", "") not in ("", "0")


def fail(message: str) -> int:
    """Print a user error as one line on stderr; return the exit code."""
    print(f"reprlab: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


# --- run --------------------------------------------------------------------------------------


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


REQUIRED_GROUPS = ("dataset", "model", "attack", "analysis")
"""Groups every run needs an option of (``ref`` and ``experiment`` may be null)."""


def check_group_choices(overrides: Sequence[str]) -> None:
    """Raise ReprlabError for ``group=option`` overrides naming an option that does not exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from reprlab.run.config import GROUPS, group_options

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
                raise ReprlabError(
                    f"unknown {group} '{value}'; choose one of: {', '.join(options)}"
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


def compose_config(overrides: Sequence[str], *, with_hydra: bool = False) -> Any:
    """Compose the run config for ``overrides`` (no Hydra run, no directories written).

    ``with_hydra`` keeps the ``hydra`` node (run and sweep directories) in the result.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from reprlab.run.config import config_dir

    _register_config_extras()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="reprlab"):
            return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        # ValueError: Hydra's answer to some malformed overrides (e.g. a null group choice).
        raise ReprlabError(one_line(str(err)) or type(err).__name__) from None


def check_output_dirs(cfg: Any, multirun: bool) -> None:
    """Raise ReprlabError unless the run (or sweep) directory Hydra will write is a real,
    writable path.

    An empty ``hydra.run.dir`` would make Hydra write the run into the current directory; a
    read-only place would fail half-way. (The store is checked when something must be written to
    it: a read-only store of trained models is fine.)
    """
    from omegaconf.errors import OmegaConfBaseException

    from reprlab.io import atomic

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
    problem = atomic.unwritable(Path(value))
    if problem is not None:
        raise ReprlabError(
            f"cannot create the run directory {value}: {problem}; choose a writable place "
            "with paths.outputs=..."
        )


def preflight(overrides: Sequence[str], multirun: bool, *, validate: bool = True) -> str | None:
    """Compose and validate every job of the run; raise ReprlabError on the first problem.

    With ``validate=False`` (``--cfg``, ``--info``, ``--help``) only the composition is checked:
    unknown options and keys, malformed overrides. Returns the sweep directory of a validated
    multirun as composed now (None otherwise), for :func:`pin_sweep_dir`.
    """
    from hydra.errors import HydraException

    from reprlab.analyses import validate_run
    from reprlab.cli import launchers

    try:
        check_group_choices(overrides)
        launcher = launchers.check_installed(launchers.chosen_launcher(overrides))
        jobs = job_overrides(overrides, multirun)
    except HydraException as err:
        raise ReprlabError(one_line(str(err))) from None
    stores = []
    sweep_dir = None
    for job in jobs:
        try:
            cfg = compose_config(job, with_hydra=validate)
            if validate:
                validate_run(cfg)
                check_output_dirs(cfg, multirun)
                stores.append(str(cfg.paths.store))
                if multirun and sweep_dir is None:
                    sweep_dir = str(cfg.hydra.sweep.dir)
        except ReprlabError as err:
            prefix = f"in sweep job [{' '.join(job)}]: " if multirun and len(jobs) > 1 else ""
            raise ReprlabError(f"{prefix}{err}") from None
    if validate and multirun:
        launchers.check_cluster(launcher, stores, warn=warn)
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


def warn(message: str) -> None:
    """Print a warning as one line on stderr."""
    print(f"reprlab: warning: {message}", file=sys.stderr)


_EXTRAS_REGISTERED = False


def _register_config_extras() -> None:
    """Register the ``ref`` group's options and reprlab's resolvers (once per process)."""
    global _EXTRAS_REGISTERED
    if _EXTRAS_REGISTERED:
        return
    from omegaconf import OmegaConf

    from reprlab.io.runs import RUN_ID
    from reprlab.run.config import register_ref_group, register_resolvers

    register_ref_group()
    register_resolvers()
    OmegaConf.register_new_resolver("reprlab_run_id", lambda: RUN_ID, replace=True)
    _EXTRAS_REGISTERED = True


def _hydra_task(cfg: Any) -> Any:
    """One Hydra job. In a sweep, a failed job is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from reprlab.cli import sweeps
    from reprlab.cli.execute import execute

    _register_config_extras()  # a launcher plugin may run this job in a fresh process
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
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


def run_command(args: Sequence[str]) -> int:
    """``reprlab run``: validate, then hand ``args`` to Hydra unchanged.

    Exit codes: 0 done; 2 a bad input (nothing written); 1 a run or some sweep jobs failed;
    130/143 interrupted by SIGINT/SIGTERM (run.json says so).
    """
    from reprlab.cli.execute import install_signal_handlers

    install_signal_handlers()
    overrides, multirun, info_only = split_hydra_args(args)
    if "--shell-completion" not in args and "-sc" not in args:
        try:
            args = pin_sweep_dir(args, preflight(overrides, multirun, validate=not info_only))
        except ReprlabError as err:
            if _debug():
                raise
            return fail(str(err))
    import hydra

    from reprlab.cli import sweeps
    from reprlab.run.config import config_dir

    _register_config_extras()
    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(
        _hydra_task
    )
    sys.argv = ["reprlab run", *args]
    sweeps.FAILURES.clear()
    main()
    swept = swept_keys(overrides) if sweeps.FAILURES else set()
    for failure in sweeps.FAILURES:
        print(f"reprlab: error: sweep job {failure.describe(swept or None)}", file=sys.stderr)
    return 1 if sweeps.FAILURES else 0


# --- cache ------------------------------------------------------------------------------------


def store_root(args: argparse.Namespace, cfg: Any = None) -> str:
    """The store a ``cache`` command works on: ``--store``, else the config's ``paths.store``
    (``$REPRLAB_STORE`` when set, else ``<paths.outputs>/store``), exactly as ``reprlab run``
    finds it."""
    if args.store is not None:
        return str(args.store)
    if cfg is None:
        cfg = compose_config(getattr(args, "overrides", None) or [])
    return str(cfg.paths.store)


def _store(args: argparse.Namespace) -> Any:
    from reprlab.io.store import ArtifactStore

    return ArtifactStore(store_root(args))


def _adversary_text(recipe: dict[str, Any]) -> str | None:
    """A stored recipe's training adversary as text (None for artifacts that are not models)."""
    if not recipe:
        return None
    adversary = recipe.get("adversary")
    if not adversary:
        return "standard"
    return f"{adversary['norm']} {adversary['eps']:.4g} x{adversary['steps']}"


def cache_ls(args: argparse.Namespace) -> int:
    import pandas as pd

    from reprlab.io.report import print_table

    store = _store(args)
    rows = []
    for key, meta, status in store.entries():
        meta = meta or {}
        recipe = meta.get("recipe") or {}
        final = meta.get("final") or {}
        rows.append(
            {
                "key": key,
                "kind": meta.get("kind", "?"),
                "status": status,
                "name": recipe.get("name", meta.get("label")),
                "arch": recipe.get("arch"),
                "dataset": meta.get("dataset"),
                "adversary": _adversary_text(recipe),
                "epochs": meta.get("epochs_trained"),
                "clean_acc": final.get("eval_clean_acc", _import_accuracy(meta)),
                "pgd_acc": next((v for k, v in final.items() if k.startswith("eval_pgd")), None),
                "source": meta.get("source", "trained" if meta else None),
            }
        )
    if not rows:
        print(f"the store {store.root} is empty")
        return 0
    print_table(pd.DataFrame(rows))
    return 0


def _import_accuracy(meta: dict[str, Any]) -> float | None:
    check = meta.get("import_check") or {}
    return check.get("clean_acc")


def cache_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    for name in args.entries:
        keys = store.resolve(name)
        if not keys:
            raise ReprlabError(f"no store entry matches '{name}'; see `reprlab cache ls`")
        for key in keys:
            store.remove(key)
            print(f"removed {key}")
    return 0


def cache_gc(args: argparse.Namespace) -> int:
    removed = _store(args).garbage_collect()
    print(
        f"removed {len(removed)} incomplete entr{'y' if len(removed) == 1 else 'ies'}"
        + (f": {', '.join(removed)}" if removed else "")
    )
    return 0


def cache_verify(args: argparse.Namespace) -> int:
    """``reprlab cache verify``: check every complete entry's files against their sha256 and its
    weights for NaN/inf; one line per bad entry, exit 1 if any."""
    store = _store(args)
    results = store.verify_all()
    bad = [(key, problem) for key, problem in results if problem is not None]
    for _, problem in bad:
        print(problem)
    statuses = [status for _, _, status in store.entries()]
    unfinished = sum(status in ("incomplete", "training") for status in statuses)
    outdated = statuses.count("outdated")
    tail = f"; {unfinished} unfinished entries not checked" if unfinished else ""
    if outdated:
        tail += f"; {outdated} entries of an older reprlab are never used (`reprlab cache gc`)"
    print(
        f"verified {len(results)} entr{'y' if len(results) == 1 else 'ies'} in {store.root}: "
        + (f"{len(bad)} damaged" if bad else "all intact")
        + tail
    )
    return 1 if bad else 0


def cache_import(args: argparse.Namespace) -> int:
    from reprlab.run.importing import import_checkpoint

    if args.examples < 0:
        raise ReprlabError(f"--examples={args.examples} is invalid: it must be >= 0")
    cfg = compose_config(args.overrides)
    done = import_checkpoint(
        cfg,
        Path(args.checkpoint),
        args.format,
        store_root(args, cfg),
        force=args.force,
        examples=args.examples,
    )
    entry = done.entry
    print(
        f"imported {args.checkpoint} (sha256 {entry.meta['checkpoint_sha256'][:16]}) as "
        f"{entry.meta['recipe']['name']} on {entry.meta['dataset']} -> store entry {entry.key}"
    )
    print(f"key remapping: {'; '.join(done.notes)}")
    if done.clean_acc is None:
        print(f"clean accuracy not measured: {done.skipped}")
    else:
        print(
            f"clean accuracy {done.clean_acc:.4f} on {done.examples} {entry.meta['dataset']} "
            f"test images (seed {cfg.seed}; chance {done.chance:.4f})"
        )
    if done.near_chance:
        print(
            f"reprlab: warning: clean accuracy {done.clean_acc:.4f} is near chance "
            f"({done.chance:.4f}): the weights probably did not load as meant (wrong model=, "
            f"dataset= or --format?); check, then `reprlab cache rm {entry.key}`",
            file=sys.stderr,
        )
    return 0


# --- taps -------------------------------------------------------------------------------------


def format_taps(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Text table of :func:`reprlab.core.taps.describe_taps` rows: tap, kind, shape and marks."""
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in
              (("tap", "tap"), ("kind", "kind"), ("shape", "shape"))]  # fmt: skip
    lines = [f"{'tap':<{widths[0]}}  {'kind':<{widths[1]}}  {'shape':<{widths[2]}}  marks"]
    for row in rows:
        marks = " ".join(
            mark for mark, on in (("split", row["splittable"]),
                                  ("representation", row["representation"])) if on
        )  # fmt: skip
        lines.append(
            f"{row['tap']:<{widths[0]}}  {row['kind']:<{widths[1]}}  "
            f"{row['shape']:<{widths[2]}}  {marks}".rstrip()
        )
    return lines


def taps_command(args: argparse.Namespace) -> int:
    """``reprlab taps model=<recipe> [dataset=<name>] [ref=<recipe>]``: list every tap.

    Builds the untrained architecture for the dataset's input shape (no training, no files
    written, no dataset files needed) and prints its taps in forward order.
    """
    from hydra.errors import HydraException

    from reprlab.core.taps import describe_taps
    from reprlab.data import dataset_info
    from reprlab.run.config import dataset_spec, recipe
    from reprlab.run.context import build_for

    try:
        check_group_choices(args.overrides)
    except HydraException as err:
        raise ReprlabError(str(err).splitlines()[0]) from None
    cfg = compose_config(args.overrides)
    info = dataset_info(dataset_spec(cfg.get("dataset")).name)
    for where in ("model", "ref"):
        if cfg.get(where) is None:
            continue
        spec = recipe(cfg[where], where)
        model = build_for(spec, info)
        rows = describe_taps(model)
        blocks = sum(row["kind"] == "block" for row in rows)
        shape = "x".join(str(d) for d in model.input_shape)
        print(
            f"{where}={spec.name}: {spec.arch} on {info.name} (input {shape}), "
            f"{blocks} block taps, {len(rows) - blocks} layer taps, forward order"
        )
        print("\n".join(format_taps(rows)))
        print("split: front/back can cut there (block taps); shapes are per example.")
        print("Select taps with 'blocks', 'all' (the layer taps) or a list of names.\n")
    return 0


# --- report, download -------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    from reprlab.io.report import gather_runs, print_table, write_report

    root = Path(args.runs_dir)
    if root.exists() and not root.is_dir():
        raise ReprlabError(f"{root} is a file; `reprlab report` needs a run or sweep directory")
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        print(f"reprlab: warning: {message}", file=sys.stderr)

    table = gather_runs(root, warn=warn)
    if table.empty:
        unreadable = f" ({len(skipped)} unreadable, skipped)" if skipped else ""
        raise ReprlabError(
            f"no readable run.json under {root}{unreadable}; is it a runs directory?"
        )
    written = write_report(root, table, "report")
    print_table(table)
    print(f"\n{len(table)} runs -> {', '.join(str(p) for p in written)}")
    return 0


def download(args: argparse.Namespace) -> int:
    from reprlab.data import default_data_root
    from reprlab.data import download as fetch

    root = Path(args.root) if args.root else default_data_root()
    path = fetch(args.dataset, root)
    print(f"{args.dataset} is ready under {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprlab",
        description="Experiments on the representations of standard and robust networks.",
        epilog="`reprlab run --help` lists the config groups and their options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    commands.add_parser(
        "run",
        help="run an analysis: reprlab run [-m] analysis=cka model=resnet18_at ...",
        add_help=False,
    )

    cache = commands.add_parser("cache", help="manage the store of trained models and artifacts")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="action", required=True)
    store_help = "store directory (default: paths.store: $REPRLAB_STORE, else outputs/store)"
    ls = cache_commands.add_parser("ls", help="list stored entries with recipe and accuracy")
    ls.set_defaults(handler=cache_ls)
    rm = cache_commands.add_parser("rm", help="remove entries by key, key prefix or recipe name")
    rm.add_argument("entries", nargs="+")
    rm.set_defaults(handler=cache_rm)
    gc = cache_commands.add_parser(
        "gc", help="remove incomplete entries left by killed runs, and outdated ones"
    )
    gc.set_defaults(handler=cache_gc)
    verify = cache_commands.add_parser(
        "verify",
        help="check every entry's files against their sha256 (exit 1 if any is damaged)",
    )
    verify.set_defaults(handler=cache_verify)
    imp = cache_commands.add_parser(
        "import",
        help="import an external checkpoint as a recipe's weights",
        description="Example: reprlab cache import cifar_l2_0_5.pt model=resnet50_at_l2 "
        "dataset=cifar10 --format robustness. The model's clean accuracy on a seeded sample of "
        "test images is measured and printed before it is stored.",
    )
    imp.add_argument("checkpoint")
    imp.add_argument("overrides", nargs="*", help="config overrides naming model= and dataset=")
    imp.add_argument("--format", choices=["auto", "state_dict", "robustness"], default="auto")
    imp.add_argument(
        "--force", action="store_true", help="replace an entry that holds a trained model"
    )
    imp.add_argument(
        "--examples",
        type=int,
        default=1000,
        help="test images for the accuracy check (default 1000; 0 skips it)",
    )
    imp.set_defaults(handler=cache_import)
    for sub in (ls, rm, gc, verify, imp):
        sub.add_argument("--store", default=None, help=store_help)

    taps = commands.add_parser(
        "taps",
        help="list a model's taps: reprlab taps model=resnet18 dataset=cifar10",
        description="Print every tap (block and layer) of a recipe's architecture for a "
        "dataset's input shape, with activation shapes; marks the representation and the "
        "split points. Example: reprlab taps model=resnet18_at dataset=cifar10",
    )
    taps.add_argument("overrides", nargs="*", help="config overrides: model=, dataset=, ref=")
    taps.set_defaults(handler=taps_command)

    rep = commands.add_parser("report", help="gather many runs (a sweep) into one table")
    rep.add_argument("runs_dir", help="a sweep directory or any directory holding runs")
    rep.set_defaults(handler=report)

    dl = commands.add_parser("download", help="fetch a dataset into the data root")
    dl.add_argument("dataset")
    dl.add_argument("--root", help="data root (default: $REPRLAB_DATA or outputs/data)")
    dl.set_defaults(handler=download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reprlab`` console script and ``python -m reprlab``."""
    from reprlab.cli.execute import Interrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "run":
            return run_command(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except ReprlabError as err:
        if _debug():
            raise
        return fail(str(err))
    except (KeyboardInterrupt, Interrupted) as err:
        if _debug():
            raise
        interrupted = err if isinstance(err, Interrupted) else Interrupted.from_keyboard()
        print(f"reprlab: {interrupted.describe()}", file=sys.stderr)
        return interrupted.exit_code
