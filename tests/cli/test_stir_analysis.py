"""``analysis=stir`` end to end on tiny models and synthetic data: the outputs, one STIR value
recomputed from the stored X, X′ by an independent float64 CKA, reuse of the stored IRIs, the
model-set and per-layer forms, and the user mistakes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, run_reprlab
from reference_cka import minibatch_cka

from reprlab.cli.app import main
from reprlab.data import dataset_info
from reprlab.io.store import load_weights
from reprlab.models import build_model

SMALL = [
    "analysis=stir",
    "analysis.examples=40",
    "analysis.steps=8",
    "analysis.repeats=2",
    "analysis.batch_size=20",
    "analysis.grid_images=4",
]
PAIR = [
    *FAST,
    *SMALL,
    "ref=cnn_small",
    "ref.seed=1",
    "ref.train.epochs=1",
    "ref.snapshot_epochs=[1]",
]
TINY = "train: {epochs: 1}, snapshot_epochs: [1]"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory per module, so the store trains each tiny model once."""
    return tmp_path_factory.mktemp("stir")


def runs(workdir: Path) -> list[Path]:
    return sorted((workdir / "outputs" / "runs" / "stir").glob("*/*"))


def stored_model(workdir: Path, key: str):
    info = dataset_info("synthetic")
    meta = json.loads((workdir / "outputs" / "store" / key / "meta.json").read_text())
    model = build_model(
        meta["recipe"]["arch"],
        num_classes=info.num_classes,
        in_channels=info.channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )
    model.load_state_dict(load_weights(workdir / "outputs" / "store" / key / "artifact.pt"))
    return model.eval()


