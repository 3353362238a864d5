"""The model zoo: the paper's CIFAR VGG and plain (shortcut-free ResNet) nets, and small nets for digits.

Every model is a :class:`torch.nn.Sequential` of named children whose leaves, applied one after the
other, compute the model's output: there are no skip connections and no functional activations, so every
neuron's activation is the output of a module that a forward hook can see.

Models are built with PyTorch's default initialisation from the global RNG, so the same
``torch.manual_seed`` gives the same weights. :func:`build_model` is the registry that checkpoints
are loaded through (see :mod:`raymatch.models.checkpoint`).
"""

from __future__ import annotations

import math
import operator
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

#: The standard VGG configurations: a number is a 3×3 conv with that many output channels
#: (before the width multiplier), ``"M"`` a 2×2 max-pool.
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

#: The depths the registry accepts for ``plain{depth}``: 6n + 2 for n = 3 … 18.
PLAIN_MIN_DEPTH = 20
PLAIN_MAX_DEPTH = 110

#: The plain nets of the paper, listed by :func:`available_models`; any valid ``plain{depth}`` also builds.
PLAIN_DEPTHS = (20, 32, 44, 56)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {number}")
    return number


def _positive_width(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"width must be a positive finite number, got {value!r}")
    try:
        width = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"width must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive finite number, got {value!r}")
    return width


def scaled_width(channels: int, width: float) -> int:
    """Return ``channels`` scaled by the width multiplier: ``round(channels * width)``, at least 1.

    Parameters
    ----------
    channels : int
        The channel (or unit) count at width 1.
    width : float
        The width multiplier.

    Returns
    -------
    int
    """
    return max(1, round(channels * width))


class VGG(nn.Sequential):
    """A CIFAR-style VGG with the paper's 512-512-``num_classes`` classifier head.

    ``features`` holds, per configuration entry, Conv2d(3×3, padding=1) [+ BatchNorm2d] + ReLU for a
    number and MaxPool2d(2) for ``"M"``; a max-pool is left out where the feature map is already 1×1,
    so inputs smaller than 32×32 (8×8 digits, 28×28 Fashion-MNIST) work. Then ``flatten`` and
    ``classifier`` = Linear(c·s·s, 512), ReLU, Linear(512, 512), ReLU, Linear(512, ``num_classes``).

    Parameters
    ----------
    depth : {11, 13, 16, 19}
        Number of weight layers (convs + linears).
    batch_norm : bool, default False
        Put a BatchNorm2d after every conv.
    in_channels : int, default 3
    num_classes : int, default 10
    width : float, default 1.0
        Multiplier for the conv channel counts (the 512-unit classifier head is not scaled).
    input_size : int, default 32
        Height (= width) of the input images, needed to size the first linear layer.

    Notes
    -----
    The ReLUs are in-place, as in the usual CIFAR VGG: a forward hook on a conv (or batch norm) that keeps
    its output without cloning it will see the rectified values.
    """

    def __init__(
        self,
        depth: int = 11,
        *,
        batch_norm: bool = False,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        input_size: int = 32,
    ) -> None:
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
        in_channels = _positive_int(in_channels, "in_channels")
        num_classes = _positive_int(num_classes, "num_classes")
        width = _positive_width(width)
        input_size = _positive_int(input_size, "input_size")

        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for entry in VGG_CONFIGS[depth]:
            if entry == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out_channels = scaled_width(entry, width)
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            channels = out_channels
        classifier = nn.Sequential(
            nn.Linear(channels * size * size, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        super().__init__(
            OrderedDict([("features", nn.Sequential(*layers)), ("flatten", nn.Flatten()), ("classifier", classifier)])
        )
        self.depth = depth
        self.batch_norm = bool(batch_norm)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int, suffix: str) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{suffix}", nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)),
        (f"bn{suffix}", nn.BatchNorm2d(out_channels)),
        (f"relu{suffix}", nn.ReLU()),
    ]


