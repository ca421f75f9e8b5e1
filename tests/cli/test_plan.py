"""Cost before commitment: the measured estimate, the overall ETA, and ``reprlab run --plan``."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import FAST, run_reprlab

from reprlab.core import fit as fit_module
from reprlab.core.fit import OverallEta, format_duration
from reprlab.data import dataset_info
from reprlab.run.config import DatasetSpec, recipe_named, register_resolvers
from reprlab.run.plan import (
    PassCost,
    TrainingCost,
    measure_pass,
    monitor_batches,
    passes_per_image,
    training_images,
)

register_resolvers()


def synthetic(train_limit: int | None = None) -> DatasetSpec:
    return DatasetSpec("synthetic", "", train_limit, eps_linf=0.1, eps_l2=1.0)


def test_passes_a_batch_follow_the_training_method() -> None:
    assert passes_per_image(recipe_named("cnn_small")) == 1
    assert passes_per_image(recipe_named("cnn_small_at")) == 1 + 3  # PGD-AT: 3 steps + update
    assert passes_per_image(recipe_named("resnet18_at")) == 1 + 10
    assert passes_per_image(recipe_named("cnn_small_trades")) == 2 + 3  # + the clean pass
    assert passes_per_image(recipe_named("cnn_mart")) == 2 + 40


def test_training_images_are_whole_batches_without_the_validation_split() -> None:
    small = recipe_named("cnn_small")  # batch 128, no validation split
    assert training_images(small, synthetic()) == (2000 // 128) * 128
    assert training_images(small, synthetic(train_limit=1000)) == 7 * 128
    cnn = recipe_named("cnn")  # batch 50, 1,000 validation images held out
    mnist = DatasetSpec("mnist", "", None, eps_linf=0.3, eps_l2=2.0)
    assert training_images(cnn, mnist) == 59_000
    assert monitor_batches(cnn, 1000, 500, 10) == (2 * 11, 500)  # the recipe's validation
    assert monitor_batches(small, 300, 500, 5) == (1 * 6, 300)  # the run's monitor


def test_training_cost_adds_up_batches_passes_epochs_and_the_monitor() -> None:
    cost = TrainingCost(
        name="r", threat="linf 0.1 x3", dataset="synthetic", images=1000, batch_size=100,
        epochs=2, passes=4, adversary_steps=3, monitor=(10, 50), device="cpu",
        pass_cost=PassCost(overhead=0.5, per_image=0.01),
    )  # fmt: skip
    # 2 epochs x (10 batches x 4 passes x (0.5 + 1.0) s + 10 monitor passes x (0.5 + 0.5) s)
    assert cost.seconds == pytest.approx(2 * (10 * 4 * 1.5 + 10 * 1.0))
    assert replace(cost, devices=2).seconds == pytest.approx(cost.seconds / 2)
    assert replace(cost, images=None).seconds is None
    assert "1,000 images x 2 epochs, 1 + 3 adversary passes a batch" in cost.what()
    assert cost.cost().startswith("about 2 min on cpu")


def test_a_measured_pass_is_positive_cached_and_leaves_the_global_rng_alone() -> None:
    spec = recipe_named("cnn_small")
    info = dataset_info("synthetic")
    state = torch.get_rng_state()
    cost = measure_pass(spec, info, torch.device("cpu"), 32)
    assert torch.equal(state, torch.get_rng_state())
    assert cost.per_image >= 0 and cost.overhead >= 0 and cost.seconds(32) > 0
    assert measure_pass(spec, info, torch.device("cpu"), 32) is cost


def test_overall_eta_extrapolates_the_first_batches_over_every_epoch(monkeypatch) -> None:
    clock = iter([100.0, 102.0, 104.0, 106.0, 106.0, 106.0, 106.0])
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: next(clock))
    eta = OverallEta(batches=300)  # e.g. 3 epochs of 100 batches
    assert [eta.step() for _ in range(3)] == [False, False, True]  # announced once, at batch 3
    assert eta.seconds_left() == pytest.approx(2.0 * 297)
    assert eta.describe().startswith("about 10 min for its 300 batches")
    assert not eta.step()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(40, "40 s"), (720, "12 min"), (3 * 3600 + 20 * 60, "3 h 20 min"), (4.2 * 86400, "4.2 days")],
)
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert format_duration(math.inf) == "?"


# --- reprlab run --plan ----------------------------------------------------------------------

TINY = [o for o in FAST if not o.startswith("model=")]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


@pytest.mark.slow
def test_plan_over_a_four_job_sweep_lists_trained_and_reused_models(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"REPRLAB_STORE": str(store)}
    trained = run_reprlab("run", *TINY, "model=cnn_small", "analysis=train", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    before = files_under(tmp_path)
    sweep = ["-m", *TINY, "analysis=evaluate", "model=cnn_small,cnn_small_at", "seed=0,1"]
    planned = run_reprlab("run", *sweep, "--plan", cwd=tmp_path, env=env)
    assert planned.returncode == 0, planned.stderr
    assert files_under(tmp_path) == before  # nothing run, nothing written
    out = planned.stdout
    jobs = out.split("\njob ")
    assert len(jobs) == 5 and "cnn_small,cnn_small_at" not in out  # header + 4 jobs
    assert "reuse" in jobs[1] and "reuse" in jobs[2]  # cnn_small, trained above, both seeds
    assert "  train " in jobs[3] and "cnn_small_at (linf 0.2 x3) on synthetic" in jobs[3]
    assert "about" in jobs[3] and "measured here now" in jobs[3]
    assert "trained by job 2" in jobs[4]
    assert "to train: 1 model, reused: 3" in out and "nothing was run or written" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["model=resnet19"], "unknown model 'resnet19'"),
        (["model.train.epochs=0"], "model.train.epochs=0 is invalid"),
        (["analysis=cka_panels", "ref=resnet18"], "meant for different datasets"),
    ],
)
def test_plan_with_a_bad_override_is_one_line(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    result = run_reprlab("run", *args, "--plan", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("reprlab: error: ") and fragment in lines[0]
    assert list(tmp_path.iterdir()) == []
