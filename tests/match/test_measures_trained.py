"""The measures on real activations: hidden ReLU layers of small MLPs trained on scikit-learn's digits.

Two seeds are trained for 150 full-batch Adam steps (well above 90 % training accuracy); a third stays untrained.
The factor path equals the float64 oracle on every pair (float32 activations, raw factors as a study keeps them),
and the second layers of two seeds are more alike than a trained and an untrained one by every measure.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from raymatch.match import MEASURES, cross_product, factor, pair_measures

from .test_measures_reference import assert_agree


def hidden_layers(seed: int, steps: int) -> list[np.ndarray]:
    """The two hidden ReLU layers (64 and 32 units) on all 1,797 digits after ``steps`` Adam steps."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    with torch.no_grad():
        first = net[1](net[0](x))
        second = net[3](net[2](first))
    return [first.numpy(), second.numpy()]


@pytest.fixture(scope="module")
def networks():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"seed0": hidden_layers(0, 150), "seed1": hidden_layers(1, 150), "untrained": hidden_layers(2, 0)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("other", ["seed1", "untrained"])
def test_measures_of_trained_layers_equal_the_oracle(networks, layer, other):
    A, B = networks["seed0"][layer], networks[other][layer]
    assert_agree(A, B)
    assert_agree(A, B, center_a=True, center_b=True)


def test_the_second_layer_of_another_trained_seed_is_closer_than_an_untrained_network(networks):
    # (On the first layer SVCCA cannot tell: both keep the input's top principal directions, 0.83 against 0.85.)
    A = networks["seed0"][1]
    values = {}
    for other in ("seed1", "untrained"):
        fa, fb = factor(A), factor(networks[other][1])
        values[other] = pair_measures(fa, fb, cross_product(fa, fb))
    for name in MEASURES:
        trained, untrained = values["seed1"][name], values["untrained"][name]
        closer = trained < untrained - 0.1 if name == "procrustes" else trained > untrained + 0.1
        assert closer, f"{name}: trained {trained:.3f}, untrained {untrained:.3f}"
