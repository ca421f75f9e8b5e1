"""``analysis=evaluate``: clean and robust accuracy of one model at several radii, under one or
more attacks side by side (e.g. PGD and AutoAttack), with AutoAttack's per-stage accuracies,
the per-example worst case over the attacks, and sanity flags a reviewer checks first.

The radii are the ones asked (``analysis.eps``; null: fractions of ``attack.eps``). The summary's
``robust_acc`` is at a radius asked (``eps``; ``eps_rule`` says which): the model's training ε
when it is among them (same norm), else ``attack.eps`` when it is among them (every model of a
sweep at one radius), else the largest asked (``analysis.eps`` null: ``attack.eps``); a robust
model's training ε and norm stand beside it (``train_eps``, ``train_norm``).

Flags (named in the summary's ``flags``; ``sanity`` is ``ok`` without any):

- ``pgd_autoattack_disagree``: at some radius a PGD attack and an AutoAttack run differ by more
  than ``analysis.disagreement`` (default 5 points): PGD overstating robustness (or AutoAttack
  misconfigured);
- ``not_monotone_in_eps``: some attack's accuracy rises with ε (a weak or masked attack);
- ``zero_gradients``: more than ``analysis.zero_gradient_share`` of the clean inputs have an
  exactly-zero input gradient of the cross-entropy (gradient masking, or saturated softmax);
- ``autoattack_warnings``: the AutoAttack package's own checks warned (randomised or dynamic
  defence, Square beating the gradient attacks, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from reprlab.analyses import inputs, settings_once
from reprlab.core.attacks import correct_under
from reprlab.core.autoattack import AutoAttack
from reprlab.data import dataset_info
from reprlab.errors import ReprlabError
from reprlab.io import plots
from reprlab.io.tables import print_table, threat_text
from reprlab.run.config import (
    AttackSpec,
    AutoAttackSpec,
    ModelRecipe,
    attack_spec,
    check_non_negative,
    check_positive,
    check_radius,
    config_dir,
    group_options,
    typed,
)
from reprlab.run.context import RunContext
from reprlab.run.recipes import make_attack
from reprlab.runtime import module_mode

DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
RUN_ATTACK = "attack"
"""In ``analysis.attacks``, the run's own ``attack`` group (with its command-line overrides)."""


@dataclass
class Settings:
    """``analysis=evaluate``: a seeded test sample, the radii, and the attacks to compare."""

    name: str
    examples: int | None  # None: the whole test split
    batch_size: int
    eps: Any  # None (fractions of attack.eps), one radius, or a list of radii
    attacks: list[str] | None  # attack options side by side; None: see attack_specs
    disagreement: float  # flag PGD vs AutoAttack differences above this (fraction)
    zero_gradient_share: float  # flag more exactly-zero input gradients than this (fraction)


def asked_radii(cfg: DictConfig, eps: Any) -> list[float]:
    """The radii the user asked for: ``analysis.eps`` (one radius or a list), or, when it is
    null, the run's ``attack.eps``."""
    if eps is None:
        return [float(cfg.attack.eps)]
    return [float(v) for v in (eps if isinstance(eps, (list, tuple, ListConfig)) else [eps])]


def radii(cfg: DictConfig, eps: Any) -> list[float]:
    """The radii to evaluate: the ``analysis.eps`` asked, or, when it is null, fractions 0 ... 1.5
    of ``attack.eps``; always with 0 (clean accuracy)."""
    if eps is None:
        base = float(cfg.attack.eps)
        return sorted({0.0, *(f * base for f in DEFAULT_FRACTIONS)})
    return sorted({0.0, *asked_radii(cfg, eps)})


def headline_radius(
    asked: list[float], norm: str, spec: ModelRecipe, attack_eps: float | None = None
) -> tuple[float, str]:
    """(radius, rule) of the summary's ``robust_acc``, always one of the radii ``asked``: the
    model's training ε when the model is adversarially trained in ``norm`` and that ε was asked;
    else ``attack_eps`` (the run's ``attack.eps``) when it was asked, so every model of a sweep
    is headlined at the same radius; else the largest radius asked. ``rule`` names which."""

    def among(eps: float) -> float | None:
        return next((a for a in asked if math.isclose(a, eps, rel_tol=1e-6, abs_tol=1e-9)), None)

    a = spec.adversary
    if a is not None and a.norm == norm and among(a.eps) is not None:
        return among(a.eps), "the model's training eps"  # type: ignore[return-value]
    if attack_eps is not None and among(attack_eps) is not None:
        return among(attack_eps), "attack.eps"  # type: ignore[return-value]
    return max(asked), "the largest eps asked"


