"""RobustBench models by name, offline: checkpoints the test writes in the zoo's layout
(``<model_dir>/<dataset>/<threat>/<name>.pt``, ``{'state_dict': {'module.*'}}``, random weights and
BatchNorm statistics) are imported with ``reprlab cache import robustbench:<name>``; the stored
model's logits must equal those of the model RobustBench's own ``load_model`` builds from the same
file, with and without the package on the import path; ``analysis=cka`` then runs on it.
"""

from __future__ import annotations

import importlib.util
import json
import signal
from pathlib import Path

import pytest
import torch
from fake_data import fake_cifar, skip_torchvision_md5

from reprlab.cli.app import main
from reprlab.data import dataset_info
from reprlab.io.store import ArtifactStore
from reprlab.run import zoo
from reprlab.run.config import recipe_named
from reprlab.run.recipes import build_for

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None,
    reason="the robustbench package (reprlab[zoo]) is not installed",
)

MAX_DIFF = 1e-5  # the bar: the imported model's logits vs the package's own model's


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def package_model(dataset: str, threat: str, name: str) -> torch.nn.Module:
    """RobustBench's own architecture for ``name``, randomly initialised (seeded)."""
    assert zoo.robustbench_installed()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]()


def write_zoo_checkpoint(model_dir: Path, dataset: str, threat: str, name: str) -> Path:
    """The zoo's file for ``name``: random weights, BatchNorm statistics away from 0/1 (so eval
    mode is not the identity), keys ``module.``-prefixed under ``state_dict``."""
    model = package_model(dataset, threat, name)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=generator))
    path = model_dir / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def stored_model(store: Path, recipe: str) -> torch.nn.Module:
    """The reprlab model in store entry of ``recipe`` (the only entry of ``store``)."""
    spec = recipe_named(recipe)
    (key,) = [key for key, _, status in ArtifactStore(store).entries() if status == "complete"]
    model = build_for(spec, dataset_info("cifar10"))
    model.load_state_dict(ArtifactStore(store).get(key).load())
    return model.eval()


def package_logits(model_dir: Path, threat: str, name: str, images: torch.Tensor) -> torch.Tensor:
    assert zoo.robustbench_installed()
    from robustbench.utils import load_model

    model = load_model(name, model_dir=str(model_dir), dataset="cifar10", threat_model=threat)
    with torch.no_grad():
        return model.eval()(images)


def import_args(name: str, threat: str, model_dir: Path, outputs: Path, data: Path) -> list[str]:
    return [
        "cache", "import", f"robustbench:{name}", "dataset=cifar10", f"threat={threat}",
        f"paths.outputs={outputs}", f"paths.data={data}", "--model-dir", str(model_dir),
        "--examples", "16",
    ]  # fmt: skip


def check_import_and_cka(
    tmp_path: Path, monkeypatch, capsys, name: str, threat: str, recipe: str
) -> None:
    skip_torchvision_md5(monkeypatch)
    data = fake_cifar(tmp_path / "data")
    model_dir = tmp_path / "zoo"
    write_zoo_checkpoint(model_dir, "cifar10", threat, name)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = package_logits(model_dir, threat, name, images)
    assert expected.std() > 1e-3  # a model that maps everything alike would prove nothing

    # Through the robustbench package (installed here) ...
    outputs = tmp_path / "with_package"
    assert main(import_args(name, threat, model_dir, outputs, data)) == 0
    printed = capsys.readouterr().out
    assert "loaded by robustbench.utils.load_model" in printed and "clean accuracy" in printed
    with torch.no_grad():
        ours = stored_model(outputs / "store", recipe)(images)
    assert (ours - expected).abs().max() <= MAX_DIFF
    (meta,) = [m for _, m, _ in ArtifactStore(outputs / "store").entries()]
    assert meta["pretrained"]["name"] == name and meta["package_logit_max_abs_diff"] <= MAX_DIFF
    assert meta["import_check"]["examples"] == 16

    # ... and without it: reprlab reads the same file itself.
    monkeypatch.setattr(zoo, "robustbench_installed", lambda: False)
    offline = tmp_path / "without_package"
    assert main(import_args(name, threat, model_dir, offline, data)) == 0
    assert "package not installed" in capsys.readouterr().out
    with torch.no_grad():
        assert (stored_model(offline / "store", recipe)(images) - expected).abs().max() <= MAX_DIFF

    # The entry is a model= like any other: layer x layer CKA within it.
    monkeypatch.chdir(tmp_path)
    code = main(
        ["run", "analysis=cka", f"model={recipe}", "dataset=cifar10", f"paths.outputs={outputs}",
         f"paths.data={data}", "analysis.examples=16", "analysis.batch_size=16", "progress=false",
         "device=cpu"]
    )  # fmt: skip
    assert code == 0
    (summary,) = (outputs / "runs").rglob("cka.json")
    run = json.loads((summary.parent / "run.json").read_text())
    assert run["models"]["model"]["source"] == "imported"
    assert run["models"]["model"]["trained_now"] is False


