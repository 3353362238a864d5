"""Plain float64 implementations of the standard similarity measures, written from their definitions.

The oracle of :mod:`raymatch.match.measures`: every function here reads the raw activation matrices,
centres them exactly, and computes the measure with SVDs of the n_samples × n_neurons matrices — no
factors, no cross products, no Gram matrices. It shares only the documented conventions with the
fast path (:mod:`raymatch.match.measures` states them):

- the neurons a measure sees are the *kept* ones: live (:func:`raymatch.match.reference.live_neurons`)
  and not flat (centred norm above ``DEAD_RTOL`` times the largest centred norm of the layer);
- a layer's centred span is spanned by its centred, unit-norm kept neurons, with directions of
  singular value at most ``RANK_RTOL`` times the largest dropped;
- a layer with no kept neuron is unrelated to everything: similarities 0, Procrustes distance 1;
- PWCCA's weights of tied canonical correlations follow :func:`raymatch.match.measures.projection_weights`
  (the one piece of code shared: it acts on the projections, however they were computed).

All functions take ``A`` (n_samples, n_a) and ``B`` (n_samples, n_b).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .inputs import DEAD_RTOL, RANK_RTOL, as_activation_matrix, check_same_samples
from .measures import projection_weights
from .reference import live_neurons


def kept_neurons(A) -> np.ndarray:
    """Sorted int64 indices of the neurons every measure sees: live and not flat.

    Examples
    --------
    A dead neuron (zeros) and a constant one (no variance) are left out:

    >>> import numpy as np
    >>> from raymatch.match.reference_measures import kept_neurons
    >>> A = np.array([[1.0, 0.0, 3.0, 2.0], [2.0, 0.0, 3.0, 0.0], [4.0, 0.0, 3.0, 1.0]])
    >>> kept_neurons(A).tolist()
    [0, 3]
    """
    A = as_activation_matrix(A, "A")
    live = live_neurons(A)
    norms = np.linalg.norm(A[:, live] - A[:, live].mean(axis=0), axis=0)
    if live.size == 0 or norms.max() == 0.0:
        return np.zeros(0, dtype=np.int64)
    return live[norms > DEAD_RTOL * norms.max()]


def centred(A) -> np.ndarray:
    """The kept neurons of ``A`` with their means subtracted, shape (n_samples, n_kept)."""
    A = as_activation_matrix(A, "A")
    X = A[:, kept_neurons(A)]
    return X - X.mean(axis=0)


def centred_basis(X: np.ndarray) -> np.ndarray:
    """Orthonormal basis (n_samples, rank) of the span of the centred columns ``X`` (SVD of the unit columns)."""
    if X.shape[1] == 0:
        return np.zeros((X.shape[0], 0))
    u, s, _ = np.linalg.svd(X / np.linalg.norm(X, axis=0), full_matrices=False)
    return u[:, s > RANK_RTOL * s[0]]


def _pair(A, B) -> tuple[np.ndarray, np.ndarray]:
    A = as_activation_matrix(A, "A")
    B = as_activation_matrix(B, "B")
    check_same_samples(A.shape[0], B.shape[0])
    return centred(A), centred(B)


def canonical_correlations(A, B) -> np.ndarray:
    """Cosines of the principal angles between the centred spans: ``min(rank_a, rank_b)`` values, descending."""
    X, Y = _pair(A, B)
    return _cosines(centred_basis(X), centred_basis(Y))


def _cosines(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    if U.shape[1] == 0 or V.shape[1] == 0:
        return np.zeros(0)
    return np.clip(np.linalg.svd(U.T @ V, compute_uv=False), 0.0, 1.0)


def cca(A, B) -> float:
    """Mean canonical correlation of the centred representations (0 when either has no kept neuron)."""
    rho = canonical_correlations(A, B)
    return float(rho.mean()) if rho.size else 0.0


def svd_truncated_basis(X: np.ndarray, keep: float) -> np.ndarray:
    """The top left singular vectors of the centred ``X`` whose variances first reach ``keep`` of the total.

    Variances are squared singular values; directions of singular value at most ``RANK_RTOL`` times the largest
    never count.
    """
    if X.shape[1] == 0:
        return np.zeros((X.shape[0], 0))
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    s = s[s > RANK_RTOL * s[0]]
    variance = np.cumsum(s**2)
    k = int(np.searchsorted(variance, keep * variance[-1] * (1 - 1e-12))) + 1
    return u[:, : min(k, s.size)]


def svcca(A, B, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): CCA of the top singular directions covering ``keep`` of each side's variance."""
    X, Y = _pair(A, B)
    rho = _cosines(svd_truncated_basis(X, keep), svd_truncated_basis(Y, keep))
    return float(rho.mean()) if rho.size else 0.0


