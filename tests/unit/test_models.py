"""The architecture registry: every registered model, its normaliser, its taps and its keys."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn

from reprlab.core.representation import Representation
from reprlab.errors import ReprlabError
from reprlab.models import Classifier, available_archs, build_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
NUM_CLASSES = 10

# Forward + backward of these takes seconds on 2 CPU cores; their code paths are shared with a
# cheaper sibling (wrn28_10), so the gradient and memory-format checks run them only with -m slow.
HEAVY = {"wrn34_10", "dm_wrn70_16"}


def _arch_params(archs: list[str]) -> list:
    return [pytest.param(arch, marks=pytest.mark.slow) if arch in HEAVY else arch for arch in archs]


@functools.cache
def _model(arch: str, in_channels: int = 3, image_size: int = 32) -> Classifier:
    """A seeded eval-mode model with calibrated BatchNorm, shared between tests.

    Freshly initialised deep nets in eval mode (BN statistics 0 and 1) can map every input to the
    same logits, which would let equality checks pass trivially; one train-mode pass that sets
    the BN statistics to those of real batches keeps the outputs input-dependent.
    """
    torch.manual_seed(0)
    mean, std = (CIFAR_MEAN, CIFAR_STD) if in_channels == 3 else ((0.1307,), (0.3081,))
    model = build_model(
        arch,
        num_classes=NUM_CLASSES,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean[:in_channels],
        std=std[:in_channels],
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: statistics of exactly this pass
    with torch.no_grad():
        model.train()(_images(in_channels, image_size, n=4, seed=0))
    return model.eval()


def _images(in_channels: int = 3, image_size: int = 32, n: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, in_channels, image_size, image_size, generator=generator)


def _final_linear(model: Classifier) -> nn.Linear:
    (path,) = dict(model.stages)["logits"]
    layer = model.net.get_submodule(path)
    assert isinstance(layer, nn.Linear)
    return layer


def _stage_paths(model: Classifier) -> list[str]:
    return [path for _, paths in model.stages for path in paths]


# --- registry --------------------------------------------------------------------------------


def test_registry_holds_every_architecture_family():
    assert set(available_archs()) == {
        "cnn_madry",
        "cnn_small",
        "resnet18",
        "resnet34",
        "resnet50",
        "preact_resnet18",
        "vgg11_bn",
        "vgg16_bn",
        "vgg19_bn",
        "wrn28_10",
        "wrn34_10",
        "dm_wrn28_10",
        "resnet20_mini",
        "dm_wrn70_16",
        "tv_resnet18",
        "tv_resnet50",
        "dim_encoder",
        "dim_encoder_small",
    }


def test_unknown_architecture_names_the_valid_ones():
    with pytest.raises(ReprlabError, match="unknown architecture 'resnet19'") as info:
        build_model(
            "resnet19", num_classes=10, in_channels=3, image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD
        )
    assert all(name in str(info.value) for name in available_archs())


def test_normaliser_with_wrong_channel_count_is_a_user_error():
    with pytest.raises(ReprlabError, match="one mean and one std per channel"):
        build_model(
            "cnn_small",
            num_classes=10,
            in_channels=1,
            image_size=28,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
        )


# --- every architecture ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_forward_runs_each_stage_module_once_in_stage_order(arch):
    model = _model(arch)
    fired: list[str] = []
    paths = _stage_paths(model)
    handles = [
        model.net.get_submodule(path).register_forward_hook(lambda *_, p=path: fired.append(p))
        for path in paths
    ]
    try:
        with torch.no_grad():
            model(_images())
    finally:
        for handle in handles:
            handle.remove()
    assert fired == paths
    assert model.block_taps == tuple(name for name, _ in model.stages)
    assert model.block_taps[-1] == "logits"
    assert model.input_shape == (3, 32, 32)


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_representation_tap_is_the_final_linear_input(arch):
    model = _model(arch)
    with torch.no_grad():
        logits = model(_images())
        activations = model.features(_images(), model.block_taps)
        features = activations[model.representation_tap]
        assert logits.shape == (2, NUM_CLASSES)
        assert features.dim() == 2
        torch.testing.assert_close(activations["logits"], logits)
        torch.testing.assert_close(_final_linear(model)(features), logits, rtol=1e-5, atol=1e-5)
    # Different images must give different logits, or the checks above would hold trivially.
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_normaliser_is_the_first_layer_and_stages_compose_to_the_nets_forward(arch):
    """``model.net``'s own forward (torchvision's for tv_resnets) equals running the stages."""
    model = _model(arch)
    x = _images()
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), model.net((x - mean) / std))


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_single_channel_16px_input(arch):
    """The synthetic dataset's 1x16x16 images run through every architecture."""
    model = _model(arch, in_channels=1, image_size=16)
    with torch.no_grad():
        logits = model(_images(in_channels=1, image_size=16))
        activations = model.features(_images(in_channels=1, image_size=16), "blocks")
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert activations[model.representation_tap].shape[0] == 2