@pytest.mark.slow  # about a minute on 2 idle cores (robustbench's import, two imports, a CKA run)
def test_preact_resnet18_from_the_zoo_equals_robustbenchs_model(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Rice et al. 2020's L2 PreAct ResNet-18, which normalises inside (mu/sigma buffers)."""
    check_import_and_cka(
        tmp_path, monkeypatch, capsys, "Rice2020Overfitting", "L2", "rb_Rice2020Overfitting_l2"
    )


@pytest.mark.slow
def test_wrn28_10_from_the_zoo_equals_robustbenchs_model(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Carmon et al. 2019's WRN-28-10: no normalisation, an unused ``sub_block1`` to drop."""
    check_import_and_cka(
        tmp_path, monkeypatch, capsys, "Carmon2019Unlabeled", "Linf", "rb_Carmon2019Unlabeled"
    )


@pytest.mark.parametrize(
    ("source", "overrides", "fragments"),
    [
        ("robustbench:NoSuch2099Model", ["threat=Linf"], ["unknown RobustBench model 'NoSuch2099"]),
        ("robustbench:Carmon2019Unlabeled", ["threat=L7"], ["no threat model 'L7'", "Linf"]),
        ("robustbench:Carmon2019Unlabeled", ["dataset=mnist"], ["no dataset 'mnist'", "cifar10"]),
        ("robustbench:Carmon2019Unlabeled", ["threat=L2"], ["for cifar10/L2", "cifar10/Linf"]),
        pytest.param(  # imports the robustbench package: seconds
            "robustbench:Wong2020Fast",
            [],
            ["RobustBench lists it", "no reprlab recipe"],
            marks=pytest.mark.slow,
        ),
        ("robustbench:Carmon2019Unlabeled", ["model=resnet18"], ["drop model="]),
        ("robustbench:", [], ["needs a model name"]),
        ("robustbench:Carmon2019Unlabeled", [], ["Carmon2019Unlabeled.pt not found"]),
    ],
)
def test_bad_zoo_imports_are_one_line_exit_2_nothing_written(
    tmp_path: Path, monkeypatch, capsys, source, overrides, fragments
) -> None:
    monkeypatch.chdir(tmp_path)
    package = "lists it" in fragments[0] and zoo.robustbench_installed()  # else: not installed
    monkeypatch.setattr(zoo, "robustbench_installed", lambda: package)
    code = main(["cache", "import", source, *overrides, "--model-dir", str(tmp_path / "none")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_zoo_recipe_is_never_trained(tmp_path: Path, monkeypatch, capsys) -> None:
    """model=rb_* before its import: the import command, not 200 epochs of training."""
    monkeypatch.chdir(tmp_path)
    skip_torchvision_md5(monkeypatch)
    data = fake_cifar(tmp_path / "data")
    code = main(
        ["run", "analysis=evaluate", "model=rb_Rice2020Overfitting_l2", "dataset=cifar10",
         f"paths.outputs={tmp_path / 'out'}", f"paths.data={data}", "progress=false"]
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert lines[-1].count("reprlab cache import robustbench:Rice2020Overfitting") == 1
    assert "threat=L2" in lines[-1]
    assert len(lines) == 1 and not (tmp_path / "out").exists()  # refused before any file


def test_every_zoo_recipe_is_found_by_its_zoo_name() -> None:
    recipes = zoo.zoo_recipes()
    assert len(recipes) >= 10
    for (dataset, threat, name), option in recipes.items():
        assert zoo.find_recipe(name, dataset, threat) == option
        spec = recipe_named(option)
        assert spec.pretrained is not None and spec.pretrained.name == name
        assert spec.dataset == dataset == spec.pretrained.dataset


@pytest.mark.slow
def test_every_zoo_recipe_names_its_zoo_entry_and_an_architecture_with_its_keys() -> None:
    """Each conf/model/rb_*.yaml: found by its zoo name, and RobustBench's architecture for that
    entry has exactly the state_dict keys and shapes of the recipe's reprlab architecture (the
    WRN-70-16 ones are checked with -m slow: 267M parameters each)."""
    from reprlab.models import build_model

    recipes = zoo.zoo_recipes()
    assert len(recipes) >= 10
    for (dataset, threat, name), option in recipes.items():
        assert zoo.find_recipe(name, dataset, threat) == option
        spec = recipe_named(option)
        assert spec.pretrained is not None and spec.dataset == dataset
        if "70_16" in spec.arch or spec.arch == "wrn34_10":
            continue
        theirs = package_model(dataset, threat, name)
        info = dataset_info(dataset)
        ours = build_model(
            spec.arch, num_classes=info.num_classes, in_channels=3, image_size=32,
            mean=spec.pretrained.mean, std=spec.pretrained.std,
        )  # fmt: skip
        their_keys = {
            zoo.zoo_key(spec.arch, k): tuple(v.shape)
            for k, v in theirs.state_dict().items()
            if k not in ("mu", "sigma") and not k.startswith("sub_block1.")
        }
        our_keys = {k[4:]: tuple(v.shape) for k, v in ours.state_dict().items() if k[:4] == "net."}
        assert their_keys == our_keys, option
        inside = zoo.package_normalisation(theirs)
        mean, std = inside if inside is not None else ([0.0] * 3, [1.0] * 3)
        torch.testing.assert_close(torch.tensor(spec.pretrained.mean), torch.tensor(mean))
        torch.testing.assert_close(torch.tensor(spec.pretrained.std), torch.tensor(std))
