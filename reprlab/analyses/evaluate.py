"""``analysis=evaluate``: clean accuracy and PGD robust accuracy of one model at several radii."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from reprlab import plots
from reprlab.attacks import robust_accuracy
from reprlab.config import attack_spec, check_non_negative, check_positive
from reprlab.context import RunContext, describe_adversary, make_attack
from reprlab.errors import ReprlabError

DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def radii(cfg: DictConfig) -> list[float]:
    """The radii to evaluate: ``analysis.eps`` or fractions of ``attack.eps``; always with 0 and
    ``attack.eps`` itself (the summary's robust accuracy)."""
    base = float(cfg.attack.eps)
    values = cfg.analysis.eps
    if values is None:
        values = [f * base for f in DEFAULT_FRACTIONS]
    elif isinstance(values, (int, float)):
        values = [values]
    radii = sorted({0.0, base, *(float(v) for v in values)})
    return radii


def validate(cfg: DictConfig) -> None:
    analysis = cfg.analysis
    if analysis.examples is not None:
        check_positive("analysis.examples", analysis.examples)
    check_positive("analysis.batch_size", analysis.batch_size)
    try:
        values = radii(cfg)
    except (TypeError, ValueError):
        raise ReprlabError(
            f"analysis.eps={analysis.eps} is invalid: give a list of radii, "
            "e.g. analysis.eps=[0.1,0.3]"
        ) from None
    for value in values:
        check_non_negative("analysis.eps", value)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    loaded = ctx.model("model")
    loader = ctx.test_loader(cfg.analysis.examples, int(cfg.analysis.batch_size))
    batches = list(loader.epoch(0))
    n = sum(len(y) for _, y in batches)
    spec = attack_spec(cfg.attack)
    rows = []
    for eps in radii(cfg):
        attack = make_attack(replace(spec, eps=eps)) if eps > 0 else None
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        accuracy = robust_accuracy(
            loaded.model, batches, attack, generator=generator, progress=ctx.progress
        )
        rows.append(
            {
                "eps": eps,
                "norm": spec.norm,
                "steps": spec.steps if eps > 0 else 0,
                "step_size": attack.step_size if attack else 0.0,
                "accuracy": accuracy,
                "examples": n,
            }
        )
    table = pd.DataFrame(rows)
    ctx.run.write_csv("accuracy", table)
    label = f"{loaded.label} ({describe_adversary(loaded.recipe)})"
    figure = plots.accuracy_vs_eps(
        {label: (table.eps.tolist(), table.accuracy.tolist())},
        title=f"{loaded.label} on {ctx.dataset.name}: PGD-{spec.steps} {spec.norm}, n={n}",
        xlabel=f"ε ({spec.norm}, pixel units)",
    )
    ctx.run.save_figure("accuracy_vs_eps", figure)
    print(f"\n{label} on {ctx.dataset.name}, {n} test images, PGD-{spec.steps} {spec.norm}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    at_attack_eps = table.loc[(table.eps - spec.eps).abs().idxmin()]
    return {
        "clean_acc": float(table.accuracy.iloc[0]),
        "robust_acc": float(at_attack_eps.accuracy),
        "eps": float(spec.eps),
        "norm": spec.norm,
        "steps": spec.steps,
        "examples": n,
    }
