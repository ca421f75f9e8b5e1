"""Capturing activations at taps: clones survive in-place ops, fire-once is enforced."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from reprlab.errors import ReprlabError
from reprlab.models import Body, Classifier
from reprlab.taps import TapError, TapRecorder, capture, representation

MEAN, STD = (0.5,), (0.25,)


def _mlp_classifier() -> Classifier:
    """1x2x2 images -> Linear(4, 6) -> in-place ReLU -> Linear(6, 3); seeded weights.

    The ``hidden`` tap's output tensor is overwritten by the in-place ReLU right after it fires.
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1),
            hidden=nn.Linear(4, 6),
            act=nn.ReLU(inplace=True),
            out=nn.Linear(6, 3),
        )
    )
    body = Body(
        net=net, taps={"hidden": "hidden", "act": "act", "logits": "out"}, representation="act"
    )
    return Classifier("mlp", body, MEAN, STD).eval()


def _images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


def _manual_hidden(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The pre-ReLU hidden layer computed by hand from the weights: W ((x - 0.5) / 0.25) + b."""
    flat = ((x - MEAN[0]) / STD[0]).flatten(1)
    return flat @ model.net.hidden.weight.T + model.net.hidden.bias


class _ReusedReLU(nn.Module):
    """Calls one ReLU module twice per forward, as torchvision's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)
        self.never_called = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.fc2(self.relu(self.fc1(x.flatten(1))))))


def _reused_relu_classifier(taps: dict[str, str]) -> Classifier:
    return Classifier("reused", Body(_ReusedReLU(), taps, representation="logits"), MEAN, STD)


def test_capture_keeps_the_value_from_before_an_in_place_relu():
    model = _mlp_classifier()
    x = _images()
    with torch.no_grad():
        logits, activations = capture(model, x)
        expected_hidden = _manual_hidden(model, x)
    # Without negative pre-activations the in-place ReLU would change nothing and prove nothing.
    assert (expected_hidden < 0).any()
    torch.testing.assert_close(activations["hidden"], expected_hidden)
    torch.testing.assert_close(activations["act"], expected_hidden.clamp(min=0))
    torch.testing.assert_close(activations["logits"], logits)


def test_captured_tensors_are_detached_clones():
    model = _mlp_classifier()
    logits, activations = capture(model, _images().requires_grad_(True))
    assert all(not value.requires_grad for value in activations.values())
    activations["logits"].zero_()
    assert logits.abs().sum() > 0  # the returned logits do not share storage with the capture


def test_capture_subset_keeps_requested_taps_in_forward_order():
    model = _mlp_classifier()
    _, activations = capture(model, _images(), taps=["logits", "hidden"])
    assert list(activations) == ["logits", "hidden"]


def test_recorder_captures_each_forward_pass_separately():
    model = _mlp_classifier()
    first, second = _images(seed=1), _images(seed=2)
    with torch.no_grad(), TapRecorder(model, ["hidden"]) as recorder:
        _, from_first = recorder.forward(first)
        _, from_second = recorder.forward(second)
        expected_first, expected_second = (
            _manual_hidden(model, first),
            _manual_hidden(model, second),
        )
    torch.testing.assert_close(from_first["hidden"], expected_first)
    torch.testing.assert_close(from_second["hidden"], expected_second)


def test_hooks_are_removed_after_capture_even_on_error():
    model = _reused_relu_classifier({"relu": "relu", "logits": "out"})
    with pytest.raises(TapError):
        capture(model, _images())
    assert all(not module._forward_hooks for module in model.modules())
    capture(model, _images(), taps=["logits"])
    assert all(not module._forward_hooks for module in model.modules())


def test_module_called_twice_is_a_tap_error():
    model = _reused_relu_classifier({"relu": "relu", "logits": "out"})
    with pytest.raises(TapError, match="'relu': 2"):
        capture(model, _images())


def test_torchvision_basic_block_relu_cannot_be_a_tap():
    """torchvision's BasicBlock applies its one ``relu`` module twice per forward."""
    net = torchvision.models.resnet18(weights=None, num_classes=3)
    body = Body(
        net=net, taps={"block_relu": "layer1.0.relu", "logits": "fc"}, representation="logits"
    )
    model = Classifier("tv", body, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()
    with pytest.raises(TapError, match="'block_relu': 2"):
        capture(model, torch.rand(1, 3, 16, 16))


def test_tap_that_never_fires_is_a_tap_error():
    model = _reused_relu_classifier({"unused": "never_called", "logits": "out"})
    with pytest.raises(TapError, match="'unused': 0"):
        capture(model, _images())


def test_unknown_tap_name_lists_the_valid_ones():
    model = _mlp_classifier()
    with pytest.raises(ReprlabError, match=r"unknown tap.*layer9.*available: hidden, act, logits"):
        capture(model, _images(), taps=["layer9"])


def test_repeated_tap_name_is_a_user_error():
    with pytest.raises(ReprlabError, match="listed more than once"):
        TapRecorder(_mlp_classifier(), ["act", "act"])


def test_representation_has_the_exact_input_gradient():
    """d/dx of u . relu(W (x - m) / s + b) is W^T (u * [pre-activation > 0]) / s, per image."""
    model = _mlp_classifier()
    x = _images().requires_grad_(True)
    features = representation(model, x)
    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(3))
    (features * direction).sum().backward()
    with torch.no_grad():
        active = (_manual_hidden(model, x) > 0).float()
        expected = ((direction * active) @ model.net.hidden.weight / STD[0]).view_as(x)
        _, activations = capture(model, x)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(features.detach(), activations["act"])


def test_classifier_rejects_a_last_tap_other_than_logits():
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), out=nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="last tap must be 'logits'"):
        Classifier("bad", Body(net, {"out": "out"}, representation="out"), MEAN, STD)
