"""Seeded synthetic activation pairs with a planted shared part (for tests and benchmarks)."""

from __future__ import annotations

import numpy as np


def relu_pair(
    n_samples: int = 10_000,
    n_a: int = 512,
    n_b: int = 512,
    *,
    shared_fraction: float = 0.4,
    group_sizes: tuple[int, ...] = (1, 2, 3),
    max_noise: float = 0.6,
    seed: int = 0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Two ReLU-like (non-negative) layers sharing planted groups of neurons.

    A ``shared_fraction`` of each layer's neurons is planted in groups: group ``g`` draws a
    non-negative latent signal of ``group_sizes[g % len]`` dimensions, and each side gets that many
    neurons mixing it (non-negative weights) plus a ReLU noise vector scaled by a factor drawn
    uniformly from [0, ``max_noise``]. The rest are ReLUs of independent Gaussian mixtures. So the
    maximum match is neither empty nor full over ε ∈ [0.15, 0.5], the small groups are the natural
    simple matches, and columns are shuffled so that nothing depends on position.

    Parameters
    ----------
    n_samples : int, default 10,000
        Number of rows (samples).
    n_a, n_b : int, default 512
        Number of neurons of each layer.
    shared_fraction : float, default 0.4
        Fraction of the smaller layer's neurons spent on planted groups (whole groups only).
    group_sizes : tuple of int, default (1, 2, 3)
        Sizes of the planted groups, used cyclically.
    max_noise : float, default 0.6
        Upper bound of the per-neuron noise scale of planted neurons.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``: the same seed gives the same pair.
    dtype : numpy dtype, default numpy.float32
        Dtype of the returned arrays.

    Returns
    -------
    A : numpy.ndarray, shape (n_samples, n_a)
        The first layer.
    B : numpy.ndarray, shape (n_samples, n_b)
        The second layer.

    Examples
    --------
    With 10 neurons on the smaller side, 40% buys a planted group of 1 and one of 2: three
    neurons per side match at a moderate ε, nothing matches at a small one, everything at a
    chance-level one.

    >>> import numpy as np
    >>> from raymatch.match import match_curve
    >>> from raymatch.match.synthetic import relu_pair
    >>> A, B = relu_pair(1000, 12, 10, seed=0)
    >>> A.shape, B.shape, A.dtype, bool((A >= 0).all())
    ((1000, 12), (1000, 10), dtype('float32'), True)
    >>> curve = match_curve(A, B)
    >>> [(curve.at(eps).size_a, curve.at(eps).size_b) for eps in (0.2, 0.5, 0.9)]
    [(0, 0), (3, 3), (12, 10)]
    """
    rng = np.random.default_rng(seed)
    n_groups_budget = int(shared_fraction * min(n_a, n_b))
    sizes: list[int] = []
    while sum(sizes) + group_sizes[len(sizes) % len(group_sizes)] <= n_groups_budget:
        sizes.append(group_sizes[len(sizes) % len(group_sizes)])
    latents = [np.maximum(rng.standard_normal((n_samples, size)), 0.0) for size in sizes]

    def side(n_neurons: int) -> np.ndarray:
        """Draw one layer: its planted neurons (one per latent dimension), then private ReLUs, shuffled."""
        planted = []
        for latent in latents:
            size = latent.shape[1]
            signal = latent @ rng.uniform(0.2, 1.0, (size, size))
            noise = np.maximum(rng.standard_normal((n_samples, size)), 0.0)
            scale = rng.uniform(0.0, max_noise, size)
            planted.append(_unit(signal) + scale * _unit(noise))
        n_private = n_neurons - sum(sizes)
        mixing = rng.standard_normal((n_samples // 100 + 32, n_private))
        private = np.maximum(rng.standard_normal((n_samples, mixing.shape[0])) @ mixing, 0.0)
        layer = np.hstack([*planted, private])
        return layer[:, rng.permutation(n_neurons)].astype(dtype)

    return side(n_a), side(n_b)


def _unit(columns: np.ndarray) -> np.ndarray:
    """Divide every column by its norm."""
    return columns / np.linalg.norm(columns, axis=0)
