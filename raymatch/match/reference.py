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
    """Return the indices of the columns whose norm exceeds ``DEAD_RTOL`` times the largest column norm.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.reference import live_neurons
    >>> live_neurons(np.array([[1.0, 0.0, 1e-9], [0.0, 0.0, 0.0]])).tolist()
    [0]
    >>> live_neurons(np.zeros((3, 2))).tolist()
    []
    """
    norms = np.linalg.norm(A, axis=0)
    if norms.max() == 0.0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(norms > DEAD_RTOL * norms.max()).astype(np.int64)


def span_basis(S: np.ndarray) -> np.ndarray:
    """Return an orthonormal basis (n_samples, rank) of span(S), from the SVD of its normalised columns.

    Examples
    --------
    Parallel columns span one dimension; no columns span nothing:

    >>> import numpy as np
    >>> from raymatch.match.reference import span_basis
    >>> span_basis(np.array([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]])).shape
    (3, 1)
    >>> span_basis(np.zeros((3, 0))).shape
    (3, 0)
    """
    if S.shape[1] == 0:
        return np.zeros((S.shape[0], 0))
    unit = S / np.linalg.norm(S, axis=0)
    u, s, _ = np.linalg.svd(unit, full_matrices=False)
    return u[:, s > RANK_RTOL * s[0]]


def ratios(Z: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Return ``dist(z, span S) / ‖z‖`` for every column z of ``Z`` (n_samples, p); shape (p,).

    The ratio is the sine of the angle between ``z`` and the subspace.

    Examples
    --------
    ``(1, 1, 0)`` is at 45° to the first axis, ``(0, 0, 1)`` at 90°:

    >>> import numpy as np
    >>> from raymatch.match.reference import ratios
    >>> Z = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> ratios(Z, np.array([[1.0], [0.0], [0.0]])).round(3).tolist()
    [0.707, 1.0]
    """
    basis = span_basis(S)
    residual = Z - basis @ (basis.T @ Z)
    return np.linalg.norm(residual, axis=0) / np.linalg.norm(Z, axis=0)


def _max_match_within(A, B, X, Y, eps):
    """Run Algorithm 1 from the neuron sets ``X`` of A and ``Y`` of B (``eps`` already effective)."""
    while True:
        keep_x = X[ratios(A[:, X], B[:, Y]) <= eps] if X.size else X
        keep_y = Y[ratios(B[:, Y], A[:, X]) <= eps] if Y.size else Y
        if keep_x.size == X.size and keep_y.size == Y.size:
            return X, Y
        X, Y = keep_x, keep_y


def max_match(A, B, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Run Algorithm 1: from all live neurons, delete every neuron whose ratio exceeds ε, until stable.

    Examples
    --------
    B mixes A's first two neurons and adds an unrelated one: the maximum exact match is A's
    first two neurons against B's first two, as the fast path finds too.

    >>> import numpy as np
    >>> from raymatch.match import max_match, reference
    >>> rng = np.random.default_rng(0)
    >>> u, v, w = rng.standard_normal((3, 50))
    >>> A = np.column_stack([u, v, w])
    >>> B = np.column_stack([u + v, u - v, rng.standard_normal(50)])
    >>> X, Y = reference.max_match(A, B, 0.0)
    >>> X.tolist(), Y.tolist()
    ([0, 1], [0, 1])
    >>> max_match(A, B, 0.0).a.tolist()
    [0, 1]
    """
    A = as_activation_matrix(A, "A")
    B = as_activation_matrix(B, "B")
    return _max_match_within(A, B, live_neurons(A), live_neurons(B), effective_eps(eps))


def minimal_match(A, B, eps: float, neuron: tuple[str, int], candidates) -> tuple[np.ndarray, np.ndarray] | None:
    """Run the authors' v-minimal procedure, one neuron at a time, each step by Algorithm 1.

    ``candidates`` is the list of ``(side, index)`` to try, in order (see
    :func:`raymatch.match.candidate_order`). Returns None when ``neuron`` is not in the maximum match.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import candidate_order, reference
    >>> rng = np.random.default_rng(0)
    >>> u, v, w = rng.standard_normal((3, 50))
    >>> A = np.column_stack([u, v, w])
    >>> B = np.column_stack([u + v, u - v, rng.standard_normal(50)])
    >>> candidates, _ = candidate_order(np.arange(3), np.arange(3), None)
    >>> X, Y = reference.minimal_match(A, B, 0.0, ("a", 1), candidates)
    >>> X.tolist(), Y.tolist()
    ([0, 1], [0, 1])
    >>> reference.minimal_match(A, B, 0.0, ("a", 2), candidates) is None
    True
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
