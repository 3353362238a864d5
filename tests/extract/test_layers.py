"""Layer selection by name, glob and type, in network order."""

import pytest
from torch import nn

from raymatch.extract import select_layers


def model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))


def test_types_names_and_globs_select_in_network_order():
    net = model()
    assert select_layers(net, ["relu"]) == ["1", "4"]
    assert select_layers(net, ["conv"]) == ["0", "3"]
    assert select_layers(net, "linear") == ["6"]
    assert select_layers(net, ["bn"]) == ["2"]
    assert select_layers(net, ["6", "0"]) == ["0", "6"]
    assert select_layers(net, ["[0-2]"]) == ["0", "1", "2"]


def test_unknown_layer_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"layers\[1\]: unknown layer 'features.99'; available: 0, 1, 2, 3"):
        select_layers(model(), ["relu", "features.99"])


def test_empty_selector_is_refused():
    with pytest.raises(ValueError, match=r"layers\[0\]: a layer selector must be a non-empty string"):
        select_layers(model(), [""])
