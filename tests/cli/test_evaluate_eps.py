"""``analysis=evaluate`` attacks at the radii asked, and headlines one of them: the model's
training ε when it is among them, else the largest asked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import FAST, run_reprlab
from omegaconf import OmegaConf

from reprlab.analyses.evaluate import asked_radii, headline_radius, radii
from reprlab.run.config import recipe_named, register_resolvers

register_resolvers()


def cfg_with(attack_eps: float):
    return OmegaConf.create({"attack": {"eps": attack_eps}})


def test_radii_are_the_ones_asked_plus_clean() -> None:
    cfg = cfg_with(0.3)
    assert radii(cfg, [0.1]) == [0.0, 0.1]  # not attack.eps = 0.3
    assert radii(cfg, 0.2) == [0.0, 0.2]
    assert radii(cfg, None) == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3, 0.45])
    assert asked_radii(cfg, None) == [0.3] and asked_radii(cfg, [0.05, 0.2]) == [0.05, 0.2]


def test_the_headline_is_the_training_eps_else_attack_eps_else_the_largest_asked() -> None:
    robust = recipe_named("cnn_small_at")  # linf, trained at 0.2
    assert headline_radius([0.05, 0.2, 0.3], "linf", robust, 0.3) == (
        0.2,
        "the model's training eps",
    )
    assert headline_radius([0.05, 0.1], "linf", robust, 0.3) == (0.1, "the largest eps asked")
    assert headline_radius([0.2, 0.5], "l2", robust, 0.5) == (0.5, "attack.eps")  # other norm
    standard = recipe_named("cnn_small")  # a sweep's standard model: at the same attack.eps
    assert headline_radius([0.05, 0.2, 0.3], "linf", standard, 0.2) == (0.2, "attack.eps")
    assert headline_radius([0.2, 0.1], "linf", standard, 0.3) == (0.2, "the largest eps asked")


def test_evaluate_headlines_the_training_eps_among_the_radii_asked(tmp_path: Path) -> None:
    args = [o for o in FAST if not o.startswith("model=")]
    result = run_reprlab(
        "run", *args, "analysis=evaluate", "model=cnn_small_at", "attack.eps=0.3",
        "attack.steps=5", "analysis.eps=[0.05,0.2]", "analysis.examples=200", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "outputs" / "runs" / "evaluate").glob("*/*"))
    table = pd.read_csv(run / "accuracy.csv")
    assert table.eps.tolist() == pytest.approx([0.0, 0.05, 0.2])  # attack.eps=0.3 not attacked
    summary = json.loads((run / "run.json").read_text())["summary"]
    assert summary["eps"] == pytest.approx(0.2)
    assert summary["eps_rule"] == "the model's training eps"
    assert summary["train_eps"] == pytest.approx(0.2) and summary["train_norm"] == "linf"
    assert summary["robust_acc"] == pytest.approx(float(table.accuracy.iloc[2]))
    assert summary["robust_acc"] < summary["clean_acc"]  # the attack at 0.2 bites
    assert "robust accuracy" in result.stdout and "trained at linf ε=0.2" in result.stdout
