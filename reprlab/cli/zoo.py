"""``reprlab cache import robustbench:<name> dataset=<d> threat=<t>``: a RobustBench zoo model into
the store under its ``conf/model/rb_*`` recipe (see :mod:`reprlab.run.zoo`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprlab.cli.run import compose_config
from reprlab.errors import ReprlabError


def split_zoo_overrides(overrides: list[str]) -> tuple[str, str, list[str]]:
    """(dataset, threat, the other overrides) of a zoo import; RobustBench's defaults are
    cifar10 and Linf. ``model=`` is refused: the zoo name decides the recipe."""
    dataset, threat, rest = "cifar10", "Linf", []
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+") == "threat":
            threat = value
        elif key == "dataset":
            dataset = value
        elif key == "model":
            raise ReprlabError(
                f"{item}: a robustbench: import picks its recipe from the zoo name; drop model="
            )
        else:
            rest.append(item)
    return dataset, threat, rest


def import_from_zoo(
    args: argparse.Namespace, store_root: Callable[[argparse.Namespace, Any], str]
) -> tuple[Any, Any]:
    """Import the zoo model ``args.checkpoint`` names into the store ``store_root(args, cfg)``
    gives; (the composed config, the Imported)."""
    from dataclasses import asdict

    from reprlab.data import dataset_info
    from reprlab.run.config import recipe
    from reprlab.run.importing import import_checkpoint
    from reprlab.run.zoo import find_recipe, zoo_checkpoint, zoo_source

    name = zoo_source(args.checkpoint)
    assert name is not None
    dataset, threat, rest = split_zoo_overrides(list(args.overrides))
    option = find_recipe(name, dataset, threat)
    cfg = compose_config([f"model={option}", f"dataset={dataset}", *rest])
    spec = recipe(cfg.model)
    model_dir = Path(args.model_dir or Path(str(cfg.paths.outputs)) / "robustbench")
    path, state, notes, meta = zoo_checkpoint(spec, model_dir, dataset_info(dataset))
    assert spec.pretrained is not None
    done = import_checkpoint(
        cfg,
        path,
        "state_dict",
        store_root(args, cfg),
        force=args.force,
        examples=args.examples,
        checkpoint=state,
        extra_meta={"pretrained": asdict(spec.pretrained), **meta},
    )
    done.notes = notes + done.notes
    return cfg, done
