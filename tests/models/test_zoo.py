"""Tests of the model zoo: shapes, structure, width, determinism and argument checking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raymatch.models import MLP, VGG, PlainNet, SmallCNN, available_models, build_model

CIFAR = {"in_channels": 3, "input_size": 32}
DIGITS = {"in_channels": 1, "input_size": 8}
FASHION = {"in_channels": 1, "input_size": 28}

SMALL_WIDTH = 0.25


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def leaves(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if not list(module.children())]


def random_batch(in_channels: int, input_size: int, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, in_channels, input_size, input_size, generator=generator)


def test_available_models_lists_the_registry_names():
    expected = {
        *(f"vgg{depth}{suffix}" for depth in (11, 13, 16, 19) for suffix in ("", "_bn")),
        "plain20",
        "plain32",
        "plain44",
        "plain56",
        "small_cnn",
        "mlp",
    }
    assert set(available_models()) == expected
    assert len(available_models()) == len(expected)


@pytest.mark.parametrize("name", available_models())
def test_every_model_runs_on_cifar_shaped_input(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, width=SMALL_WIDTH, **CIFAR)
    output = model(random_batch(**CIFAR))
    assert output.shape == (3, 7)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("name", ["small_cnn", "mlp", "vgg11", "vgg11_bn", "plain20"])
@pytest.mark.parametrize("dataset", [DIGITS, FASHION], ids=["digits", "fashion"])
def test_small_inputs(name, dataset):
    torch.manual_seed(0)
    model = build_model(name, width=SMALL_WIDTH, **dataset)
    assert model(random_batch(**dataset)).shape == (3, 10)


@pytest.mark.parametrize("depth", [26, 62, 110])
def test_any_plain_depth_of_the_form_6n_plus_2_builds(depth):
    model = build_model(f"plain{depth}", width=SMALL_WIDTH)
    assert isinstance(model, PlainNet)
    assert count(model, nn.Conv2d) == depth - 1
    assert model(random_batch(**CIFAR, batch=2)).shape == (2, 10)


@pytest.mark.parametrize(("depth", "n_convs"), [(11, 8), (13, 10), (16, 13), (19, 16)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg_structure(depth, n_convs, batch_norm):
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    model = build_model(name, width=SMALL_WIDTH)
    assert isinstance(model, VGG)
    assert count(model, nn.Conv2d) == n_convs
    assert count(model, nn.BatchNorm2d) == (n_convs if batch_norm else 0)
    assert count(model, nn.ReLU) == n_convs + 2
    assert count(model, nn.MaxPool2d) == 5
    linears = [module for module in model.classifier if isinstance(module, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(128, 512), (512, 512), (512, 10)]
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3) and module.padding == (1, 1)


@pytest.mark.parametrize(("input_size", "n_pools", "final_size"), [(32, 5, 1), (28, 4, 1), (8, 3, 1), (3, 1, 1)])
def test_vgg_skips_max_pools_once_the_feature_map_is_one_pixel(input_size, n_pools, final_size):
    model = build_model("vgg11", in_channels=1, width=SMALL_WIDTH, input_size=input_size)
    assert count(model, nn.MaxPool2d) == n_pools
    assert model.classifier[0].in_features == 128 * final_size * final_size
    assert model(random_batch(1, input_size)).shape == (3, 10)


def test_vgg_keeps_a_spatial_map_when_the_input_is_large():
    model = build_model("vgg11", width=SMALL_WIDTH, input_size=64)
    assert model.classifier[0].in_features == 128 * 2 * 2
    assert model(random_batch(3, 64, batch=1)).shape == (1, 10)


@pytest.mark.parametrize(("name", "n_convs"), [("plain20", 19), ("plain32", 31), ("plain44", 43), ("plain56", 55)])
def test_plain_net_structure(name, n_convs):
    model = build_model(name, width=SMALL_WIDTH)
    assert count(model, nn.Conv2d) == n_convs
    assert count(model, nn.BatchNorm2d) == n_convs
    assert count(model, nn.ReLU) == n_convs
    assert count(model, nn.Linear) == 1
    n_blocks = (n_convs - 1) // 6
    assert [len(getattr(model, f"stage{stage}")) for stage in (1, 2, 3)] == [n_blocks] * 3


def test_plain_net_module_names_and_strides():
    model = build_model("plain20")
    names = dict(model.named_modules())
    for expected in [
        "stem.conv",
        "stem.bn",
        "stem.relu",
        "stage1.block0.conv1",
        "stage1.block0.bn1",
        "stage1.block0.relu1",
        "stage1.block0.conv2",
        "stage1.block0.relu2",
        "stage3.block2.relu2",
        "pool",
        "fc",
    ]:
        assert expected in names
    assert "stage1.block3" not in names
    assert names["stage1.block0.conv1"].stride == (1, 1)
    assert names["stage2.block0.conv1"].stride == (2, 2)
    assert names["stage2.block1.conv1"].stride == (1, 1)
    assert names["stage3.block0.conv1"].stride == (2, 2)
    assert names["stage3.block0.conv2"].stride == (1, 1)
    assert [names[f"stage{stage}.block0.conv2"].out_channels for stage in (1, 2, 3)] == [16, 32, 64]
    assert names["fc"].in_features == 64


def test_plain_net_has_relus_as_modules_and_no_shortcut():
    model = build_model("plain20", width=SMALL_WIDTH).eval()
    batch = random_batch(**CIFAR)
    # A shortcut would add a block's input to its output; the leaves applied one after the other
    # can only reproduce the forward pass when there is none.
    activations = batch
    for leaf in leaves(model):
        activations = leaf(activations)
    torch.testing.assert_close(model(batch), activations, rtol=0, atol=0)

    # Likewise each block alone is a pure chain conv-bn-relu-conv-bn-relu.
    block = model.stage2.block1
    assert [type(module) for module in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2


@pytest.mark.parametrize("name", [*available_models(), "plain26"])
def test_forward_is_the_sequential_application_of_the_leaf_modules(name):
    torch.manual_seed(0)
    model = build_model(name, width=SMALL_WIDTH).eval()
    batch = random_batch(**CIFAR, batch=2)
    activations = batch
    for leaf in leaves(model):
        activations = leaf(activations)
    torch.testing.assert_close(model(batch), activations, rtol=0, atol=0)


def test_small_cnn_and_mlp_module_names():
    cnn = build_model("small_cnn", **DIGITS)
    assert isinstance(cnn, SmallCNN)
    assert [name for name, _ in cnn.named_children()] == [
        "conv1",
        "relu1",
        "conv2",
        "relu2",
        "pool",
        "flatten",
        "fc1",
        "relu3",
        "fc2",
    ]
    assert (cnn.conv1.out_channels, cnn.conv2.out_channels, cnn.fc1.out_features) == (16, 32, 64)
    assert cnn.fc1.in_features == 32 * 4 * 4

    mlp = build_model("mlp", **FASHION)
    assert isinstance(mlp, MLP)
    assert [name for name, _ in mlp.named_children()] == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    assert [(layer.in_features, layer.out_features) for layer in (mlp.fc1, mlp.fc2, mlp.fc3)] == [
        (28 * 28, 128),
        (128, 64),
        (64, 10),
    ]


def test_small_cnn_without_room_for_a_pool():
    cnn = build_model("small_cnn", in_channels=1, input_size=1)
    assert "pool" not in dict(cnn.named_children())
    assert cnn(random_batch(1, 1)).shape == (3, 10)


def test_mlp_hidden_sizes_are_configurable():
    mlp = MLP(12, 4, hidden=(20, 10, 5), width=2.0)
    assert [layer.out_features for layer in mlp if isinstance(layer, nn.Linear)] == [40, 20, 10, 4]
    assert mlp(torch.zeros(2, 3, 2, 2)).shape == (2, 4)


def test_width_multiplier_scales_channels():
    assert build_model("vgg11", width=0.5).features[0].out_channels == 32
    assert build_model("vgg11_bn", width=0.5).features[1].num_features == 32
    assert build_model("vgg11", width=0.5, input_size=8).classifier[0].in_features == 256
    wide_plain = build_model("plain20", width=2.0)
    assert wide_plain.stem.conv.out_channels == 32
    assert wide_plain.stage3.block0.conv1.out_channels == 128
    assert wide_plain.fc.in_features == 128
    cnn = build_model("small_cnn", width=0.5, **DIGITS)
    assert (cnn.conv1.out_channels, cnn.conv2.out_channels, cnn.fc1.out_features) == (8, 16, 32)
    mlp = build_model("mlp", width=0.5, **DIGITS)
    assert (mlp.fc1.out_features, mlp.fc2.out_features) == (64, 32)


def test_width_rounds_and_keeps_at_least_one_channel():
    assert build_model("vgg11", width=0.3).features[0].out_channels == round(64 * 0.3)
    tiny = build_model("plain20", width=1e-3)
    assert tiny.stem.conv.out_channels == 1
    assert tiny.fc.in_features == 1
    assert tiny(random_batch(**CIFAR)).shape == (3, 10)


def test_classes_and_channels_are_honoured():
    model = build_model("plain20", in_channels=5, num_classes=3, width=SMALL_WIDTH)
    assert model.stem.conv.in_channels == 5
    assert model(random_batch(5, 16)).shape == (3, 3)


@pytest.mark.parametrize("name", ["vgg11_bn", "plain20", "small_cnn", "mlp"])
def test_same_seed_gives_identical_weights(name):
    torch.manual_seed(1234)
    first = build_model(name, width=SMALL_WIDTH).state_dict()
    torch.manual_seed(1234)
    second = build_model(name, width=SMALL_WIDTH).state_dict()
    torch.manual_seed(4321)
    other = build_model(name, width=SMALL_WIDTH).state_dict()
    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_build_does_not_touch_randomness_beyond_initialisation():
    torch.manual_seed(7)
    build_model("small_cnn", **DIGITS)
    after_build = torch.rand(3)
    torch.manual_seed(7)
    SmallCNN(in_channels=1, input_size=8)
    assert torch.equal(torch.rand(3), after_build)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("resnet18", {}, "unknown model 'resnet18'"),
        ("VGG11", {}, "unknown model"),
        ("plain", {}, "unknown model"),
        ("plain21", {}, "6n + 2"),
        ("plain14", {}, "6n + 2"),
        ("plain116", {}, "6n + 2"),
        (11, {}, "model name must be a string"),
        ("vgg11", {"width": 0}, "width"),
        ("vgg11", {"width": -0.5}, "width"),
        ("plain20", {"width": math.nan}, "width"),
        ("plain20", {"width": math.inf}, "width"),
        ("mlp", {"width": "wide"}, "width"),
        ("vgg11", {"in_channels": 0}, "in_channels"),
        ("small_cnn", {"in_channels": 1.5}, "in_channels"),
        ("vgg11", {"num_classes": 0}, "num_classes"),
        ("plain20", {"num_classes": -3}, "num_classes"),
        ("vgg11", {"input_size": 0}, "input_size"),
        ("mlp", {"input_size": True}, "input_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_problem(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        build_model(name, **kwargs)


def test_unknown_name_lists_the_available_models():
    with pytest.raises(ValueError) as excinfo:
        build_model("resnet18")
    for name in available_models():
        assert name in str(excinfo.value)


def test_classes_validate_their_own_arguments():
    with pytest.raises(ValueError, match="VGG depth"):
        VGG(12)
    with pytest.raises(ValueError, match="6n"):
        PlainNet(21)
    with pytest.raises(ValueError, match="width"):
        SmallCNN(width=0.0)
    with pytest.raises(ValueError, match="in_features"):
        MLP(0)
    assert count(PlainNet(8, width=SMALL_WIDTH), nn.Conv2d) == 7