@pytest.mark.parametrize(
    ("arch", "image_size"),
    [
        ("cnn_madry", 28),
        ("cnn_small", 64),
        ("resnet18", 28),
        ("preact_resnet18", 64),
        ("vgg11_bn", 28),
        ("tv_resnet18", 224),
    ],
)
def test_other_image_sizes(arch, image_size):
    model = _model(arch, in_channels=1, image_size=image_size)
    with torch.no_grad():
        logits = model(_images(in_channels=1, image_size=image_size, n=1))
    assert logits.shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_representation_is_differentiable_and_equals_the_captured_tap(arch):
    model = _model(arch)
    x = _images().requires_grad_(True)
    features = Representation(model, model.representation_tap)(x)
    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(2))
    (features * direction).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        activations = model.features(x.detach(), model.block_taps)
    torch.testing.assert_close(features.detach(), activations[model.representation_tap])


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_channels_last_gives_the_same_logits(arch):
    model = _model(arch)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _images()
    with torch.no_grad():
        expected = model(x)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    # Memory format only reorders float32 sums: 50-layer nets drift by ~2e-5 of the logit scale,
    # while a layout bug (a view or flatten in the wrong order) would be of the order of 1.
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * scale)


# --- per-family structure --------------------------------------------------------------------


def test_resnet18_taps_are_stem_and_eight_blocks():
    """Stitching on ResNet-18 uses 9 points: after the stem and after each residual block."""
    blocks = [f"layer{stage}.{i}" for stage in range(1, 5) for i in range(2)]
    assert _model("resnet18").block_taps == ("stem", *blocks, "pool", "logits")


@pytest.mark.parametrize(
    ("arch", "blocks"),
    [
        ("resnet34", 16),
        ("resnet50", 16),
        ("preact_resnet18", 8),
        ("wrn28_10", 12),
        ("wrn34_10", 15),
        ("tv_resnet18", 8),
        ("tv_resnet50", 16),
    ],
)
def test_residual_nets_tap_every_block(arch, blocks):
    names = _model(arch).block_taps
    assert names[0] == "stem"
    assert names[-2:] == ("pool", "logits")
    assert sum(name.startswith(("layer", "block")) for name in names) == blocks


@pytest.mark.parametrize(("arch", "convs"), [("vgg11_bn", 8), ("vgg16_bn", 13), ("vgg19_bn", 16)])
def test_vgg_taps_every_conv_unit_at_its_own_relu(arch, convs):
    model = _model(arch)
    assert model.block_taps == (*(f"conv{k}" for k in range(1, convs + 1)), "pool", "logits")
    stages = dict(model.stages)
    relus = [model.net.get_submodule(stages[f"conv{k}"][-1]) for k in range(1, convs + 1)]
    assert all(isinstance(relu, nn.ReLU) for relu in relus)
    assert len({id(relu) for relu in relus}) == convs


