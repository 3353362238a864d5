"""Linear centred kernel alignment (Kornblith et al. 2019), the context metric beside the match similarity.

:func:`linear_cka` reads two activation matrices; :func:`linear_cka_factors` gives the same number
from two :class:`~raymatch.match.Factor` objects and the cross product of their bases, which the
match of the same pair computes anyway, so a population's CKA costs small-matrix work only.
"""

from __future__ import annotations

import weakref

import numpy as np
from scipy.linalg import blas

from ._blas import one_thread
from .factor import Factor, cross_product
from .inputs import as_activation_matrix, check_same_samples

# ‖A_cᵀ A_c‖_F of each factor, computed once however many pairs the factor is in.
_SELF_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# A layer whose centred Gram matrix is this small against its raw one is constant (what is left is the
# rounding of subtracting n μ μᵀ): its CKA is 0, as linear_cka's exact centring gives.
_CONSTANT_RTOL = 1e-13


def linear_cka(A, B) -> float:
    """Compute the linear CKA of two layers: ``‖Bᵀ A‖²_F / (‖Aᵀ A‖_F ‖Bᵀ B‖_F)`` after centring every column.

    Parameters
    ----------
    A : array_like or torch.Tensor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like or torch.Tensor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.

    Returns
    -------
    float
        In [0, 1]; 0 when either layer is constant over the samples.

    Examples
    --------
    CKA is invariant to rotations and isotropic scaling of the neurons, but not to a general
    invertible mix, which the match similarity ignores:

    >>> import numpy as np
    >>> from raymatch.match import linear_cka, max_match
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 5))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    >>> round(linear_cka(A, 3.0 * A @ Q), 3)
    1.0
    >>> M = rng.standard_normal((5, 5))
    >>> round(linear_cka(A, A @ M), 3), max_match(A, A @ M, 0.0).similarity
    (0.619, 1.0)

    Unrelated layers give a small value, a constant layer 0:

    >>> round(linear_cka(A, rng.standard_normal((100, 5))), 3)
    0.09
    >>> linear_cka(A, np.ones((100, 3)))
    0.0
    """
    a = as_activation_matrix(A, "A")
    b = as_activation_matrix(B, "B")
    check_same_samples(a.shape[0], b.shape[0])
    a -= a.mean(axis=0)
    b -= b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    scale = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / scale) if scale > 0 else 0.0


def linear_cka_factors(fa: Factor, fb: Factor, cross: np.ndarray | None = None) -> float:
    """Compute :func:`linear_cka` of two layers from their factors, without the activations.

    With ``M = coords * norms`` the live columns are ``basis @ M``, so the Gram cross product is
    ``Mₐᵀ (basisₐᵀ basis_b) M_b`` and centring subtracts ``n μₐ μ_bᵀ`` (the factors' column means;
    zero for a ``centered`` factor). Only small matrices are multiplied: with ``cross`` given the
    cost does not depend on the number of samples.

    Parameters
    ----------
    fa, fb : Factor
        Factors of the two layers over the same samples (centred or not, in any combination).
    cross : numpy.ndarray, shape (fa.rank, fb.rank), optional
        ``fa.basis.T @ fb.basis`` (:func:`~raymatch.match.cross_product`), when the caller has it
        already (for the same pair's :func:`~raymatch.match.match_curve`); computed otherwise.

    Returns
    -------
    float
        ``linear_cka`` of the activations the factors were made from, to rounding; dead neurons
        are left out (their share of either Gram matrix is at most about ``DEAD_RTOL²``).

    Raises
    ------
    ValueError
        When the factors have different numbers of samples or ``cross`` has the wrong shape.

    See Also
    --------
    linear_cka : The same number from the activation matrices.

    Examples
    --------
    Factor each layer once; one cross product then serves the pair's match curve and its CKA:

    >>> import numpy as np
    >>> from raymatch.match import cross_product, factor, linear_cka, linear_cka_factors, match_curve
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((200, 6)) + 3.0
    >>> B = np.hstack([A[:, :3] @ rng.standard_normal((3, 3)), rng.standard_normal((200, 2))])
    >>> fa, fb = factor(A), factor(B)
    >>> cross = cross_product(fa, fb)
    >>> curve = match_curve(fa, fb, cross=cross)
    >>> cka = linear_cka_factors(fa, fb, cross)
    >>> round(cka, 4), abs(cka - linear_cka(A, B)) < 1e-12
    (0.5921, True)
    """
    check_same_samples(fa.n_samples, fb.n_samples)
    if cross is None:
        cross = cross_product(fa, fb)
    elif np.shape(cross) != (fa.rank, fb.rank):
        raise ValueError(f"cross must have shape ({fa.rank}, {fb.rank}) (fa.rank, fb.rank); got {np.shape(cross)}")
    scale = _self_norm(fa) * _self_norm(fb)
    if scale == 0.0:
        return 0.0
    with one_thread():
        gram = _left(fa, _right(np.asarray(cross, dtype=np.float64), fb))  # Aᵀ B on the live columns
        gram -= fa.n_samples * np.outer(_means(fa), _means(fb))
    return float(np.einsum("ij,ij->", gram, gram) / scale)


def _weights(f: Factor) -> np.ndarray:
    """``coords * norms``: the live columns in the coordinates of the orthonormal ``basis``."""
    return f.coords * f.norms


def _means(f: Factor) -> np.ndarray:
    """Column means of the live columns as factored (zero once centred)."""
    return np.zeros(f.live.size) if f.centered else f.means[f.live]


def _triangular(matrix: np.ndarray) -> bool:
    return matrix.shape[0] == matrix.shape[1] and not np.tril(matrix, -1).any()


def _right(cross: np.ndarray, f: Factor) -> np.ndarray:
    """``cross @ M``, with a triangular multiply when ``M`` is a QR triangle (half the flops)."""
    weights = _weights(f)
    if _triangular(weights) and cross.shape[0]:
        return blas.dtrmm(1.0, weights, cross, side=1, lower=0)
    return cross @ weights


def _left(f: Factor, product: np.ndarray) -> np.ndarray:
    """``Mᵀ @ product``, with a triangular multiply when ``M`` is a QR triangle."""
    weights = _weights(f)
    if _triangular(weights) and product.shape[1]:
        return blas.dtrmm(1.0, weights, product, side=0, lower=0, trans_a=1)
    return weights.T @ product


def _self_norm(f: Factor) -> float:
    """‖A_cᵀ A_c‖_F of the factor's centred live columns (cached per factor)."""
    value = _SELF_NORMS.get(f)
    if value is None:
        weights = _weights(f)
        with one_thread():
            gram = weights.T @ weights
            raw = float(np.linalg.norm(gram)) if gram.size else 0.0
            gram -= f.n_samples * np.outer(_means(f), _means(f))
        value = float(np.linalg.norm(gram)) if gram.size else 0.0
        if value <= _CONSTANT_RTOL * raw:  # constant over the samples, up to the rounding of the subtraction
            value = 0.0
        _SELF_NORMS[f] = value
    return value
