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

    Returns
    -------
    A : numpy.ndarray, shape (n_samples, n_a)
    B : numpy.ndarray, shape (n_samples, n_b)
    """
    rng = np.random.default_rng(seed)
    n_groups_budget = int(shared_fraction * min(n_a, n_b))
    sizes: list[int] = []
    while sum(sizes) + group_sizes[len(sizes) % len(group_sizes)] <= n_groups_budget:
        sizes.append(group_sizes[len(sizes) % len(group_sizes)])
    latents = [np.maximum(rng.standard_normal((n_samples, size)), 0.0) for size in sizes]

    def side(n_neurons: int) -> np.ndarray:
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
    return columns / np.linalg.norm(columns, axis=0)