def attack_specs(cfg: DictConfig, names: list[str] | None) -> list[AttackSpec | AutoAttackSpec]:
    """The attacks to run side by side, each under the run's ``attack.norm``.

    ``names`` are options of the ``attack`` group (``pgd_linf``, ``autoattack``, ...) or
    ``attack`` for the run's own. None: the run's attack, preceded by the default PGD of its
    norm when it is not a PGD (so ``attack=autoattack`` reports PGD and AutoAttack side by side).
    """
    own = attack_spec(cfg.attack)
    if names is None:
        names = [RUN_ATTACK] if isinstance(own, AttackSpec) else [f"pgd_{own.norm}", RUN_ATTACK]
    options = group_options("attack")
    specs = []
    for name in names:
        if name == RUN_ATTACK:
            specs.append(own)
            continue
        if name not in options:
            raise ReprlabError(
                f"analysis.attacks has '{name}'; choose among {RUN_ATTACK}, {', '.join(options)}"
            )
        node = OmegaConf.load(config_dir() / "attack" / f"{name}.yaml")
        context = OmegaConf.create({"dataset": OmegaConf.to_container(cfg.dataset)})
        context.attack = node
        spec = attack_spec(context.attack, where=f"analysis.attacks[{name}]")
        if spec.norm != own.norm:
            raise ReprlabError(
                f"analysis.attacks has {name}, an {spec.norm} attack, but every attack runs at "
                f"attack.norm={own.norm}; drop it, or evaluate {spec.norm} with attack={name}"
            )
        specs.append(replace(spec, norm=own.norm, eps=own.eps))
    return specs


@settings_once
def settings(cfg: DictConfig) -> Settings:
    s: Settings = typed(cfg.analysis, Settings, "analysis")
    if s.examples is not None:
        check_positive("analysis.examples", s.examples)
    check_positive("analysis.batch_size", s.batch_size)
    check_non_negative("analysis.disagreement", s.disagreement)
    check_non_negative("analysis.zero_gradient_share", s.zero_gradient_share)
    attack = attack_spec(cfg.attack)
    given = s.eps if isinstance(s.eps, list) else [s.eps] if s.eps is not None else []
    if isinstance(s.eps, list) and not given:
        raise ReprlabError(
            "analysis.eps=[] names no radius: give one or a list, e.g. analysis.eps=[0.1] "
            "(or analysis.eps=null for fractions of attack.eps)"
        )
    for value in given:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReprlabError(
                f"analysis.eps={s.eps} is invalid: give a radius or a list of radii, "
                "e.g. analysis.eps=[0.1,0.3]"
            )
        check_radius("analysis.eps", value, attack.norm, dataset_info(cfg.dataset.name))
    if s.attacks is not None and not s.attacks:
        raise ReprlabError("analysis.attacks is empty; name at least one, e.g. [attack]")
    attack_specs(cfg, s.attacks)
    return s


