"""A plain float64 numpy maximum match (Algorithm 1 of Wang et al. 2018), for checking stored results.

Written from the definition, not from raymatch's code: starting from every live neuron of both sides, drop each
neuron whose ratio to the span of the other side's kept neurons exceeds ε, alternately, until nothing changes.
"""

from __future__ import annotations

import numpy as np

#: A neuron is dead when its norm is at most this fraction of its layer's largest neuron norm.
_DEAD = 1e-6


def _ratio(columns: np.ndarray, span: np.ndarray) -> np.ndarray:
    """‖x − P x‖ / ‖x‖ of each column x of ``columns`` (n_samples, k) against the span of ``span`` (n_samples, m)."""
    if span.shape[1] == 0:
        return np.ones(columns.shape[1])
    basis, singular, _ = np.linalg.svd(span, full_matrices=False)
    basis = basis[:, singular > singular[0] * 1e-10]
    residual = columns - basis @ (basis.T @ columns)
    return np.linalg.norm(residual, axis=0) / np.linalg.norm(columns, axis=0)


def _live(x: np.ndarray) -> list[int]:
    """Columns whose norm exceeds 1e-6 of the layer's largest column norm (the others are dead)."""
    norms = np.linalg.norm(x, axis=0)
    return [i for i, norm in enumerate(norms) if norm > _DEAD * norms.max()] if norms.max() > 0 else []


def plain_max_match(a: np.ndarray, b: np.ndarray, eps: float, floor: float) -> tuple[list[int], list[int]]:
    """The maximum ε-match of the columns of ``a`` (n_samples, n_a) and ``b`` (n_samples, n_b), in float64.

    Returns the sorted neuron indices of each side; neurons with a (near) zero column are in no match.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    threshold = max(eps, floor)
    keep_a, keep_b = _live(a), _live(b)
    while True:
        ratios_a = _ratio(a[:, keep_a], b[:, keep_b]) if keep_a else np.array([])
        new_a = [i for i, r in zip(keep_a, ratios_a, strict=True) if r <= threshold]
        ratios_b = _ratio(b[:, keep_b], a[:, new_a]) if keep_b else np.array([])
        new_b = [j for j, r in zip(keep_b, ratios_b, strict=True) if r <= threshold]
        if new_a == keep_a and new_b == keep_b:
            return keep_a, keep_b
        keep_a, keep_b = new_a, new_b