class PlainNet(nn.Sequential):
    """The paper's "plain" nets: a CIFAR ResNet of depth 6n + 2 with every shortcut removed.

    ``stem`` (conv3×3-BN-ReLU, 16 channels), then ``stage1`` … ``stage3`` of n blocks each
    (``stage{i}.block{j}`` = ``conv1``, ``bn1``, ``relu1``, ``conv2``, ``bn2``, ``relu2``), 16 / 32 / 64
    channels (× ``width``), stride 2 on the first conv of stages 2 and 3; then ``pool``
    (AdaptiveAvgPool2d(1)), ``flatten`` and ``fc``. The convs have no bias (batch norm follows them).

    Parameters
    ----------
    depth : int, default 20
        6n + 2 with n ≥ 1 (20, 32, 44, 56, …): the number of convs plus the final linear layer.
    in_channels : int, default 3
    num_classes : int, default 10
    width : float, default 1.0
        Multiplier for all channel counts.
    """

    def __init__(self, depth: int = 20, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        depth = _positive_int(depth, "depth")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"PlainNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        in_channels = _positive_int(in_channels, "in_channels")
        num_classes = _positive_int(num_classes, "num_classes")
        width = _positive_width(width)
        blocks_per_stage = (depth - 2) // 6

        stage_channels = [scaled_width(channels, width) for channels in (16, 32, 64)]
        children: list[tuple[str, nn.Module]] = [
            ("stem", nn.Sequential(OrderedDict(_conv_bn_relu(in_channels, stage_channels[0], 1, ""))))
        ]
        channels = stage_channels[0]
        for stage_index, out_channels in enumerate(stage_channels, start=1):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 1 and block_index == 0 else 1
                block = nn.Sequential(
                    OrderedDict(
                        _conv_bn_relu(channels, out_channels, stride, "1")
                        + _conv_bn_relu(out_channels, out_channels, 1, "2")
                    )
                )
                blocks.append((f"block{block_index}", block))
                channels = out_channels
            children.append((f"stage{stage_index}", nn.Sequential(OrderedDict(blocks))))
        children += [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
        super().__init__(OrderedDict(children))
        self.depth = depth


class SmallCNN(nn.Sequential):
    """A small conv net for 8×8 digits and 28×28 Fashion-MNIST.

    ``conv1`` (3×3, 16 channels), ``relu1``, ``conv2`` (3×3, 32 channels), ``relu2``, ``pool``
    (MaxPool2d(2), left out for 1×1 inputs), ``flatten``, ``fc1`` (64 units), ``relu3``, ``fc2``;
    all counts × ``width``.

    Parameters
    ----------
    in_channels : int, default 1
    num_classes : int, default 10
    width : float, default 1.0
    input_size : int, default 8
        Height (= width) of the input images, needed to size ``fc1``.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: int = 8) -> None:
        in_channels = _positive_int(in_channels, "in_channels")
        num_classes = _positive_int(num_classes, "num_classes")
        width = _positive_width(width)
        input_size = _positive_int(input_size, "input_size")

        conv1_channels, conv2_channels, hidden = (scaled_width(count, width) for count in (16, 32, 64))
        children: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(in_channels, conv1_channels, 3, padding=1)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(conv1_channels, conv2_channels, 3, padding=1)),
            ("relu2", nn.ReLU()),
        ]
        size = input_size
        if size > 1:
            children.append(("pool", nn.MaxPool2d(2)))
            size //= 2
        children += [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(conv2_channels * size * size, hidden)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]
        super().__init__(OrderedDict(children))


class MLP(nn.Sequential):
    """A multilayer perceptron on flattened inputs.

    ``flatten``, then ``fc1``, ``relu1``, …, ``fc{k}``, ``relu{k}`` for the hidden layers and a final
    ``fc{k+1}`` to ``num_classes``.

    Parameters
    ----------
    in_features : int
        Size of one flattened input (channels × height × width).
    num_classes : int, default 10
    hidden : sequence of int, default (128, 64)
        Hidden layer sizes at width 1.
    width : float, default 1.0
        Multiplier for the hidden layer sizes.
    """

    def __init__(
        self, in_features: int, num_classes: int = 10, *, hidden: Sequence[int] = (128, 64), width: float = 1.0
    ) -> None:
        in_features = _positive_int(in_features, "in_features")
        num_classes = _positive_int(num_classes, "num_classes")
        width = _positive_width(width)
        hidden_sizes = [scaled_width(_positive_int(size, "hidden layer size"), width) for size in hidden]

        children: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        features = in_features
        for index, size in enumerate(hidden_sizes, start=1):
            children += [(f"fc{index}", nn.Linear(features, size)), (f"relu{index}", nn.ReLU())]
            features = size
        children.append((f"fc{len(hidden_sizes) + 1}", nn.Linear(features, num_classes)))
        super().__init__(OrderedDict(children))


ModelFactory = Callable[[int, int, float, int], nn.Module]


def _vgg_factory(depth: int, batch_norm: bool) -> ModelFactory:
    def build(in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
        return VGG(
            depth,
            batch_norm=batch_norm,
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            input_size=input_size,
        )

    return build


def _plain_factory(depth: int) -> ModelFactory:
    def build(in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
        return PlainNet(depth, in_channels=in_channels, num_classes=num_classes, width=width)

    return build


def _small_cnn(in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, width=width, input_size=input_size)


def _mlp(in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
    return MLP(in_channels * input_size * input_size, num_classes, width=width)


_REGISTRY: dict[str, ModelFactory] = {}
for _depth in VGG_CONFIGS:
    _REGISTRY[f"vgg{_depth}"] = _vgg_factory(_depth, batch_norm=False)
    _REGISTRY[f"vgg{_depth}_bn"] = _vgg_factory(_depth, batch_norm=True)
for _depth in PLAIN_DEPTHS:
    _REGISTRY[f"plain{_depth}"] = _plain_factory(_depth)
_REGISTRY["small_cnn"] = _small_cnn
_REGISTRY["mlp"] = _mlp

_PLAIN_NAME = re.compile(r"plain([1-9][0-9]*)")


def available_models() -> list[str]:
    """Return the registry's model names.

    ``plain{depth}`` builds for every depth 6n + 2 from 20 to 110; only the paper's 20, 32, 44 and 56
    are listed.

    Returns
    -------
    list of str
    """
    return list(_REGISTRY)


def _factory(name: Any) -> ModelFactory:
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    plain = _PLAIN_NAME.fullmatch(name)
    if plain is None:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())} "
            f"(and plain{{depth}} for depth = 6n + 2 from {PLAIN_MIN_DEPTH} to {PLAIN_MAX_DEPTH})"
        )
    depth = int(plain.group(1))
    if not (PLAIN_MIN_DEPTH <= depth <= PLAIN_MAX_DEPTH and (depth - 2) % 6 == 0):
        raise ValueError(
            f"{name}: plain net depth must be 6n + 2 from {PLAIN_MIN_DEPTH} to {PLAIN_MAX_DEPTH} "
            f"(20, 26, 32, ..., 110), got {depth}"
        )
    return _plain_factory(depth)


def build_model(
    name: str, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, input_size: int = 32
) -> nn.Module:
    """Build a freshly initialised model of the zoo by name.

    The weights come from PyTorch's default initialisation, drawn from the global RNG: call
    ``torch.manual_seed`` first for reproducible weights.

    Parameters
    ----------
    name : str
        One of :func:`available_models`, or ``plain{depth}`` for any depth 6n + 2 from 20 to 110.
    in_channels : int, default 3
        Channels of the input images (1 for digits and Fashion-MNIST).
    num_classes : int, default 10
    width : float, default 1.0
        Channel (hidden unit) multiplier; each count becomes ``round(count * width)``, at least 1.
    input_size : int, default 32
        Height (= width) of the input images (8 for digits, 28 for Fashion-MNIST). The plain nets pool
        adaptively and accept any size; the value is still checked.

    Returns
    -------
    torch.nn.Module
        In training mode, on the CPU, float32.

    Raises
    ------
    ValueError
        For an unknown name, a plain net depth that is not 6n + 2 in [20, 110], or a non-positive
        ``in_channels``, ``num_classes``, ``width`` or ``input_size``.
    """
    factory = _factory(name)
    return factory(
        _positive_int(in_channels, "in_channels"),
        _positive_int(num_classes, "num_classes"),
        _positive_width(width),
        _positive_int(input_size, "input_size"),
    )