def zero_gradient_share(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> float:
    """Fraction of examples whose input gradient of the cross-entropy is exactly zero (eval mode;
    gradients with respect to the inputs only)."""
    zero = total = 0
    with module_mode(model, mode="eval"), torch.enable_grad():
        for x, y in batches:
            x = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, x)
            zero += int((gradient.flatten(1).abs().amax(dim=1) == 0).sum())
            total += len(y)
    return zero / max(total, 1)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    s = settings(cfg)
    loaded = ctx.model("model")
    model = loaded.model
    source = inputs.sample(ctx, examples=s.examples, batch_size=s.batch_size, with_attack=False)
    batches = source.batches
    n = source.examples
    own = attack_spec(cfg.attack)
    specs = attack_specs(cfg, s.attacks)

    def build(spec: AttackSpec | AutoAttackSpec, eps: float) -> Any:
        return make_attack(
            replace(spec, eps=eps),
            seed=ctx.seed,
            progress=ctx.progress,
            num_classes=ctx.info.num_classes,
        )

    asked = asked_radii(cfg, s.eps)
    headline, rule = headline_radius(asked, own.norm, loaded.recipe, own.eps)
    at_headline = [build(spec, headline) for spec in specs]
    labels = _labels(at_headline)
    ctx.run.update(
        attacks={
            label: attack.settings() for label, attack in zip(labels, at_headline, strict=True)
        }
    )
    clean = correct_under(model, batches, None, progress=ctx.progress)
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    seconds: dict[str, float] = {}
    for eps in radii(cfg, s.eps):
        row: dict[str, Any] = {"eps": eps, "norm": own.norm, "examples": n}
        worst = clean.clone()
        if eps > 0:
            for label, spec in zip(labels, specs, strict=True):
                attack = build(spec, eps)
                started = time.perf_counter()
                if isinstance(attack, AutoAttack):
                    x = torch.cat([x for x, _ in batches])
                    y = torch.cat([y for _, y in batches])
                    result = attack.run(model, x, y, progress=ctx.progress)
                    correct = result.correct
                    if len(result.stages) > 1:
                        for stage, accuracy in result.stages.items():
                            row[f"{label}: {stage}"] = accuracy
                    warnings += [f"ε={eps:.4g}: {w}" for w in result.warnings]
                else:
                    correct = correct_under(
                        model, batches, attack, generator=ctx.generator(), progress=ctx.progress
                    )
                seconds[f"{label} ε={eps:.4g}"] = time.perf_counter() - started
                row[label] = float(correct.float().mean())
                worst &= correct
        else:
            for label in labels:
                row[label] = float(clean.float().mean())
        row["accuracy"] = float(worst.float().mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    columns = [
        "eps",
        "norm",
        "accuracy",
        *[c for c in table.columns if c not in ("eps", "norm", "accuracy", "examples")],
        "examples",
    ]
    table = table[columns]
    ctx.run.write_csv("accuracy", table)

    flags, details = _sanity(table, labels, specs, s, model, batches, warnings)
    summary_label = f"{loaded.label} · {threat_text(loaded.recipe.adversary)}"
    figure = plots.accuracy_vs_eps(
        {
            **{label: (table.eps.tolist(), table[label].tolist()) for label in labels},
            **(
                {"worst case": (table.eps.tolist(), table.accuracy.tolist())}
                if len(labels) > 1
                else {}
            ),
        },
        title=f"{summary_label} on {ctx.dataset.name}, n={n}",
        xlabel=f"ε ({own.norm}, pixel units)",
    )
    ctx.run.save_figure("accuracy_vs_eps", figure)
    shown = table.drop(columns=["norm", "examples"]).rename(columns={"accuracy": "worst case"})
    if len(labels) == 1:
        shown = shown.drop(columns=["worst case"])
    print_table(shown, title=f"{summary_label} on {ctx.dataset.name}, {n} test images, {own.norm}:")
    if flags:
        print("sanity flags: " + "; ".join(f"{k}: {details[k]}" for k in flags))

    at_eps = table.loc[(table.eps - headline).abs().idxmin()]
    trained = loaded.recipe.adversary
    trained_at = f"; trained at {trained.norm} ε={trained.eps:.4g}" if trained is not None else ""
    print(
        f"robust accuracy {float(at_eps.accuracy):.4f} at {own.norm} ε={headline:.4g} "
        f"({rule.replace(' eps', ' ε')}{trained_at})"
    )
    summary: dict[str, Any] = {
        "clean_acc": float(table.accuracy.iloc[0]),
        "robust_acc": float(at_eps.accuracy),
        "eps": float(headline),
        "eps_rule": rule,
        "norm": own.norm,
        "attacks": " + ".join(labels),
        "examples": n,
    }
    if trained is not None:  # a robust model: the radius it was trained at, beside the headline
        summary["train_eps"] = float(trained.eps)
        summary["train_norm"] = trained.norm
    if isinstance(own, AttackSpec):
        summary["steps"] = own.steps
    if len(labels) > 1:
        summary["robust_acc_by_attack"] = {label: float(at_eps[label]) for label in labels}
    stages = {c: float(at_eps[c]) for c in table.columns if ": " in c and pd.notna(at_eps[c])}
    if stages:
        summary["autoattack_stages"] = stages
    ctx.run.update(attack_seconds=seconds)  # timings: in run.json, not the (reproducible) summary
    summary["sanity"] = "ok" if not flags else ", ".join(flags)
    summary["flags"] = flags
    summary["flag_details"] = details
    return summary


def _labels(attacks: list[Any]) -> list[str]:
    """Column names of the attacks: their descriptions, numbered when two coincide."""
    names = [attack.describe() for attack in attacks]
    return [
        name if names.count(name) == 1 else f"{name} #{names[: i + 1].count(name)}"
        for i, name in enumerate(names)
    ]


def _sanity(
    table: pd.DataFrame,
    labels: list[str],
    specs: list[AttackSpec | AutoAttackSpec],
    s: Settings,
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    warnings: list[str],
) -> tuple[list[str], dict[str, Any]]:
    """The names of the raised flags, and the numbers behind every check."""
    flags: list[str] = []
    details: dict[str, Any] = {}
    pgd = [lab for lab, spec in zip(labels, specs, strict=True) if isinstance(spec, AttackSpec)]
    auto = [
        lab for lab, spec in zip(labels, specs, strict=True) if not isinstance(spec, AttackSpec)
    ]
    if pgd and auto:
        gap = max(
            abs(float(table[p].iloc[i]) - float(table[a].iloc[i]))
            for p in pgd
            for a in auto
            for i in range(len(table))
        )
        details["pgd_autoattack_disagree"] = f"largest gap {100 * gap:.1f} points"
        if gap > s.disagreement:
            flags.append("pgd_autoattack_disagree")
    rises = []
    for label in [*labels, "accuracy"]:
        values = table[label].tolist()
        for i in range(1, len(values)):
            if values[i] > values[i - 1]:
                rises.append(
                    f"{label} rises {values[i - 1]:.4f} -> {values[i]:.4f} at "
                    f"ε={table.eps.iloc[i]:.4g}"
                )
    details["not_monotone_in_eps"] = "; ".join(rises) or "none"
    if rises:
        flags.append("not_monotone_in_eps")
    share = zero_gradient_share(model, batches)
    details["zero_gradients"] = f"{100 * share:.1f}% of clean inputs"
    if share > s.zero_gradient_share:
        flags.append("zero_gradients")
    if warnings:
        details["autoattack_warnings"] = "; ".join(dict.fromkeys(warnings))
        flags.append("autoattack_warnings")
    return flags, details
