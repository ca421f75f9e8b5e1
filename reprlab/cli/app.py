"""The ``reprlab`` command: ``run`` (Hydra), ``cache``, ``taps``, ``report``, ``download``.

``reprlab run <args>`` hands ``<args>`` to Hydra unchanged (``-m`` sweeps, ``--cfg job``,
``--help`` and ``hydra.*`` overrides all work). Before Hydra starts, every job of the run is
composed and validated, so a mistake a user can make prints one line and exits non-zero before any
work starts or any directory is written. Heavy imports (torch) happen inside the commands, so
``reprlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reprlab.cli.cache import cache_gc, cache_import, cache_ls, cache_rm, cache_verify
from reprlab.cli.console import _debug, fail
from reprlab.cli.report import download, report
from reprlab.cli.run import run_command
from reprlab.cli.taps import taps_command
from reprlab.errors import ReprlabError


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
    ls = cache_commands.add_parser(
        "ls", help="list stored entries: recipe, threat, accuracy, joined models, size, date"
    )
    ls.add_argument("--kind", help="only entries of this kind: model, stitch, iri, ...")
    ls.set_defaults(handler=cache_ls)
    rm = cache_commands.add_parser("rm", help="remove entries by key, key prefix or recipe name")
    rm.add_argument("entries", nargs="*", help="keys, unique key prefixes or recipe names")
    rm.add_argument(
        "--yes", action="store_true", help="remove every entry a name matches (several allowed)"
    )
    rm.add_argument("--all", action="store_true", help="remove every entry of the store")
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
        "dataset=cifar10 --format robustness, or a RobustBench model by name: reprlab cache "
        "import robustbench:Carmon2019Unlabeled dataset=cifar10 threat=Linf. The model's clean "
        "accuracy on a seeded sample of test images is measured and printed before it is stored.",
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
    imp.add_argument(
        "--model-dir",
        default=None,
        help="robustbench:<name> only: RobustBench's model_dir, holding "
        "<dir>/<dataset>/<threat>/<name>.pt (default <paths.outputs>/robustbench)",
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

    rep = commands.add_parser(
        "report",
        help="gather many runs (a sweep) into one table, or an HTML report",
        description="Example: reprlab report outputs/runs/evaluate --columns run,model,'*acc*' "
        "--sort=-robust_acc --format md. --html writes PATH/report/index.html, a static site "
        "with every run's tables, figures, config and provenance.",
    )
    rep.add_argument("runs_dir", help="a sweep directory or any directory holding runs")
    rep.add_argument("--columns", help="comma-separated column names or patterns (eval_*)")
    rep.add_argument("--sort", help="comma-separated columns to sort by; -name sorts descending")
    rep.add_argument("--format", choices=["table", "csv", "md", "html"], default="table")
    rep.add_argument("--html", action="store_true", help="same as --format html")
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
