"""``wrap``: any nn.Module as a Classifier, checked against the module itself and hooks on it.

A torchvision ResNet-18 (random weights, CIFAR-sized input) is the main subject: its wrapped
logits and activations must equal the module's own (forward hooks as the independent reference),
its cuts must compose to the forward pass, and CKA, STIR, inversion and stitching must run on it
with known answers where one exists (reprlab's ``tv_resnet18`` loaded with the same weights is
the same network, so CKA between them is 1 and the least-squares stitch is the identity).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprlab.core.fit import FitSettings
from reprlab.data import TensorLoader
from reprlab.errors import ReprlabError
from reprlab.methods import inversion, stir
from reprlab.methods import stitching as st
from reprlab.methods.layerwise import layer_cka
from reprlab.models import build_model, wrap

torchvision = pytest.importorskip("torchvision")

SHAPE = (3, 32, 32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def wrapped(resnet):
    return wrap(resnet, input_shape=SHAPE, name="tv_resnet18_random")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def twin(resnet):
    """reprlab's own tv_resnet18 holding the torchvision module's weights: the same network."""
    model = build_model(
        "tv_resnet18", num_classes=10, in_channels=3, image_size=32, mean=[0.0] * 3, std=[1.0] * 3
    )
    model.net.load_state_dict(resnet.state_dict())
    return model.eval()


def hooked(module: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of submodules ``paths`` on ``x``, captured by plain forward hooks."""
    captured: dict[str, torch.Tensor] = {}

    def keep(path: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output stays the same
            captured[path] = output.detach().clone()  # before any later in-place op

        return hook

    handles = [module.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


# --- the wrapped model is the module -----------------------------------------------------------


def test_logits_equal_the_modules_own(wrapped, resnet, images):
    assert not wrapped.training  # the module's mode
    with torch.no_grad():
        assert torch.equal(wrapped(images), resnet(images))


def test_features_equal_a_forward_hooks_capture(wrapped, resnet, images):
    paths = ["layer1.0.conv1", "layer2.1", "layer3.0.bn2", "avgpool", "fc"]
    reference = hooked(resnet, images, paths)
    taps = ["layer1.0.conv1", "layer2.1", "layer3.0.bn2", "avgpool", "fc"]
    got = wrapped.features(images, taps)
    for path, tap in zip(paths, taps, strict=True):
        torch.testing.assert_close(got[tap], reference[path], rtol=0, atol=0)
    # The representation is the last Linear's input: torchvision's flattened pooled features.
    inputs = {}
    handle = resnet.fc.register_forward_pre_hook(lambda _m, args: inputs.update(fc=args[0]))
    with torch.no_grad():
        resnet(images)
    handle.remove()
    assert wrapped.representation_tap == "flatten"
    assert torch.equal(wrapped.features(images, ["flatten"])["flatten"], inputs["fc"])
    # A reused module's second call (BasicBlock's relu) is its own tap, as on reprlab's models.
    second = wrapped.features(images, ["layer1.0.relu@2"])["layer1.0.relu@2"]
    assert torch.equal(second, wrapped.features(images, ["layer1.0"])["layer1.0"])


def test_taps_match_reprlabs_own_torchvision_resnet(wrapped, twin):
    ours = [t for t in wrapped.layer_taps if t != "avgpool"]  # the twin pools in avgpool.0
    assert ours == [t for t in twin.layer_taps if t != "avgpool.0"]
    blocks = [t for t in wrapped.block_taps if "." in t and not t.endswith(".add")]
    assert blocks == [t for t in twin.block_taps if "." in t]  # layer1.0 ... layer4.1
    assert wrapped.block_taps[-1] == "logits"
    assert wrapped.input_shape == SHAPE
    assert wrapped.tap_shape("layer2.1") == twin.tap_shape("layer2.1") == (128, 4, 4)
    assert wrapped.tap_shape("flatten") == (512,)
    # The state_dict is the module's, under net.: a checkpoint for the module loads as is.
    assert set(wrapped.net.state_dict()) == set(twin.net.state_dict())


def test_front_back_and_between_compose_to_forward(wrapped, images):
    images = images[:2]
    with torch.no_grad():
        logits = wrapped(images)
        for tap in wrapped.block_taps:
            h = wrapped.front(images, tap)
            assert torch.equal(h, wrapped.features(images, [tap])[tap])
            assert torch.equal(wrapped.back(h, tap), logits), tap
        h = wrapped.front(images, "layer1.0")
        assert torch.equal(
            wrapped.between(h, "layer1.0", "layer3.1"), wrapped.front(images, "layer3.1")
        )


def test_a_tap_inside_a_residual_branch_is_refused_for_cutting_in_one_line(wrapped, images):
    with pytest.raises(ReprlabError) as caught:
        wrapped.front(images, "layer1.0.conv2")
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot be cut at 'layer1.0.conv2'" in message
    assert "maxpool still needed" in message  # the skip connection's input
    assert "layer1.0, layer1.1" in message  # the taps that can be cut
    # ... but it is a tap: its features are there (hooked, not cut).
    assert wrapped.features(images, ["layer1.0.conv2"])["layer1.0.conv2"].shape == (4, 64, 8, 8)


def test_normalize_is_applied_before_the_module(resnet, images):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    model = wrap(resnet, normalize=(mean, std), input_shape=SHAPE)
    expected = resnet(
        (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)


def test_input_shape_of_a_resnet_is_asked_for_in_one_line(resnet):
    with pytest.raises(ReprlabError, match=r"runs on several input sizes .* pass input_shape") as e:
        wrap(resnet)
    assert "\n" not in str(e.value)


def test_chosen_taps_and_their_names(resnet, images):
    # Module paths and torchvision node names; the cuttable ones (all here) are block taps.
    chosen = ("layer1", "layer2", "layer3.0.relu_1", "layer4.0.add")
    model = wrap(resnet, taps=chosen, input_shape=SHAPE)
    assert model.block_taps == (*chosen, "flatten", "logits")
    assert model.layer_taps == chosen
    reference = hooked(resnet, images, ["layer1.1", "layer2.1"])
    got = model.features(images, ["layer1", "layer2"])
    assert torch.equal(got["layer1"], reference["layer1.1"])
    assert torch.equal(got["layer2"], reference["layer2.1"])
    with pytest.raises(ReprlabError, match="unknown tap"):
        wrap(resnet, taps=["layer9"], input_shape=SHAPE)
    with pytest.raises(ReprlabError, match="same activation"):
        wrap(resnet, taps=["layer1", "layer1.1"], input_shape=SHAPE)


def test_a_copy_shares_parameters_and_owns_buffers(wrapped, images):
    twin = st.shared_copy(wrapped)
    assert twin.net.conv1.weight is wrapped.net.conv1.weight
    assert twin.net.bn1.running_mean is not wrapped.net.bn1.running_mean
    with torch.no_grad():
        assert torch.equal(twin(images), wrapped(images))


# --- the studies run on it -----------------------------------------------------------------------


def test_cka_against_the_same_network_is_one(wrapped, twin, images):
    taps = ["layer1.0", "layer2.1", "layer4.1"]
    result = layer_cka(
        wrapped, [images], taps_a=taps, model_b=twin, taps_b=taps, unbiased=False, progress=False
    )
    matrix = torch.as_tensor(result.matrix)
    torch.testing.assert_close(
        matrix.diagonal(), torch.ones(3, dtype=matrix.dtype), atol=1e-6, rtol=0
    )
    assert (matrix < 1 - 1e-3).sum() >= 4  # different layers are not identical
    within = torch.as_tensor(layer_cka(wrapped, [images], unbiased=False, progress=False).matrix)
    assert within.shape == (len(wrapped.block_taps),) * 2
    torch.testing.assert_close(within, within.T)


def test_stir_and_iris_on_the_representation(wrapped, images):
    tap = wrapped.representation_tap
    assert stir.stir(wrapped, tap, images, images) == pytest.approx(1.0, abs=1e-9)
    seeds = torch.rand(images.shape, generator=torch.Generator().manual_seed(2))
    iris = stir.find_iris(wrapped, tap, images, seeds, steps=5, step_size=0.5)
    assert (iris.distance <= iris.seed_distance).all()
    assert (iris.distance < iris.seed_distance).any(), "the optimiser moved towards the target"
    value = stir.stir(wrapped, tap, images, iris.x_prime)
    assert 0.0 < value <= 1.0 + 1e-9


def test_inversion_with_and_without_fake_relu(wrapped, images):
    seeds = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    for fake in (False, True):
        represent = inversion.Representation(wrapped, wrapped.representation_tap, fake_relu=fake)
        assert represent.dim == 512
        with torch.no_grad():
            torch.testing.assert_close(represent(images), represent.encode(images))
        before = inversion.relative_distance(represent.encode(seeds), represent.encode(images))
        result = inversion.invert(represent, images, seeds, steps=3, step_size=0.5)
        assert (result.value <= before + 1e-6).all() and (result.value < before).any()


def test_least_squares_stitch_to_the_same_network_is_the_identity(wrapped, twin, images):
    point = st.StitchPoint("layer2.1", "layer2.1", "layer2.1")
    x = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(4))
    batches = [(x, torch.zeros(64, dtype=torch.long))]
    solution = st.least_squares(wrapped, twin, [point], batches)["layer2.1"]
    assert float(solution["r2"]) == pytest.approx(1.0, abs=1e-6)
    active = solution["var_in"] > 1e-2  # a channel (almost) dead on these images is free
    assert active.sum() >= 64
    weight = solution["weight"][active][:, active]
    torch.testing.assert_close(weight, torch.eye(len(weight)), atol=1e-2, rtol=0)
    shape = wrapped.tap_shape("layer2.1")
    stitch = st.make_stitch(shape, shape, init="least_squares", solution=solution)
    stitched = st.StitchedModel(wrapped, "layer2.1", stitch, twin, "layer2.1").eval()
    with torch.no_grad():
        torch.testing.assert_close(stitched(images), twin(images), atol=1e-3, rtol=1e-3)
    # Both sides find the same BatchNorms to re-estimate (the same module paths under net.).
    for side in (st.FRONT, st.BACK):
        ours = st.donor_batchnorms(wrapped, "layer2.1", side)
        assert set(ours) == set(st.donor_batchnorms(twin, "layer2.1", side)) and ours


def test_stitching_a_torchvision_front_to_a_reprlab_resnet18_trains(wrapped, images):
    torch.manual_seed(5)
    end = build_model(
        "resnet18", num_classes=10, in_channels=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3
    ).eval()
    # torchvision's layer2 output is 128x4x4 on 32x32 images; reprlab's layer4.0 is 512x4x4.
    point = st.StitchPoint("tv_layer2", "layer2.1", "layer4.0")
    assert st.incompatibility(wrapped.tap_shape("layer2.1"), end.tap_shape("layer4.0")) is None
    stitch = st.make_stitch(wrapped.tap_shape("layer2.1"), end.tap_shape("layer4.0"), seed=0)
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = end(x).argmax(1)  # learn to reproduce the end model's own decisions
    loader = TensorLoader(x, y, batch_size=16, shuffle=True, seed=0)
    settings = FitSettings(epochs=4, optimizer="adam", lr=1e-2, weight_decay=0)
    before = copy.deepcopy(wrapped.state_dict())
    result = st.train_stitches(
        wrapped, end, [point], {point.name: stitch}, loader, settings, device=CPU,
        frozen_bn="train", progress=False,
    )  # fmt: skip
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0], losses
    assert result.front_bn[point.name], "the wrapped front's BatchNorm statistics re-estimated"
    assert all(torch.equal(v, wrapped.state_dict()[k]) for k, v in before.items()), "donor changed"
    with pytest.raises(ReprlabError, match=r"cannot be cut at 'layer2\.0\.conv2'"):
        st.StitchedModel(wrapped, "layer2.0.conv2", stitch, end, "layer4.0")(images)


# --- any module ----------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """A user's network: functional ReLUs, a residual add, a fixed-size head (28x28 only)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        h = h + self.branch(h)
        h = self.pool(h)
        return self.head(h.flatten(1))


def test_a_tiny_user_module_with_no_other_argument():
    torch.manual_seed(7)
    net = TinyNet().eval()
    model = wrap(net)
    assert model.input_shape == (1, 28, 28)  # the only size its head accepts
    assert model.block_taps == ("conv", "relu", "add", "pool", "flatten", "logits")
    assert model.layer_taps == ("conv", "branch", "pool", "head")
    assert model.representation_tap == "flatten"
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
        assert torch.equal(model.features(x, ["branch"])["branch"], net.branch(F.relu(net.conv(x))))
        for tap in model.block_taps:
            assert torch.equal(model.back(model.front(x, tap), tap), net(x))
    with pytest.raises(ReprlabError, match=r"cannot be cut at 'branch' \(relu still needed"):
        model.front(x, "branch")


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; hooks take over."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.mean() > 0:  # depends on the data
            h = h.relu()
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_an_untraceable_module_is_hooked():
    torch.manual_seed(8)
    net = Untraceable().eval()
    model = wrap(net, input_shape=(3, 16, 16))
    assert not model.traced
    assert model.block_taps == ("representation", "logits")
    assert model.layer_taps == ("conv", "fc")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
        h = model.front(x, "representation")
        assert h.shape == (4, 4)
        assert torch.equal(model.back(h, "representation"), net(x))
        assert torch.equal(model.features(x, ["conv"])["conv"], net.conv(x))
    with pytest.raises(ReprlabError, match="cannot be cut at 'conv'"):
        model.front(x, "conv")


def test_modules_wrap_cannot_use_are_refused_in_one_line():
    with pytest.raises(ReprlabError, match=r"torch\.nn\.Module"):
        wrap(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ReprlabError, match="one mean and one std per channel"):
        wrap(TinyNet(), normalize=((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    with pytest.raises(ReprlabError, match="does not run on input_shape"):
        wrap(TinyNet(), input_shape=(1, 32, 32))


class OwnNormalisation(nn.Module):
    """As many RobustBench models: buffers used directly in forward (get_attr in the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv((x - self.mu) / self.sigma).relu()
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_moving_the_wrapped_model_moves_what_every_stage_reads():
    torch.manual_seed(9)
    net = OwnNormalisation().eval()
    model = wrap(net, input_shape=(3, 8, 8))
    assert model.block_taps[:2] == ("sub", "truediv")  # torchvision's names of the operations
    model.double()  # replaces the buffers: a stage holding the old ones would fail or differ
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).dtype == torch.float64
        assert torch.equal(model(x), net(x))  # net is shared: it is float64 too
        assert torch.equal(model.back(model.front(x, "conv"), "conv"), net(x))
