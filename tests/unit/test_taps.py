"""Taps on small hand-checkable models: stages, features, layer taps, the recorder, selection."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from torch import nn

from reprlab.core.representation import Representation
from reprlab.core.taps import TapRecorder, describe_taps
from reprlab.errors import ReprlabError
from reprlab.models import Body, Classifier, TapError, select_taps, sequential_stages

MEAN, STD = (0.5,), (0.25,)


def _mlp_classifier() -> Classifier:
    """1x2x2 images -> Linear(4, 6) -> in-place ReLU -> Linear(6, 3); seeded weights.

    The ``hidden`` stage's output tensor is overwritten by the in-place ReLU of the next stage.
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1),
            fc=nn.Linear(4, 6),
            relu=nn.ReLU(inplace=True),
            linear=nn.Linear(6, 3),
        )
    )
    stages = sequential_stages(net, {"hidden": "fc", "act": "relu", "logits": "linear"})
    return Classifier("mlp", Body(net, stages, representation="act"), MEAN, STD, image_size=2)


def _images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


def _manual_hidden(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The pre-ReLU hidden layer computed by hand from the weights: W ((x - 0.5) / 0.25) + b."""
    flat = ((x - MEAN[0]) / STD[0]).flatten(1)
    return flat @ model.net.fc.weight.T + model.net.fc.bias


class _Twice(nn.Module):
    """fc1 -> relu -> fc2 -> the same relu: one module called twice, as torchvision's blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.fc2(self.relu(self.fc1(x.flatten(1)))))


class _DataDependent(nn.Module):
    """Calls ``relu`` once on dark images (mean normalised pixel < 0) and twice on bright ones."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(x.flatten(1))
        return self.relu(h - 1.0) if x.mean() > 0 else h


def _reuse_classifier(block: nn.Module) -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(block=block, out=nn.Linear(4, 3)))
    stages = sequential_stages(net, {"block": "block", "logits": "out"})
    return Classifier("reuse", Body(net, stages, representation="block"), MEAN, STD, image_size=2)


# --- stages, front and back --------------------------------------------------------------------


def test_sequential_stages_cut_after_the_named_children():
    net = nn.Sequential(nn.Flatten(1), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    assert sequential_stages(net, {"h": "1", "a": "2", "logits": "3"}) == (
        ("h", ("0", "1")),
        ("a", ("2",)),
        ("logits", ("3",)),
    )
    with pytest.raises(ValueError, match="last cut"):
        sequential_stages(net, {"h": "1"})
    with pytest.raises(ValueError, match="not a later child"):
        sequential_stages(net, {"a": "2", "h": "1", "logits": "3"})


def test_classifier_rejects_a_last_stage_other_than_logits():
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), out=nn.Linear(4, 3)))
    body = Body(net, (("out", ("flatten", "out")),), representation="out")
    with pytest.raises(ValueError, match="last stage must be 'logits'"):
        Classifier("bad", body, MEAN, STD, image_size=2)


def test_front_and_back_split_the_forward_pass():
    model = _mlp_classifier().eval()
    x = _images()
    with torch.no_grad():
        hidden = model.front(x, "hidden")
        torch.testing.assert_close(hidden, _manual_hidden(model, x), rtol=0, atol=1e-6)
        assert torch.equal(model.back(hidden.clone(), "hidden"), model(x))
        logits = model.front(x, "logits")
        assert torch.equal(model.back(logits, "logits"), logits)  # nothing after the last stage
    assert model.input_shape == (1, 2, 2)


def test_front_refuses_a_layer_tap_naming_the_block_taps():
    model = _reuse_classifier(_Twice())
    assert "block.relu@1" in model.layer_taps
    with pytest.raises(ReprlabError, match=r"cannot be cut at 'block\.relu@1'.*block, logits"):
        model.front(_images(), "block.relu@1")


def test_deepcopy_runs_the_copied_modules_and_keeps_the_state_dict():
    model = _mlp_classifier().eval()
    twin = copy.deepcopy(model)
    assert list(twin.state_dict()) == list(model.state_dict())
    assert list(model.state_dict()) == [
        "normalize.mean",
        "normalize.std",
        "net.fc.weight",
        "net.fc.bias",
        "net.linear.weight",
        "net.linear.bias",
    ]
    x = _images()
    with torch.no_grad():
        before = model(x)
        twin.net.linear.bias.add_(1.0)
        torch.testing.assert_close(twin(x), before + 1.0)  # the copy runs its own modules
        assert torch.equal(model(x), before)  # and the original is untouched


# --- features ----------------------------------------------------------------------------------


def test_features_keep_the_value_from_before_an_in_place_relu():
    model = _mlp_classifier().eval()
    x = _images()
    with torch.no_grad():
        activations = model.features(x, ["hidden", "act", "logits"])
        expected_hidden = _manual_hidden(model, x)
        logits = model(x)
    # Without negative pre-activations the in-place ReLU would change nothing and prove nothing.
    assert (expected_hidden < 0).any()
    torch.testing.assert_close(activations["hidden"], expected_hidden)
    torch.testing.assert_close(activations["act"], expected_hidden.clamp(min=0))
    torch.testing.assert_close(activations["logits"], logits)


def test_features_are_detached_by_default_and_differentiable_on_request():
    model = _mlp_classifier().eval()
    x = _images().requires_grad_(True)
    detached = model.features(x, ["hidden", "logits"])
    assert all(not value.requires_grad for value in detached.values())
    kept = model.features(x, ["hidden", "logits"], detach=False)
    kept["hidden"].sum().backward()
    # d/dx of sum(W (x - m) / s + b) is (column sums of W) / s for every image.
    expected = (model.net.fc.weight.sum(0) / STD[0]).expand(5, 4).reshape_as(x)
    torch.testing.assert_close(x.grad, expected)


def test_features_come_in_forward_order_whatever_the_request_order():
    model = _reuse_classifier(_Twice())
    with torch.no_grad():
        activations = model.features(_images(), ["logits", "block.relu@2", "block.fc1"])
    assert list(activations) == ["block.fc1", "block.relu@2", "logits"]


def test_a_reused_module_gives_one_tap_per_call():
    model = _reuse_classifier(_Twice()).eval()
    x = _images()
    assert model.layer_taps == ("block.fc1", "block.relu@1", "block.fc2", "block.relu@2", "out")
    with torch.no_grad():
        got = model.features(x, ["block.relu@1", "block.relu@2", "block"])
        first = model.net.block.relu(model.net.block.fc1(model.normalize(x).flatten(1)))
        second = model.net.block.relu(model.net.block.fc2(first))
    torch.testing.assert_close(got["block.relu@1"], first)
    torch.testing.assert_close(got["block.relu@2"], second)
    torch.testing.assert_close(got["block"], second)
    assert not torch.equal(got["block.relu@1"], got["block.relu@2"])


def test_a_module_running_more_often_than_probed_is_a_tap_error():
    model = _reuse_classifier(_DataDependent())
    dark, bright = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    assert model.layer_taps == ("block.relu", "out")  # probed on zeros: one call
    model.features(dark, ["block.relu"])
    with pytest.raises(TapError, match=r"block\.relu ran 2x, expected 1"):
        model.features(bright, ["block.relu"])
    assert all(not module._forward_hooks for module in model.modules())
    with TapRecorder(model, ["block.relu"]) as recorder, pytest.raises(TapError):
        recorder.forward(bright)
    assert all(not module._forward_hooks for module in model.modules())


def test_layer_names_may_not_collide_with_stage_names():
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), hidden=nn.Linear(4, 6)))
    net.add_module("out", nn.Linear(6, 3))
    stages = (("out", ("flatten", "hidden")), ("logits", ("out",)))
    model = Classifier("clash", Body(net, stages, "out"), MEAN, STD, image_size=2)
    with pytest.raises(ValueError, match=r"layer tap name\(s\) \['out'\] equal stage names"):
        model.probe()


def test_probe_restores_modes_caches_and_leaves_no_hooks():
    model = _mlp_classifier().train()
    model.net.linear.eval()
    probe = model.probe()
    assert model.training and model.net.fc.training and not model.net.linear.training
    assert model.probe() is probe
    assert all(not module._forward_hooks for module in model.modules())
    assert [(t.name, t.kind, t.shape) for t in probe.taps] == [
        ("fc", "layer", (6,)),
        ("hidden", "block", (6,)),
        ("relu", "layer", (6,)),
        ("act", "block", (6,)),
        ("linear", "layer", (3,)),
        ("logits", "block", (3,)),
    ]


# --- selection ---------------------------------------------------------------------------------


def test_select_taps_blocks_all_and_lists():
    model = _reuse_classifier(_Twice())
    assert select_taps(model) == ("block", "logits")
    assert select_taps(model, "all") == model.layer_taps
    assert select_taps(model, ["out", "block", "block.fc1"]) == ("block.fc1", "block", "out")
    with pytest.raises(ReprlabError, match=r"unknown tap\(s\) fc9.*block, logits.*reprlab taps"):
        select_taps(model, ["block", "fc9"])
    with pytest.raises(ReprlabError, match="listed more than once"):
        select_taps(model, ["block", "block"])
    with pytest.raises(ReprlabError, match="'blocks', 'all' or a list"):
        select_taps(model, "block")


def test_reused_module_tap_names_survive_the_hydra_override_parser():
    (override,) = OverridesParser.create().parse_overrides(["analysis.taps=[layer1.0.relu@2]"])
    assert override.value() == ["layer1.0.relu@2"]


def test_describe_taps_marks_the_representation_and_the_split_points():
    rows = describe_taps(_mlp_classifier())
    assert [(r["tap"], r["kind"], r["shape"]) for r in rows][:2] == [
        ("fc", "layer", "6"),
        ("hidden", "block", "6"),
    ]
    assert [r["tap"] for r in rows if r["representation"]] == ["act"]
    assert [r["tap"] for r in rows if r["splittable"]] == ["hidden", "act", "logits"]


# --- recorder and representation --------------------------------------------------------------


def test_recorder_collects_in_forward_order_from_each_pass_separately():
    model = _reuse_classifier(_Twice()).eval()
    first, second = _images(seed=1), _images(seed=2)
    with torch.no_grad(), TapRecorder(model, ["logits", "block.relu@1"]) as recorder:
        logits, from_first = recorder.forward(first)
        _, from_second = recorder.forward(second)
        expected_first = model.features(first, ["block.relu@1"])["block.relu@1"]
        expected_second = model.features(second, ["block.relu@1"])["block.relu@1"]
    assert list(from_first) == ["block.relu@1", "logits"]
    torch.testing.assert_close(from_first["block.relu@1"], expected_first)
    torch.testing.assert_close(from_second["block.relu@1"], expected_second)
    torch.testing.assert_close(from_first["logits"], logits)
    from_first["logits"].zero_()
    assert logits.abs().sum() > 0  # the recorded tensor is a clone


def test_recorder_rejects_unknown_and_repeated_taps():
    model = _mlp_classifier()
    with pytest.raises(ReprlabError, match="unknown tap"):
        TapRecorder(model, ["layer9"])
    with pytest.raises(ReprlabError, match="listed more than once"):
        TapRecorder(model, ["act", "act"])


def test_representation_has_the_exact_input_gradient():
    """d/dx of u . relu(W (x - m) / s + b) is W^T (u * [pre-activation > 0]) / s, per image."""
    model = _mlp_classifier().eval()
    x = _images().requires_grad_(True)
    features = Representation(model, model.representation_tap)(x)
    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(3))
    (features * direction).sum().backward()
    with torch.no_grad():
        active = (_manual_hidden(model, x) > 0).float()
        expected = ((direction * active) @ model.net.fc.weight / STD[0]).view_as(x)
        activations = model.features(x, ["act"])
    assert expected.abs().sum() > 0
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(features.detach(), activations["act"])
