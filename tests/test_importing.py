"""Importing external checkpoints: plain state_dicts and the robustness library's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import FAST, run_reprlab

from reprlab.errors import ReprlabError
from reprlab.importing import classifier_state
from reprlab.models import build_model

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
    state["module.normalizer.new_mean"] = torch.tensor(mean).view(3, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor(std).view(3, 1, 1)
    state["module.attacker.normalize.new_mean"] = torch.tensor(mean).view(3, 1, 1)
    state["module.attacker.normalize.new_std"] = torch.tensor(std).view(3, 1, 1)
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

    broken = workdir / "broken.pt"
    broken.write_bytes(b"garbage")
    failed = run_reprlab(
        "cache", "import", str(broken), "model=cnn_small", "dataset=synthetic", cwd=workdir
    )
    assert failed.returncode == 2 and "cannot load" in failed.stderr
    assert "Traceback" not in failed.stderr
