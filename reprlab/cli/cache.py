"""``reprlab cache``: list, remove, collect, verify and import the store's entries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reprlab.cli.run import compose_config
from reprlab.errors import ReprlabError


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
    from reprlab.run.zoo import zoo_source

    if args.examples < 0:
        raise ReprlabError(f"--examples={args.examples} is invalid: it must be >= 0")
    if zoo_source(args.checkpoint) is not None:
        from reprlab.cli.zoo import import_from_zoo

        cfg, done = import_from_zoo(args)
    else:
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
