"""Per-(model, layer) factorisation: an orthonormal basis of the live neurons' span.

A layer's activation matrix ``A`` (n_samples × n_neurons) enters every ratio only through the
geometry of its columns. :func:`factor` normalises the live columns to unit norm and factors
them once, ``A_live / norms = basis @ coords``. A pair of layers then needs only both ``coords``
and the cross product ``basis_aᵀ basis_b`` — one GEMM over the samples — so a population
factors each (model, layer) once instead of once per pair (DESIGN.md §1, "Doing it fast").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from ._blas import one_thread, small
from .inputs import DEAD_RTOL, RANK_RTOL, activation_array

# Unpivoted QR is trusted as rank-revealing only when its triangle is this well conditioned
# (reciprocal condition estimate); below it the rank is settled by an SVD of the small factor.
_TRUST_RCOND = 1e-7


@dataclass(frozen=True, eq=False)
class Factor:
    """The factorised live neurons of one activation matrix.

    Attributes
    ----------
    basis : numpy.ndarray, shape (n_samples, rank)
        Orthonormal basis of the span of the live neurons.
    coords : numpy.ndarray, shape (rank, n_live)
        Coordinates of the unit-normalised live neurons in ``basis``; every column has norm 1.
    live : numpy.ndarray, shape (n_live,), int64
        Column indices of the live neurons, sorted.
    n_samples, n_neurons : int
        Shape of the factored matrix.
    centered : bool
        Whether column means were subtracted before factoring.

    Examples
    --------
    A population factors each (model, layer) once and passes the factor to every pair:

    >>> import numpy as np
    >>> from raymatch.match import factor, max_match
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 3))
    >>> F = factor(A)
    >>> others = [A @ rng.standard_normal((3, 3)), rng.standard_normal((100, 3))]
    >>> [max_match(F, B, 0.0).similarity for B in others]
    [1.0, 0.0]

    Every live neuron is a unit vector in the coordinates of the orthonormal ``basis``:

    >>> bool(np.allclose(F.basis.T @ F.basis, np.eye(F.rank)))
    True
    >>> np.linalg.norm(F.coords, axis=0).round(6).tolist()
    [1.0, 1.0, 1.0]
    """

    basis: np.ndarray
    coords: np.ndarray
    live: np.ndarray
    n_samples: int
    n_neurons: int
    centered: bool

    @property
    def rank(self) -> int:
        """Dimension of the span of the live neurons."""
        return self.coords.shape[0]

    @property
    def dead(self) -> np.ndarray:
        """Sorted int64 indices of the dead neurons."""
        return _complement(self.live, self.n_neurons)


@dataclass(frozen=True, eq=False)
class Prepared:
    """One layer's live neurons, normalised to unit norm, before any factorisation.

    Attributes
    ----------
    columns : numpy.ndarray, shape (n_samples, n_live)
        The live neurons, each divided by its norm.
    live : numpy.ndarray, shape (n_live,), int64
        Column indices of the live neurons, sorted.
    n_samples, n_neurons : int
        Shape of the original matrix.
    centered : bool
        Whether column means were subtracted.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.factor import prepare
    >>> P = prepare(np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]]))
    >>> P.columns.shape, P.live.tolist(), P.dead.tolist()
    ((2, 2), [0, 2], [1])
    >>> P.columns[:, 0].tolist()
    [0.6, 0.8]
    """

    columns: np.ndarray
    live: np.ndarray
    n_samples: int
    n_neurons: int
    centered: bool

    @property
    def dead(self) -> np.ndarray:
        """Sorted int64 indices of the dead neurons."""
        return _complement(self.live, self.n_neurons)


def prepare(activations, *, center: bool = False, name: str = "A", out: np.ndarray | None = None) -> Prepared:
    """Validate, optionally center, find the dead neurons and normalise the live ones.

    Parameters
    ----------
    activations : array_like or torch.Tensor, shape (n_samples, n_neurons)
        One row per sample, one column per neuron; any real dtype (computed in float64).
    center : bool
        Subtract each column's mean first.
    name : str
        Name used in error messages.
    out : numpy.ndarray, shape (n_samples, n_neurons), float64, column-major, optional
        Storage to work in (a slice of a joint matrix); the live columns end up first.

    Returns
    -------
    Prepared
        The unit-norm live columns (a view of ``out`` when given) and the live indices.

    Examples
    --------
    A neuron is dead when its norm is at most ``DEAD_RTOL`` times the layer's largest norm:

    >>> import numpy as np
    >>> from raymatch.match.factor import prepare
    >>> A = np.array([[1.0, 1e-9, 0.0], [1.0, 0.0, 2.0]])
    >>> P = prepare(A)
    >>> P.live.tolist(), P.dead.tolist(), np.linalg.norm(P.columns, axis=0).round(6).tolist()
    ([0, 2], [1], [1.0, 1.0])
    """
    array = activation_array(activations, name)
    matrix = np.empty(array.shape, order="F") if out is None else out
    matrix[...] = array
    if center:
        matrix -= matrix.mean(axis=0)
    n_samples, n_neurons = matrix.shape
    norms = np.linalg.norm(matrix, axis=0)
    largest = float(norms.max())
    live = np.flatnonzero(norms > DEAD_RTOL * largest) if largest > 0.0 else np.zeros(0, np.int64)
    live = live.astype(np.int64)
    if live.size == n_neurons:
        matrix /= norms
        columns = matrix
    else:
        columns = matrix[:, : live.size]
        columns[...] = matrix[:, live] / norms[live]
    return Prepared(columns, live, n_samples, n_neurons, center)


def factor(activations, *, center: bool = False, name: str = "A") -> Factor:
    """Factor one activation matrix for reuse across many pairs.

    Parameters
    ----------
    activations : array_like or torch.Tensor, shape (n_samples, n_neurons)
        One row per sample, one column per neuron; any real dtype (computed in float64).
    center : bool, default False
        Subtract each column's mean first (off in the paper).
    name : str, default "A"
        Name used in error messages.

    Returns
    -------
    Factor
        Orthonormal basis of the live neurons' span and their unit-norm coordinates in it.

    See Also
    --------
    Factor : What the result holds, and how a population reuses it.

    Examples
    --------
    A dead neuron is set aside, and a duplicated direction adds no rank:

    >>> import numpy as np
    >>> from raymatch.match import factor
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 4))
    >>> A[:, 1] = 0.0
    >>> A[:, 3] = 2.0 * A[:, 0]
    >>> F = factor(A)
    >>> F.rank, F.live.tolist(), F.dead.tolist(), F.basis.shape, F.coords.shape
    (2, [0, 2, 3], [1], (100, 2), (2, 3))
    """
    layer = prepare(activations, center=center, name=name)
    if layer.live.size == 0:
        basis, coords = np.zeros((layer.n_samples, 0)), np.zeros((0, 0))
    else:
        basis, coords = orthonormal_coords(layer.columns, overwrite=True)
    return Factor(basis, coords, layer.live, layer.n_samples, layer.n_neurons, center)


def _complement(live: np.ndarray, n: int) -> np.ndarray:
    """Sorted int64 indices in ``range(n)`` that are not in ``live``."""
    mask = np.ones(n, dtype=bool)
    mask[live] = False
    return np.flatnonzero(mask).astype(np.int64)


def orthonormal_coords(columns: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rank-revealing thin factorisation ``columns ≈ basis @ coords``.

    Parameters
    ----------
    columns : numpy.ndarray, shape (m, k), float64, non-zero columns
        The matrix to factor (in practice unit-norm neurons).
    overwrite : bool
        Let the QR overwrite ``columns`` (saves a copy of a large matrix).

    Returns
    -------
    basis : numpy.ndarray, shape (m, rank)
        Orthonormal columns.
    coords : numpy.ndarray, shape (rank, k)
        Directions with singular value at most ``RANK_RTOL`` times the largest are dropped.

    Examples
    --------
    A third column that is the sum of the first two adds no rank:

    >>> import numpy as np
    >>> from raymatch.match.factor import orthonormal_coords
    >>> X = np.random.default_rng(0).standard_normal((50, 2))
    >>> X = np.column_stack([X, X.sum(axis=1)])
    >>> basis, coords = orthonormal_coords(X)
    >>> basis.shape, coords.shape, bool(np.allclose(basis @ coords, X))
    ((50, 2), (2, 3), True)
    """
    with one_thread(small(columns.size)):
        q, r = scipy.linalg.qr(columns, mode="economic", check_finite=False, overwrite_a=overwrite)
        p = min(r.shape)
        rcond, info = lapack.dtrcon(np.asfortranarray(r[:p, :p]), norm="1", uplo="U", diag="N")
        if info == 0 and rcond > _TRUST_RCOND:
            return q, r
        u, s, vt = scipy.linalg.svd(r, full_matrices=False, check_finite=False)
        rank = int(np.count_nonzero(s > RANK_RTOL * s[0]))
        return q @ u[:, :rank], s[:rank, None] * vt[:rank]
