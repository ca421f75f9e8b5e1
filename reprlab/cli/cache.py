"""``reprlab cache``: list, remove, collect, verify and import the store's entries."""

from __future__ import annotations

import argparse
import sys
import time
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


def cache_ls(args: argparse.Namespace) -> int:
    """``reprlab cache ls [--kind K]``: one row per entry, grouped by kind: what it is, its
    threat (models), accuracy, the models a derived artifact joins, size and date."""
    import pandas as pd

    from reprlab.io.tables import print_table

    store = _existing_store(args)
    entries = store.entries()
    names = {
        key: (meta.get("recipe") or {}).get("name") for key, meta, _ in entries if meta is not None
    }
    kinds = sorted({(meta or {}).get("kind", "?") for _, meta, _ in entries})
    if args.kind is not None and args.kind not in kinds:
        from reprlab.cli.guide import did_you_mean

        raise ReprlabError(
            f"no entries of kind '{args.kind}' in {store.root}"
            f"{did_you_mean(args.kind, kinds)} (kinds here: {', '.join(kinds) or 'none'})"
        )
    rows = []
    for key, meta, status in entries:
        meta = meta or {}
        if args.kind is not None and meta.get("kind", "?") != args.kind:
            continue
        rows.append(_entry_row(store.path(key), key, meta, status, names))
    if not rows:
        print(f"the store {store.root} is empty")
        return 0
    table = pd.DataFrame(rows).sort_values(["kind", "name", "date"], kind="stable")
    print_table(table.drop(columns="bytes").dropna(axis=1, how="all"), common=False, vertical=False)
    total = sum(row["bytes"] for row in rows)
    print(f"\n{len(rows)} entries, {_size_text(total)} in {store.root}")
    return 0


def _entry_row(
    path: Path, key: str, meta: dict[str, Any], status: str, names: dict[str, Any]
) -> dict[str, Any]:
    from reprlab.io.tables import threat_text

    recipe = meta.get("recipe") or {}
    final = meta.get("final") or {}
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    marker = path / "COMPLETE"
    when = (marker if marker.exists() else path).stat().st_mtime
    joined = [names[v] or v[:12] for v in _strings(meta.get("identity")) if v in names and v != key]
    return {
        "key": key,
        "kind": meta.get("kind", "?"),
        "status": status,
        "name": recipe.get("name", meta.get("label")),
        "dataset": meta.get("dataset"),
        "threat": threat_text(recipe.get("adversary")) if recipe else None,
        "joins": " + ".join(dict.fromkeys(joined)) or None,
        "epochs": meta.get("epochs_trained"),
        "clean_acc": final.get("eval_clean_acc", _import_accuracy(meta)),
        "pgd_acc": next((v for k, v in final.items() if k.startswith("eval_pgd")), None),
        "source": meta.get("source") if meta.get("kind") == "model" else None,
        "size": _size_text(size),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(when)),
        "bytes": size,
    }


def _strings(value: Any) -> list[str]:
    """Every string inside a (nested) identity, in order."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _import_accuracy(meta: dict[str, Any]) -> float | None:
    check = meta.get("import_check") or {}
    return check.get("clean_acc")


def cache_rm(args: argparse.Namespace) -> int:
    """``reprlab cache rm``: remove entries named by key, unique key prefix or recipe name.

    Nothing is removed unless every name is valid: an empty name, or one that matches several
    entries, is refused with the matches listed (``--yes`` removes all of a name's matches,
    ``--all`` the whole store)."""
    names = list(args.entries or [])
    if args.all and names:
        raise ReprlabError("give either entry names or --all, not both")
    if not args.all and not names:
        raise ReprlabError(
            "name the entries to remove (key, key prefix or recipe name; see `reprlab cache ls`), "
            "or pass --all to empty the store"
        )
    store = _existing_store(args)
    if args.all:
        keys = [key for key, _, _ in store.entries()]
    else:
        keys = []
        for name in names:
            keys += [key for key in _matches(store, name, several=args.yes) if key not in keys]
    for key in keys:
        store.remove(key)
        print(f"removed {key}")
    if args.all:
        print(f"removed {len(keys)} entr{'y' if len(keys) == 1 else 'ies'} from {store.root}")
    return 0


def _matches(store: Any, name: str, *, several: bool) -> list[str]:
    """The keys ``name`` selects; ReprlabError when it selects none, or several without
    ``several``."""
    if not name.strip():
        raise ReprlabError(
            f"cache rm {name!r}: an empty name matches every entry; name the entries, or pass "
            "--all to empty the store"
        )
    keys = store.resolve(name)
    if not keys:
        raise ReprlabError(f"no store entry matches '{name}'; see `reprlab cache ls`")
    if len(keys) > 1 and not several:
        shown = ", ".join(f"{key} ({_entry_name(store, key)})" for key in keys[:8])
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        raise ReprlabError(
            f"'{name}' matches {len(keys)} entries: {shown}{more}; give a longer key prefix, "
            "or pass --yes to remove them all"
        )
    return keys


def _entry_name(store: Any, key: str) -> str:
    for entry_key, meta, status in store.entries():
        if entry_key == key:
            label = (meta or {}).get("label") or ((meta or {}).get("recipe") or {}).get("name")
            return f"{label or (meta or {}).get('kind', '?')}, {status}"
    return "?"


def _existing_store(args: argparse.Namespace) -> Any:
    """The store a ``cache`` command reads; ReprlabError when there is none at its path (a
    mistyped ``--store`` or ``REPRLAB_STORE`` would otherwise read as an empty store)."""
    store = _store(args)
    if not store.root.exists():
        raise ReprlabError(
            f"there is no store at {store.root}: nothing was trained there yet, or --store / "
            "paths.store / REPRLAB_STORE points at the wrong place"
        )
    if not store.root.is_dir():
        raise ReprlabError(
            f"the store {store.root} is not a directory; point --store / paths.store / "
            "REPRLAB_STORE at a directory"
        )
    return store


def cache_gc(args: argparse.Namespace) -> int:
    removed = _existing_store(args).garbage_collect()
    print(
        f"removed {len(removed)} incomplete entr{'y' if len(removed) == 1 else 'ies'}"
        + (f": {', '.join(removed)}" if removed else "")
    )
    return 0


def cache_verify(args: argparse.Namespace) -> int:
    """``reprlab cache verify``: check every complete entry's files against their sha256 and its
    weights for NaN/inf, and that each entry sits under its own key; one line per bad entry,
    exit 1 if any."""
    store = _existing_store(args)
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

        cfg, done = import_from_zoo(args, store_root)
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