def test_pair_writes_both_directions_and_agrees_with_an_independent_cka(workdir: Path) -> None:
    result = run_reprlab("run", *PAIR, cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs(workdir)
    for name in ("stir.csv", "stir_values.csv", "stir.json", "stir.png", "stir_iris.png"):
        assert (run_dir / name).exists(), name
    record = json.loads((run_dir / "run.json").read_text())
    summary = record["summary"]
    a, b = summary["model"], summary["ref"]
    assert (a, b) == ("cnn_small seed 0", "cnn_small seed 1")
    for key in ("stir_ref_given_model", "stir_model_given_ref", "cka"):
        assert 0 <= summary[key]["mean"] <= 1 and summary[key]["std"] >= 0
    assert summary["cka"]["std"] == 0  # X is fixed; only the seeds change between repeats
    assert summary["seed_images_seeds"] == [0, 1]
    table = pd.read_csv(run_dir / "stir.csv", keep_default_na=False)
    assert set(table.quantity) >= {"stir", "cka", "seed_stir", "distance_median", "distance_p95"}
    values = pd.read_csv(run_dir / "stir_values.csv", keep_default_na=False)
    stir_values = values[values.quantity == "stir"]
    assert len(stir_values) == 2 * 2 * 2  # repeats x references x measured
    diagnostics = summary["diagnostics"]
    for label in (a, b):
        d = diagnostics[label]
        assert d["distance_median"]["mean"] < d["seed_distance_median"]["mean"]
        assert d["self_stir"]["mean"] > d["seed_stir"]["mean"]

    # STIR(ref | model) in repeat 1, recomputed from the stored X, X′ with NumPy float64 CKA.
    iris_key = record["artifacts"][f"iris_{a}_fc1_seed1"]["key"]
    payload = torch.load(
        workdir / "outputs" / "store" / iris_key / "artifact.pt", weights_only=True
    )
    ref = stored_model(workdir, record["models"]["ref"]["key"])
    with torch.no_grad():
        fx = ref.features(payload["x"], ["fc1"])["fc1"].double().numpy()
        fp = ref.features(payload["x_prime"], ["fc1"])["fc1"].double().numpy()
    expected = minibatch_cka([fx], [fp], unbiased=False)
    row = stir_values[(stir_values.reference == a) & (stir_values.measured == b)]
    reported = float(row[row.repeat == 1].value.iloc[0])
    assert abs(reported - expected) < 1e-6, (reported, expected)
    # The stored X is the run's sample, and the distances are those of the stored X′.
    model = stored_model(workdir, record["models"]["model"]["key"])
    with torch.no_grad():
        target = model.features(payload["x"], ["fc1"])["fc1"]
        reached = model.features(payload["x_prime"], ["fc1"])["fc1"]
    relative = (reached - target).norm(dim=1) / target.norm(dim=1)
    np.testing.assert_allclose(payload["distance"].numpy(), relative.numpy(), rtol=1e-4)


def test_a_second_run_reuses_every_stored_iri_and_gives_the_same_values(workdir: Path) -> None:
    before = runs(workdir)
    result = run_reprlab("run", *PAIR, cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = next(path for path in runs(workdir) if path not in before)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["artifacts"] and not any(
        entry["produced_now"] for entry in record["artifacts"].values()
    )
    assert not any(entry["trained_now"] for entry in record["models"].values())
    first = pd.read_csv(before[0] / "stir_values.csv", keep_default_na=False)
    again = pd.read_csv(run_dir / "stir_values.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(first, again)


def test_the_gradient_rule_is_recorded_and_keys_the_iris(workdir: Path) -> None:
    """Default: the authors' rule (fake_relu for cnn_small); fake_relu=false searches anew (its
    IRIs have other keys) and the run records which gradient each reference used."""
    first = runs(workdir)[0]
    before = set(runs(workdir))
    result = run_reprlab("run", *PAIR, "analysis.fake_relu=false", cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = next(path for path in runs(workdir) if path not in before)
    default, true_gradient = (json.loads((d / "run.json").read_text()) for d in (first, run_dir))
    assert set(default["summary"]["fake_relu"].values()) == {True}
    assert set(true_gradient["summary"]["fake_relu"].values()) == {False}
    new = true_gradient["artifacts"]
    assert new and all(entry["produced_now"] for entry in new.values())
    keys = {entry["key"] for entry in default["artifacts"].values()}
    assert keys.isdisjoint(entry["key"] for entry in new.values())
    assert "IRI search: true ReLU gradient" in result.stdout


def test_model_set_gives_stir_and_cka_matrices(workdir: Path) -> None:
    first, second = (
        f"{{recipe: cnn_small, {TINY}}}",
        f"{{recipe: cnn_small, seed: 1, {TINY}, name: other}}",
    )
    models = f"analysis.models=[{first},{second}]"
    result = run_reprlab("run", *FAST, *SMALL, models, cwd=workdir)
    assert result.returncode == 0, result.stderr
    run_dir = runs(workdir)[-1]
    record = json.loads((run_dir / "run.json").read_text())
    # The same recipes as the pair's model and ref: found in the store, and their IRIs reused.
    assert not any(entry["trained_now"] for entry in record["models"].values())
    assert not any(entry["produced_now"] for entry in record["artifacts"].values())
    stir = pd.read_csv(run_dir / "stir_matrix.csv", index_col=0)
    cka = pd.read_csv(run_dir / "cka_matrix.csv", index_col=0)
    assert list(stir.index) == list(stir.columns) == ["cnn_small", "other"]
    assert np.allclose(np.diag(cka.to_numpy()), 1.0)
    assert np.allclose(cka.to_numpy(), cka.to_numpy().T)
    pair = runs(workdir)[0]
    values = json.loads((pair / "run.json").read_text())["summary"]
    # STIR(other | cnn_small) is the pair's STIR(ref | model): the same models, IRIs and inputs.
    assert stir.loc["cnn_small", "other"] == pytest.approx(
        values["stir_ref_given_model"]["mean"], abs=1e-12
    )
    for name in ("stir_matrix_std.csv", "stir_matrix.png", "stir_iris.png", "stir.json"):
        assert (run_dir / name).exists(), name


def test_per_layer_mode_gives_stir_along_the_layers(workdir: Path) -> None:
    result = run_reprlab(
        "run", *PAIR, "analysis.layers=[conv2,fc1]", "analysis.repeats=1", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    run_dir = runs(workdir)[-1]
    table = pd.read_csv(run_dir / "stir_layers.csv")
    assert list(dict.fromkeys(table.tap)) == ["conv2", "fc1"]
    assert (run_dir / "stir_layers.png").exists()
    summary = json.loads((run_dir / "stir_layers.json").read_text())
    assert set(summary["layers"]) == {
        "STIR(cnn_small seed 1 | cnn_small seed 0)",
        "STIR(cnn_small seed 0 | cnn_small seed 1)",
        "CKA(cnn_small seed 0, cnn_small seed 1)",
    }
    # The fc1 row reuses the IRIs stored by the pair run (same model, tap, seeds, sample).
    record = json.loads((run_dir / "run.json").read_text())
    assert record["artifacts"]["iris_cnn_small seed 0_fc1_seed0"]["produced_now"] is False
    assert record["artifacts"]["iris_cnn_small seed 0_conv2_seed0"]["produced_now"] is True


@pytest.fixture
def keep_signal_handlers():
    """``reprlab run`` installs a SIGTERM handler; give the test process its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["analysis.tap=conv9"], "unknown tap(s) conv9"),
        (["analysis.ref_tap=fc9"], "unknown tap(s) fc9"),
        (["analysis.examples=3"], "analysis.examples=3 is invalid"),
        (["analysis.repeats=0"], "analysis.repeats=0 is invalid"),
        (["analysis.seed_kind=zeros"], "analysis.seed_kind='zeros' is invalid"),
        (["analysis.estimator=rbf"], "analysis.estimator='rbf' is invalid"),
        (["analysis.layers=[conv1,conv9]"], "analysis.layers"),
        (["analysis.models=[cnn_small,resnet19]"], "unknown model recipe 'resnet19'"),
        (["analysis.models=[cnn_small,cnn_small]"], "more than once"),
        (["analysis.models=[cnn_small]"], "at least two recipes"),
        (["analysis.layers=true"], "analysis.layers=True is invalid"),
        (["analysis.layers=[[]]"], "list tap names"),
        (
            ["analysis.models=[cnn_small,{recipe: cnn_small_at, adversary: {eps: 9}, name: x}]"],
            "analysis.models[1].adversary.eps=9.0 is invalid",
        ),
        ([], "add ref=<recipe>"),
        (["analysis.fake_relu=maybe"], "analysis.fake_relu='maybe' is invalid"),
    ],
)
def test_user_errors_print_one_line_and_write_nothing(
    tmp_path: Path, monkeypatch, capsys, keep_signal_handlers, args, fragment
) -> None:
    """In-process, as ``reprlab run`` from a shell: refused before Hydra starts (exit 2)."""
    base = PAIR if args else [*FAST, *SMALL]  # no ref at all: the pair form needs one
    monkeypatch.chdir(tmp_path)
    code = main(["run", *base, *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("reprlab: error: "), lines
    assert fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []
