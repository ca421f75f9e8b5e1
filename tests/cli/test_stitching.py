"""Model stitching (Balogh & Jelasity 2023): the computation's science, and the runner end to end.

Computation on the synthetic dataset and the small CNN (untrained where exactness is the point,
briefly trained where accuracy is): an identity stitch reproduces the model exactly (clean and
PGD), the least-squares solution recovers a known affine map (independently, by NumPy) and
survives rank-deficient activations, training every point together follows each point's solo
trajectory, and a trained stitch beats a random one. The runner: its outputs, stored stitches
(a re-run trains nothing), and bad input refused before anything is written.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import FAST, run_reprlab

from reprlab.core.attacks import PGD, robust_accuracy
from reprlab.core.fit import FitSettings
from reprlab.core.training_methods import TrainSettings, train_classifier
from reprlab.data import TensorLoader, dataset_info, load_tensors
from reprlab.errors import ReprlabError
from reprlab.methods import stitching as st
from reprlab.models import build_model

CPU = torch.device("cpu")
INFO = dataset_info("synthetic")


def make(arch: str = "cnn_small", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        arch,
        num_classes=10,
        in_channels=INFO.channels,
        image_size=INFO.image_size,
        mean=INFO.mean,
        std=INFO.std,
    ).eval()


def tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_tensors("synthetic", "unused", split, limit=limit, seed=0)
    return x.float() / 255, y


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in model.probe().taps}


@pytest.fixture(scope="module")
def trained_pair():
    """Two cnn_small trained on synthetic from different seeds (≈95% test accuracy each)."""
    x, y = tensors("train")
    models = []
    for seed in (0, 1):
        model = make(seed=seed)
        loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=seed)
        settings = TrainSettings(
            epochs=6, optimizer="adam", lr=2e-3, weight_decay=0, schedule="constant", seed=seed
        )
        train_classifier(model, loader, settings, device=CPU, progress=False)
        models.append(model.eval())
    return models


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# --- exactness -----------------------------------------------------------------------------------


def test_identity_stitch_of_resnet18_with_itself_is_the_model_exactly():
    model = make("resnet18")
    x, _ = tensors("test", limit=8)
    sizes = shapes(model)
    for tap in model.block_taps:
        stitch = st.make_stitch(sizes[tap], sizes[tap], init="identity")
        stitched = st.StitchedModel(model, tap, stitch, model, tap).eval()
        with torch.no_grad():
            assert torch.equal(stitched(x), model(x)), tap


def test_identity_stitch_of_a_model_with_itself_has_its_clean_and_robust_accuracy():
    model = make("cnn_small")
    x, y = tensors("test", limit=48)
    attack = PGD(norm="linf", eps=0.1, step_size=0.03, steps=3, random_start=True)
    clean = robust_accuracy(model, [(x, y)], None, progress=False)
    robust = robust_accuracy(
        model, [(x, y)], attack, generator=torch.Generator().manual_seed(5), progress=False
    )
    sizes = shapes(model)
    for tap in model.block_taps:
        stitch = st.make_stitch(sizes[tap], sizes[tap], init="identity")
        stitched = st.StitchedModel(model, tap, stitch, model, tap).eval()
        with torch.no_grad():
            assert torch.equal(stitched(x), model(x)), tap
        assert robust_accuracy(stitched, [(x, y)], None, progress=False) == clean
        again = robust_accuracy(
            stitched, [(x, y)], attack, generator=torch.Generator().manual_seed(5), progress=False
        )
        assert again == robust, tap


def test_identity_init_refuses_different_widths():
    with pytest.raises(ReprlabError, match="equal widths"):
        st.make_stitch((8, 4, 4), (16, 4, 4), init="identity")
    with pytest.raises(ReprlabError, match="spatial size"):
        st.make_stitch((8, 4, 4), (8, 2, 2))


def test_least_squares_recovers_a_known_affine_map_like_numpy():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 6, generator=generator) * torch.tensor([1, 2, 3, 0.5, 1, 1e3])
    a[:, 4] = 2 * a[:, 0] - a[:, 1]  # rank-deficient: a collinear column
    a[:, 2] = 7.0  # and a constant one
    weight = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    bias = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b = a.double() @ weight.T + bias
    acc = st.MomentAccumulator()
    for rows in range(0, 4000, 700):  # streamed in uneven chunks
        acc.update(a[rows : rows + 700], b[rows : rows + 700].float())
    solution = st.solve_affine(acc, ridge=0.0)
    design = np.hstack([a.double().numpy(), np.ones((4000, 1))])
    reference = np.linalg.lstsq(design, b.numpy(), rcond=None)[0]
    fitted = a.double() @ solution["weight"].double().T + solution["bias"].double()
    np.testing.assert_allclose(fitted.numpy(), design @ reference, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(fitted.numpy(), b.numpy(), rtol=1e-4, atol=2e-3)
    assert float(solution["r2"]) > 0.99999


def test_least_squares_of_a_model_with_itself_is_near_identity_and_its_accuracy():
    model = make()
    x, y = tensors("train", limit=512)
    points = [st.StitchPoint(t, t, t) for t in model.block_taps]
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]
    solutions = st.least_squares(model, model, points, batches)
    test_x, _ = tensors("test")
    sizes = shapes(model)
    base = model(test_x).argmax(1)
    for p in points:
        assert float(solutions[p.name]["r2"]) > 0.999, p.name
        stitch = st.make_stitch(
            sizes[p.front_tap], sizes[p.end_tap], init="least_squares", solution=solutions[p.name]
        )
        stitched = st.StitchedModel(model, p.front_tap, stitch, model, p.end_tap).eval()
        with torch.no_grad():
            agreement = float((stitched(test_x).argmax(1) == base).float().mean())
        assert agreement >= 0.995, p.name


# --- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "frozen_bn"), [("conv", "eval"), ("bn_conv_bn", "train")])
def test_training_all_points_at_once_equals_training_each_alone(kind, frozen_bn):
    front, end = make("resnet18", 0), make("resnet18", 1)
    x, y = tensors("train", limit=64)
    loader = TensorLoader(x, y, batch_size=32, shuffle=True, seed=0)
    points = [st.StitchPoint(t, t, t) for t in ("stem", "layer2.0", "pool")]
    sizes = shapes(front)
    stitches = {
        p.name: st.make_stitch(
            sizes[p.front_tap], sizes[p.end_tap], kind=kind, seed=st.point_seed(0, p.name)
        )
        for p in points
    }
    alone = copy.deepcopy(stitches)
    before = copy.deepcopy(end.state_dict())
    settings = FitSettings(epochs=1, optimizer="adam", lr=1e-3, weight_decay=1e-4)
    together = st.train_stitches(
        front, end, points, stitches, loader, settings, device=CPU, frozen_bn=frozen_bn,
        progress=False,
    )  # fmt: skip
    for p in points:
        solo = st.train_stitches(
            front, end, [p], {p.name: alone[p.name]}, loader, settings, device=CPU,
            frozen_bn=frozen_bn, progress=False,
        )  # fmt: skip
        for key, value in stitches[p.name].state_dict().items():
            torch.testing.assert_close(value, alone[p.name].state_dict()[key], rtol=1e-5, atol=1e-6)
        for key, value in solo.end_bn[p.name].items():
            torch.testing.assert_close(together.end_bn[p.name][key], value)
        if frozen_bn == "train" and p.name != "pool":  # after pool: no BatchNorm
            assert solo.end_bn[p.name], "BatchNorm statistics were re-estimated"
    assert all(torch.equal(v, end.state_dict()[k]) for k, v in before.items()), "donor changed"


def test_robust_stitch_training_at_once_equals_each_alone():
    front, end = make("cnn_small", 0), make("cnn_small", 1)
    x, y = tensors("train", limit=64)
    loader = TensorLoader(x, y, batch_size=32, shuffle=True, seed=0)
    points = [st.StitchPoint(t, t, t) for t in front.block_taps]
    sizes = shapes(front)
    stitches = {p.name: st.make_stitch(sizes[p.name], sizes[p.name]) for p in points}
    alone = copy.deepcopy(stitches)
    adversary = PGD(norm="linf", eps=0.1, step_size=0.05, steps=2, random_start=True)
    settings = FitSettings(epochs=1, optimizer="adam", lr=1e-2, weight_decay=0)
    common = {"device": CPU, "adversary": adversary, "alpha": 0.5, "progress": False}
    st.train_stitches(front, end, points, stitches, loader, settings, **common)
    for p in points:
        st.train_stitches(front, end, [p], {p.name: alone[p.name]}, loader, settings, **common)
        for key, value in stitches[p.name].state_dict().items():
            torch.testing.assert_close(value, alone[p.name].state_dict()[key], rtol=1e-5, atol=1e-6)
        assert not torch.equal(stitches[p.name].weight, make_initial(sizes, p.name)), "it trained"


def make_initial(sizes, name):
    return st.make_stitch(sizes[name], sizes[name]).weight


def test_a_trained_stitch_beats_a_random_one_and_nears_the_end_model(trained_pair):
    front, end = trained_pair
    x, y = tensors("train")
    test_x, test_y = tensors("test")
    end_acc = accuracy(end, test_x, test_y)
    assert end_acc > 0.85
    sizes = shapes(front)
    points = [st.StitchPoint(t, t, t) for t in ("conv1", "conv2")]
    stitches = {
        p.name: st.make_stitch(sizes[p.name], sizes[p.name], seed=st.point_seed(0, p.name))
        for p in points
    }
    random = {n: copy.deepcopy(s) for n, s in stitches.items()}
    loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=0)
    settings = FitSettings(epochs=3, optimizer="adam", lr=1e-2, weight_decay=0, schedule="constant")
    st.train_stitches(front, end, points, stitches, loader, settings, device=CPU, progress=False)
    for p in points:
        trained_acc = accuracy(
            st.StitchedModel(front, p.name, stitches[p.name], end, p.name).eval(), test_x, test_y
        )
        random_acc = accuracy(
            st.StitchedModel(front, p.name, random[p.name], end, p.name).eval(), test_x, test_y
        )
        assert trained_acc >= 0.95 * end_acc, (p.name, trained_acc, end_acc)
        assert trained_acc > random_acc + 0.2, (p.name, trained_acc, random_acc)


def test_alpha_outside_unit_interval_is_refused():
    front = make()
    with pytest.raises(ReprlabError, match=r"\[0, 1\]"):
        st.train_stitches(
            front, front, [], {}, [], FitSettings(epochs=1), device=CPU, alpha=1.5, progress=False
        )


# --- the runner ----------------------------------------------------------------------------------

RUN = [
    *FAST,
    "analysis=stitching",
    "ref=cnn_small",
    "ref.train.epochs=1",
    "ref.snapshot_epochs=[1]",
    "analysis.epochs=1",
    "analysis.batch_size=64",
    "analysis.train_examples=512",
    "analysis.ls_examples=256",
    "analysis.examples=200",
    "attack.steps=2",
]


def test_stitching_run_writes_the_table_and_figure_and_reuses_its_stitches(tmp_path):
    first = run_reprlab("run", *RUN, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs" / "stitching").glob("*/*")
    for name in ("stitching.csv", "stitching.png", "stitching.json", "run.json"):
        assert (run_dir / name).is_file(), name
    import pandas as pd

    table = pd.read_csv(run_dir / "stitching.csv")
    assert list(table.point) == ["conv1", "conv2", "fc1", "logits"]
    columns = ["clean_acc", "robust_acc", "relative_acc", "penalty", "agreement", "cka"]
    columns += ["ls_clean_acc", "ls_robust_acc", "front_clean_acc", "end_robust_acc"]
    assert set(columns) <= set(table.columns)
    # The model stitched with itself: least squares is (nearly) the identity.
    assert (table.ls_relative_acc > 0.97).all(), table.ls_relative_acc.tolist()
    np.testing.assert_allclose(
        table.penalty, 100 * (table.clean_acc - table.end_clean_acc), atol=1e-9
    )
    record = json.loads((run_dir / "run.json").read_text())
    stitches = [v for k, v in record["artifacts"].items() if k.startswith("stitch ")]
    assert len(stitches) == 4 and all(s["produced_now"] for s in stitches)

    second = run_reprlab("run", *RUN, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training 4 stitches" not in second.stderr + second.stdout
    latest = max((tmp_path / "outputs" / "runs" / "stitching").glob("*/*"))
    record = json.loads((latest / "run.json").read_text())
    assert not any(a["produced_now"] for a in record["artifacts"].values())
    again = pd.read_csv(latest / "stitching.csv")
    np.testing.assert_allclose(again.clean_acc, table.clean_acc)


BAD = [
    ("analysis.pairs=[[conv1,fc1]]", "cannot stitch model's conv1 to ref's fc1"),
    ("analysis.taps=[conv1,nowhere]", "cannot be cut at 'nowhere'"),
    ("analysis.alpha=1.5", "analysis.alpha=1.5 is invalid"),
    ("analysis.init=identity", "identity needs equal widths"),
    ("analysis.pairs=[3]", "give [front tap, end tap] pairs"),
    ("analysis.train_examples=10", "analysis.batch_size=128"),
]


@pytest.mark.parametrize(("override", "message"), BAD)
def test_bad_stitching_input_is_refused_in_one_line_before_anything_is_written(
    tmp_path, monkeypatch, override, message
):
    from reprlab.cli.run import preflight

    args = [*FAST, "analysis=stitching", "ref=cnn_small", override]
    if override == "analysis.init=identity":
        args.append("analysis.pairs=[[fc1,logits]]")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReprlabError) as caught:
        preflight(args, multirun=False)
    assert "\n" not in str(caught.value) and message in str(caught.value), str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_stitching_input_exits_2_as_a_process(tmp_path):
    override, message = BAD[0]
    args = [*FAST, "analysis=stitching", "ref=cnn_small", override]
    result = run_reprlab("run", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("reprlab: error:") and message in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "pair",
    ["demo_std_rob", "demo_rob_std", "demo_fashion_rob", "cifar_std_rob", "cifar_rob_rob"],
)
def test_stitching_experiments_compose_and_validate(pair):
    from reprlab.analyses.stitching import settings, stitch_points
    from reprlab.cli.run import compose_config
    from reprlab.run.config import recipe, recipe_dataset

    experiment = "stitching_cifar10" if pair.startswith("cifar") else "stitching_demo"
    cfg = compose_config([f"experiment={experiment}", f"pair={pair}"])
    s = settings(cfg)
    front, end = recipe(cfg.model, "model"), recipe(cfg.ref, "ref")
    assert (front.dataset == "fashion_mnist") == (pair == "demo_fashion_rob")
    expected = "cifar10" if pair.startswith("cifar") else "mnist"
    assert recipe_dataset(end, _run_dataset(cfg)).name == cfg.dataset.name == expected
    if pair == "cifar_rob_rob":
        assert front.name == end.name == "resnet18_at" and (front.seed, end.seed) == (0, 1)
        points = stitch_points(s, make("resnet18"), make("resnet18"))
        assert [p.name for p in points][:2] == ["stem", "layer1.0"] and len(points) == 11


def _run_dataset(cfg):
    from reprlab.run.config import dataset_spec

    return dataset_spec(cfg.dataset)