@pytest.mark.parametrize(
    ("arch", "in_channels", "image_size", "num_classes", "expected"),
    [
        ("cnn_madry", 1, 28, 10, 3_274_634),  # Madry et al. 2018 MNIST model
        ("resnet18", 3, 32, 10, 11_173_962),  # kuangliu / robustness CIFAR ResNet-18
        ("resnet50", 3, 32, 10, 23_520_842),
        ("vgg16_bn", 3, 32, 10, 14_728_266),  # kuangliu VGG-16
        ("wrn28_10", 3, 32, 10, 36_479_194),  # Zagoruyko & Komodakis: 36.5M
        ("wrn34_10", 3, 32, 10, 46_160_474),  # TRADES / Rice WRN-34-10 without sub_block1
        (
            "tv_resnet18",
            3,
            224,
            1000,
            torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["num_params"],
        ),
        (
            "tv_resnet50",
            3,
            224,
            1000,
            torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"],
        ),
    ],
)
def test_parameter_counts_match_the_reference_implementations(
    arch, in_channels, image_size, num_classes, expected
):
    body_params = build_model(
        arch,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=CIFAR_MEAN[:in_channels],
        std=CIFAR_STD[:in_channels],
    ).net.parameters()
    assert sum(p.numel() for p in body_params) == expected


def test_resnet18_state_dict_uses_robustness_library_keys():
    keys = set(_model("resnet18").net.state_dict())
    expected_present = {
        "conv1.weight",
        "bn1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean",
        "layer4.1.conv2.weight",
        "linear.weight",
        "linear.bias",
    }
    assert expected_present <= keys
    assert not any(key.startswith(("layer1.0.shortcut", "layer2.1.shortcut")) for key in keys)
    assert not any(key.startswith(("relu", "pool", "fc.")) for key in keys)
    # conv1 + bn1 (1 + 5), 8 blocks x 12, 3 projection shortcuts x 6, linear 2.
    assert len(keys) == 122
    assert not any(key.endswith("bias") and ".conv" in key for key in keys)


def test_classifier_state_dict_adds_only_the_normaliser():
    model = _model("resnet18")
    extra = set(model.state_dict()) - {f"net.{key}" for key in model.net.state_dict()}
    assert extra == {"normalize.mean", "normalize.std"}


@pytest.mark.parametrize("arch", ["tv_resnet18", "tv_resnet50"])
def test_torchvision_resnets_keep_torchvision_keys(arch):
    reference = getattr(torchvision.models, arch.removeprefix("tv_"))(weights=None, num_classes=10)
    ours = _model(arch).net.state_dict()
    assert list(ours) == list(reference.state_dict())
    assert all(ours[key].shape == value.shape for key, value in reference.state_dict().items())


def test_torchvision_resnet18_weights_give_torchvision_outputs():
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model = copy.deepcopy(_model("tv_resnet18"))
    model.net.load_state_dict(reference.state_dict(), strict=True)
    x = _images()
    with torch.no_grad():
        expected = reference(model.normalize(x))
        torch.testing.assert_close(model(x), expected)


def test_single_channel_torchvision_resnet_only_changes_conv1():
    ours = _model("tv_resnet18", in_channels=1, image_size=16).net.state_dict()
    reference = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert list(ours) == list(reference)
    assert ours["conv1.weight"].shape == (64, 1, 7, 7)
    assert {key for key in reference if ours[key].shape != reference[key].shape} == {"conv1.weight"}


# --- cutting at taps, layer taps ---------------------------------------------------------------


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_back_of_front_is_the_forward_pass_at_every_block_tap(arch):
    """One full forward per tap: 16x16 inputs (the nets without a flattening linear layer are
    size-agnostic) keep it cheap."""
    model = _model(arch)
    x = _images(image_size=32 if arch.startswith(("cnn", "dim_encoder")) else 16)
    with torch.no_grad():
        expected = model(x)
        for tap in model.block_taps:
            got = model.back(model.front(x, tap), tap)
            assert (got - expected).abs().max().item() <= 1e-6, tap


