"""``analysis=evaluate``: clean accuracy and PGD robust accuracy of one model at several radii."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from reprlab import plots
from reprlab.analyses import inputs
from reprlab.attacks import robust_accuracy
from reprlab.config import attack_spec, check_positive, check_radius, typed
from reprlab.context import RunContext
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.recipes import describe_adversary, make_attack

DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


@dataclass
class Settings:
    """``analysis=evaluate``: a seeded test sample and the radii to attack it at."""

    name: str
    examples: int | None  # None: the whole test split
    batch_size: int
    eps: Any  # None (fractions of attack.eps), one radius, or a list of radii


def radii(cfg: DictConfig, eps: Any) -> list[float]:
    """The radii to evaluate: ``eps`` or fractions of ``attack.eps``; always with 0 and
    ``attack.eps`` itself (the summary's robust accuracy)."""
    base = float(cfg.attack.eps)
    values = eps
    if values is None:
        values = [f * base for f in DEFAULT_FRACTIONS]
    elif isinstance(values, (int, float)):
        values = [values]
    return sorted({0.0, base, *(float(v) for v in values)})


def settings(cfg: DictConfig) -> Settings:
    s: Settings = typed(cfg.analysis, Settings, "analysis")
    if s.examples is not None:
        check_positive("analysis.examples", s.examples)
    check_positive("analysis.batch_size", s.batch_size)
    attack = attack_spec(cfg.attack)
    given = s.eps if isinstance(s.eps, list) else [s.eps] if s.eps is not None else []
    for value in given:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReprlabError(
                f"analysis.eps={s.eps} is invalid: give a radius or a list of radii, "
                "e.g. analysis.eps=[0.1,0.3]"
            )
        check_radius("analysis.eps", value, attack.norm, dataset_info(cfg.dataset.name))
    return s


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    loaded = ctx.model("model")
    source = inputs.sample(ctx, examples=s.examples, batch_size=s.batch_size, with_attack=False)
    batches = source.batches
    n = source.examples
    spec = attack_spec(cfg.attack)
    rows = []
    for eps in radii(cfg, s.eps):
        attack = make_attack(replace(spec, eps=eps)) if eps > 0 else None
        accuracy = robust_accuracy(
            loaded.model, batches, attack, generator=ctx.generator(), progress=ctx.progress
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
