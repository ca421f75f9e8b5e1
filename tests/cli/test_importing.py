"""Importing external checkpoints: plain state_dicts and the robustness library's format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import FAST, run_reprlab

from reprlab.errors import ReprlabError
from reprlab.models import build_model
from reprlab.run.importing import classifier_state

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def trained_like(arch: str = "resnet18", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        arch, num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def robustness_checkpoint(model, mean, std) -> dict:
    """The layout of a `robustness` library checkpoint (Engstrom et al.)."""
    net = model.net.state_dict()
    state = {f"module.model.{k}": v for k, v in net.items()}
    state.update({f"module.attacker.model.{k}": v.clone() for k, v in net.items()})
    channels = len(mean)
    state["module.normalizer.new_mean"] = torch.tensor(mean).view(channels, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor(std).view(channels, 1, 1)
    state["module.attacker.normalize.new_mean"] = torch.tensor(mean).view(channels, 1, 1)
    state["module.attacker.normalize.new_std"] = torch.tensor(std).view(channels, 1, 1)
    return {
        "model": state,
        "epoch": 150,
        "nat_prec1": 90.8,
        "adv_prec1": 70.2,
        "optimizer": {},
        "schedule": None,
    }


def same_outputs(a, b) -> bool:
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


@pytest.mark.parametrize("wrap", ["ours", "bare", "module", "state_dict_key"])
def test_plain_state_dicts_import(wrap: str) -> None:
    source = trained_like()
    fresh = trained_like(seed=1)
    state = source.state_dict()
    if wrap == "bare":
        state = source.net.state_dict()  # keeps the dataset's normaliser
    elif wrap == "module":
        state = {f"module.{k}": v for k, v in source.net.state_dict().items()}
    elif wrap == "state_dict_key":
        state = {"state_dict": state, "epoch": 3}
    fresh.load_state_dict(classifier_state(state, fresh.state_dict()))
    assert same_outputs(source, fresh)


def test_robustness_checkpoint_imports_with_its_own_normaliser() -> None:
    source = trained_like()
    other_mean, other_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    checkpoint = robustness_checkpoint(source, other_mean, other_std)
    fresh = trained_like(seed=1)
    fresh.load_state_dict(classifier_state(checkpoint, fresh.state_dict(), "auto"))
    assert torch.allclose(fresh.normalize.mean.flatten(), torch.tensor(other_mean))
    assert torch.equal(fresh.net.conv1.weight, source.net.conv1.weight)
    source.normalize.mean.copy_(torch.tensor(other_mean).view(1, 3, 1, 1))
    source.normalize.std.copy_(torch.tensor(other_std).view(1, 3, 1, 1))
    assert same_outputs(source, fresh)


def test_checkpoint_of_another_architecture_is_refused() -> None:
    other = trained_like("preact_resnet18").state_dict()
    with pytest.raises(ReprlabError, match="does not fit"):
        classifier_state(other, trained_like().state_dict())
    with pytest.raises(ReprlabError, match="unknown checkpoint format"):
        classifier_state({}, trained_like().state_dict(), "onnx")


@pytest.mark.slow  # tens of seconds on the 2-core CPU; `make test-all` runs it
def test_cache_import_end_to_end(workdir: Path) -> None:
    torch.manual_seed(0)
    source = build_model(
        "cnn_small", num_classes=10, in_channels=1, image_size=16, mean=(0.5,), std=(0.25,)
    )
    path = workdir / "external.pt"
    net = source.net.state_dict()
    torch.save(
        {
            "model": {
                **{f"module.model.{k}": v for k, v in net.items()},
                "module.normalizer.new_mean": torch.tensor([0.5]).view(1, 1, 1),
                "module.normalizer.new_std": torch.tensor([0.25]).view(1, 1, 1),
            },
            "epoch": 7,
            "nat_prec1": 99.0,
        },
        path,
    )
    result = run_reprlab("cache", "import", str(path), *FAST, "--format", "robustness", cwd=workdir)
    assert result.returncode == 0, result.stderr
    listed = run_reprlab("cache", "ls", cwd=workdir)
    assert "imported" in listed.stdout and "cnn_small" in listed.stdout
    # An analysis of that recipe now uses the imported weights instead of training.
    run = run_reprlab(
        "run",
        *FAST,
        "analysis=evaluate",
        "analysis.examples=50",
        "analysis.eps=[0.05]",
        "attack.steps=2",
        cwd=workdir,
    )
    assert run.returncode == 0, run.stderr
    record = json.loads(next((workdir / "outputs" / "runs").rglob("run.json")).read_text())
    assert record["models"]["model"]["trained_now"] is False
    # run.json names the imported file by its hash, not only by the recipe's key.
    assert record["models"]["model"]["source"] == "imported"
    assert (
        record["models"]["model"]["checkpoint_sha256"]
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )

    broken = workdir / "broken.pt"
    broken.write_bytes(b"garbage")
    failed = run_reprlab(
        "cache", "import", str(broken), "model=cnn_small", "dataset=synthetic", cwd=workdir
    )
    assert failed.returncode == 2 and "cannot load" in failed.stderr
    assert "Traceback" not in failed.stderr


# --- no silent overwrite, the import's identity and its accuracy check ---------------------

IMPORT = ["model=cnn_small", "dataset=synthetic"]


def recipe_key() -> str:
    from reprlab.cli.run import compose_config
    from reprlab.io.store import store_key
    from reprlab.run.config import dataset_spec, recipe
    from reprlab.run.recipes import model_identity

    cfg = compose_config(IMPORT)
    return store_key(model_identity(recipe(cfg.model), dataset_spec(cfg.dataset)))


def synthetic_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        "cnn_small", num_classes=10, in_channels=1, image_size=16, mean=(0.5110,), std=(0.2360,)
    )


def test_import_never_silently_replaces_a_trained_model(tmp_path: Path, capsys) -> None:
    from reprlab.cli import app as cli
    from reprlab.io.store import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    key = recipe_key()

    def train(files):  # a trained entry: snapshots and metrics besides the weights
        weights = synthetic_model(1).state_dict()
        files.save_snapshot(1, weights)
        files.write_metrics([{"epoch": 1, "eval_clean_acc": 0.9}])
        return weights, {"final": {"eval_clean_acc": 0.9}}

    entry, _ = store.obtain(key, {"recipe": {"name": "cnn_small"}}, train)
    trained_bytes = entry.payload_path.read_bytes()
    path = tmp_path / "other.pt"
    torch.save(synthetic_model(2).state_dict(), path)

    args = ["cache", "import", str(path), *IMPORT, "--store", str(store.root)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert (
        f"store entry {key} already holds a trained model (cnn_small)" in err and "--force" in err
    )
    assert entry.payload_path.read_bytes() == trained_bytes
    assert (entry.path / "snapshots" / "epoch_001.pt").exists() and entry.history()

    assert cli.main([*args, "--force"]) == 0
    replaced = store.get(key)
    assert replaced.meta["source"] == "imported" and not replaced.snapshot_epochs()


def test_import_records_the_files_hash_and_checks_accuracy(tmp_path: Path, capsys) -> None:
    """The imported file's sha256 is its identity; its clean accuracy on a seeded test sample is
    measured (checked here against an independent computation), printed with the key
    remapping, and a model at chance is flagged. The store is taken from paths.store."""
    import hashlib

    from reprlab.cli import app as cli
    from reprlab.core.attacks import robust_accuracy
    from reprlab.core.training_methods import TrainSettings, train_classifier
    from reprlab.data import make_loader
    from reprlab.io.store import ArtifactStore

    model = synthetic_model(0)
    loader = make_loader("synthetic", ".", "train", batch_size=100, train=True, seed=0)
    train_classifier(model, loader, TrainSettings(epochs=1, lr=2e-3, optimizer="adam"),
                     device=torch.device("cpu"), progress=False)  # fmt: skip
    path = tmp_path / "trained.pt"
    torch.save(robustness_checkpoint(model, (0.5110,), (0.2360,)), path)
    store_dir = tmp_path / "elsewhere"

    assert cli.main(["cache", "import", str(path), *IMPORT, f"paths.store={store_dir}"]) == 0
    out, err = capsys.readouterr()
    entry = ArtifactStore(store_dir).get(recipe_key())
    assert entry.meta["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    test = list(make_loader("synthetic", ".", "test", batch_size=500, train=False).epoch(0))
    expected = robust_accuracy(model.eval(), test, None, progress=False)
    assert expected > 0.5, "one epoch should learn the synthetic task"
    assert entry.meta["import_check"]["clean_acc"] == pytest.approx(expected, abs=1e-9)
    assert entry.meta["import_check"]["examples"] == 500
    assert f"clean accuracy {expected:.4f} on 500 synthetic test images" in out
    assert "module.model.* -> net.*" in out and "module.attacker.* (" in out
    assert "near chance" not in err

    untrained = tmp_path / "untrained.pt"
    torch.save(synthetic_model(3).state_dict(), untrained)
    args = ["cache", "import", str(untrained), *IMPORT, f"paths.store={store_dir}", "--force"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    acc = ArtifactStore(store_dir).get(recipe_key()).meta["import_check"]["clean_acc"]
    assert acc < 0.19 and "near chance" in err, (acc, err)


def test_non_finite_checkpoints_are_refused(tmp_path: Path, capsys) -> None:
    from reprlab.cli import app as cli

    state = synthetic_model(0).state_dict()
    state["net.fc2.weight"] = state["net.fc2.weight"].clone()
    state["net.fc2.weight"][0, 0] = float("inf")
    path = tmp_path / "inf.pt"
    torch.save(state, path)
    args = ["cache", "import", str(path), *IMPORT, "--store", str(tmp_path / "store")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "net.fc2.weight" in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "store").glob("*/COMPLETE"))