def _counting_hooks(model: Classifier, paths, fired: list[str]):
    return [
        model.net.get_submodule(path).register_forward_hook(lambda *_, p=path: fired.append(p))
        for path in paths
    ]


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_features_run_only_the_stages_they_need(arch):
    """A first-stage tap runs the first stage only; a layer tap stops after its own stage."""
    model = _model(arch)
    x = _images()
    first = model.block_taps[0]
    layer = model.layer_taps[len(model.layer_taps) // 2]
    info = {t.name: t for t in model.probe().taps}[layer]
    paths = dict.fromkeys(_stage_paths(model))
    fired: list[str] = []
    kept: dict[str, list[torch.Tensor]] = {}
    keep = model.net.get_submodule(info.module).register_forward_hook(
        lambda _m, _i, out: kept.setdefault("layer", []).append(out.clone())
    )
    handles = [*_counting_hooks(model, paths, fired), keep]
    try:
        with torch.no_grad():
            full = model.front(x, first)
            fired.clear()
            got = model.features(x, [first])
            assert fired == list(model.stages[0][1])
            torch.testing.assert_close(got[first], full, rtol=0, atol=0)
            kept.clear()
            model(x)
            from_full_pass = kept["layer"][info.call - 1]
            fired.clear()
            got = model.features(x, [layer])
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [p for _, stage_paths in model.stages[: info.stage + 1] for p in stage_paths]
    torch.testing.assert_close(got[layer], from_full_pass, rtol=0, atol=0)


@pytest.mark.parametrize("arch", _arch_params(available_archs()))
def test_layer_taps_fire_as_probed_in_forward_order_and_equal_hooked_outputs(arch):
    """Every conv/BN/ReLU/pool/linear call, independently hooked in a full forward pass."""
    model = _model(arch)
    x = _images()
    probe = model.probe()
    layers = [t for t in probe.taps if t.kind == "layer"]
    modules = dict.fromkeys(t.module for t in layers)
    expected_types = (
        nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.SiLU, nn.MaxPool2d,
        nn.AdaptiveAvgPool2d,
    )  # fmt: skip
    leaves = {
        path
        for path, module in model.net.named_modules()
        if isinstance(module, (*expected_types, nn.Linear))
    }
    assert set(modules) == leaves  # every such leaf is tapped, nothing else
    fired: list[tuple[str, torch.Tensor]] = []
    handles = [
        model.net.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, p=path: fired.append((p, out.clone()))
        )
        for path in modules
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert [p for p, _ in fired] == [t.module for t in layers]  # forward order, probed counts
    with torch.no_grad():
        got = model.features(x, "all")
    assert list(got) == [t.name for t in layers]
    for (_, value), tap in zip(fired, layers, strict=True):
        torch.testing.assert_close(got[tap.name], value, rtol=0, atol=0)
        assert got[tap.name].shape[1:] == tap.shape
    block_names = set(model.block_taps)
    assert not block_names & {t.name for t in layers}


@pytest.mark.parametrize(
    ("arch", "bn", "relu", "conv"),
    [
        ("vgg11_bn", "features.1", "features.2", "features.0"),
        ("wrn28_10", "block1.layer.0.bn1", "block1.layer.0.relu1", "stem"),
    ],
)
def test_in_place_relu_does_not_corrupt_the_captured_batchnorm(arch, bn, relu, conv):
    """VGG and WRN apply in-place ReLUs right after BatchNorm; the BN tap is the pre-ReLU map."""
    model = _model(arch)
    assert model.net.get_submodule(relu).inplace
    with torch.no_grad():
        got = model.features(_images(), [conv, bn, relu])
        recomputed = model.net.get_submodule(bn)(got[conv])
    assert (got[bn] < 0).any()
    torch.testing.assert_close(got[bn], recomputed)
    torch.testing.assert_close(got[relu], got[bn].clamp(min=0))


def test_torchvision_shared_relu_gives_two_distinct_correct_taps():
    """torchvision's BasicBlock calls its one ``relu`` twice: before conv2 and after the sum."""
    model = _model("tv_resnet18")
    block = model.net.layer1[0]
    assert "layer1.0.relu" not in model.layer_taps
    with torch.no_grad():
        got = model.features(_images(), ["stem", "layer1.0.relu@1", "layer1.0.relu@2", "layer1.0"])
        first = torch.relu(block.bn1(block.conv1(got["stem"])))
        second = torch.relu(block.bn2(block.conv2(first)) + got["stem"])
    torch.testing.assert_close(got["layer1.0.relu@1"], first)
    torch.testing.assert_close(got["layer1.0.relu@2"], second)
    torch.testing.assert_close(got["layer1.0"], second)
    assert not torch.allclose(first, second)