def _projection_weighted(U: np.ndarray, V: np.ndarray, X: np.ndarray) -> float:
    """Morcos et al.'s weighted mean of the canonical correlations, weights from the neurons ``X`` of the U side."""
    left, rho, _ = np.linalg.svd(U.T @ V, full_matrices=False)
    r = min(U.shape[1], V.shape[1])
    variates = U @ left[:, :r]  # the U side's canonical variates, orthonormal columns
    rho = np.clip(rho[:r], 0.0, 1.0)
    return float(projection_weights(variates.T @ X, rho) @ rho)


def pwcca(A, B) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), the mean of its two directions (A's weights, B's weights)."""
    X, Y = _pair(A, B)
    U, V = centred_basis(X), centred_basis(Y)
    if U.shape[1] == 0 or V.shape[1] == 0:
        return 0.0
    return 0.5 * (_projection_weighted(U, V, X) + _projection_weighted(V, U, Y))


def procrustes(A, B) -> float:
    """Orthogonal Procrustes distance of the centred, unit-Frobenius-norm representations: ``1 − ‖X̃ᵀ Ỹ‖_*``."""
    X, Y = _pair(A, B)
    if X.shape[1] == 0 or Y.shape[1] == 0:
        return 1.0
    X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
    return float(min(max(1.0 - np.linalg.svd(X.T @ Y, compute_uv=False).sum(), 0.0), 1.0))


def linear_cka(A, B) -> float:
    """Linear CKA of the centred kept neurons: ``‖Xᵀ Y‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)``."""
    X, Y = _pair(A, B)
    if X.shape[1] == 0 or Y.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(X.T @ Y) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def correlations(A, B) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson correlations of every kept neuron of A with every kept neuron of B.

    Returns
    -------
    corr : numpy.ndarray, shape (n_kept_a, n_kept_b)
    kept_a, kept_b : numpy.ndarray of int64
        The neuron indices of the rows and columns.
    """
    X, Y = _pair(A, B)
    corr = (X / np.linalg.norm(X, axis=0)).T @ (Y / np.linalg.norm(Y, axis=0))
    return corr, kept_neurons(A), kept_neurons(B)


def neuron_corr(A, B) -> dict:
    """Every neuron's best absolute Pearson correlation with the other layer, and the one-to-one assignment's mean.

    Returns
    -------
    dict
        ``best_a`` (n_a,) and ``partner_a`` (n_a,): neuron j of A's largest ``|corr|`` with a neuron of B and that
        neuron (NaN and -1 for a neuron that is not kept); ``best_b``, ``partner_b`` likewise; ``assignment``: the
        (a, b) neuron pairs of the assignment maximising the summed ``|corr|``; ``mean``: their mean ``|corr|``
        (0 when either layer has no kept neuron).
    """
    A = as_activation_matrix(A, "A")
    B = as_activation_matrix(B, "B")
    corr, ka, kb = correlations(A, B)
    absolute = np.abs(corr)
    out = {}
    for side, n, rows, cols, matrix in (("a", A.shape[1], ka, kb, absolute), ("b", B.shape[1], kb, ka, absolute.T)):
        best, partner = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
        if rows.size and cols.size:
            best[rows] = matrix.max(axis=1)
            partner[rows] = cols[matrix.argmax(axis=1)]
        out[f"best_{side}"], out[f"partner_{side}"] = best, partner
    if not (ka.size and kb.size):
        return {**out, "assignment": np.zeros((0, 2), dtype=np.int64), "mean": 0.0}
    rows, cols = linear_sum_assignment(absolute, maximize=True)
    return {**out, "assignment": np.column_stack([ka[rows], kb[cols]]), "mean": float(absolute[rows, cols].mean())}
