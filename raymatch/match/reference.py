"""A plain float64 implementation written straight from the definitions.

This is the oracle of the tests and the baseline of the benchmark, not the production path:
every round recomputes every ratio from scratch by an SVD of the other side's remaining neurons,
exactly as Algorithm 1 of Wang et al. (2018) reads. It shares only the documented conventions
(tolerances, dead neurons, the deletion order) with the fast path.

All functions take ``A`` (n_samples, n_a) and ``B`` (n_samples, n_b) arrays and return sorted
int64 index arrays.
"""

from __future__ import annotations

import numpy as np

from .inputs import DEAD_RTOL, RANK_RTOL, as_activation_matrix, effective_eps


def live_neurons(A: np.ndarray) -> np.ndarray:
    """Indices of the columns whose norm exceeds ``DEAD_RTOL`` times the largest column norm."""
    norms = np.linalg.norm(A, axis=0)
    if norms.max() == 0.0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(norms > DEAD_RTOL * norms.max()).astype(np.int64)


def span_basis(S: np.ndarray) -> np.ndarray:
    """Orthonormal basis (n_samples, rank) of span(S), from the SVD of its normalised columns."""
    if S.shape[1] == 0:
        return np.zeros((S.shape[0], 0))
    unit = S / np.linalg.norm(S, axis=0)
    u, s, _ = np.linalg.svd(unit, full_matrices=False)
    return u[:, s > RANK_RTOL * s[0]]


def ratios(Z: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``dist(z, span S) / ‖z‖`` for every column z of ``Z`` (n_samples, p); shape (p,)."""
    basis = span_basis(S)
    residual = Z - basis @ (basis.T @ Z)
    return np.linalg.norm(residual, axis=0) / np.linalg.norm(Z, axis=0)


def _max_match_within(A, B, X, Y, eps):
    while True:
        keep_x = X[ratios(A[:, X], B[:, Y]) <= eps] if X.size else X
        keep_y = Y[ratios(B[:, Y], A[:, X]) <= eps] if Y.size else Y
        if keep_x.size == X.size and keep_y.size == Y.size:
            return X, Y
        X, Y = keep_x, keep_y


def max_match(A, B, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1: from all live neurons, delete every neuron whose ratio exceeds ε, until stable."""
    A = as_activation_matrix(A, "A")
    B = as_activation_matrix(B, "B")
    return _max_match_within(A, B, live_neurons(A), live_neurons(B), effective_eps(eps))


def minimal_match(A, B, eps: float, neuron: tuple[str, int], candidates) -> tuple[np.ndarray, np.ndarray] | None:
    """The authors' v-minimal procedure, one neuron at a time, each step by Algorithm 1.

    ``candidates`` is the list of ``(side, index)`` to try, in order (see
    :func:`raymatch.match.candidate_order`). Returns None when ``neuron`` is not in the maximum match.
    """
    A = as_activation_matrix(A, "A")
    B = as_activation_matrix(B, "B")
    eps = effective_eps(eps)
    X, Y = _max_match_within(A, B, live_neurons(A), live_neurons(B), eps)
    side, index = neuron
    if index not in (X if side == "a" else Y):
        return None
    for other_side, other in candidates:
        if (other_side, other) == neuron or other not in (X if other_side == "a" else Y):
            continue
        X2 = X[X != other] if other_side == "a" else X
        Y2 = Y[Y != other] if other_side == "b" else Y
        X2, Y2 = _max_match_within(A, B, X2, Y2, eps)
        if index in (X2 if side == "a" else Y2):
            X, Y = X2, Y2
    return X, Y
