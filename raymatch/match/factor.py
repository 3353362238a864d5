"""Per-(model, layer) factorisation: an orthonormal basis of the live neurons' span.

A layer's activation matrix ``A`` (n_samples × n_neurons) enters every ratio only through the
geometry of its columns. :func:`factor` normalises the live columns to unit norm and factors
them once, ``A_live / norms = basis @ coords``. A pair of layers then needs only both ``coords``
and the cross product ``basis_aᵀ basis_b`` — one GEMM over the samples — so a population
factors each (model, layer) once instead of once per pair (DESIGN.md §1, "Doing it fast").

What a store keeps of a factor, without its basis, is in :mod:`raymatch.match.compact`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from ._blas import one_thread, small
from .inputs import DEAD_RTOL, RANK_RTOL, activation_array, check_same_samples

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
    norms : numpy.ndarray, shape (n_live,), float64
        Norm of each live column as factored (after centring when ``centered``), so that the live
        columns are ``basis @ coords * norms``.
    means : numpy.ndarray, shape (n_neurons,), float64
        Column means of the activations before any centring (what ``centered`` subtracted, and what
        linear CKA centres with).

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
    >>> bool(np.allclose(F.basis @ F.coords * F.norms, A))
    True
    """

    basis: np.ndarray
    coords: np.ndarray
    live: np.ndarray
    n_samples: int
    n_neurons: int
    centered: bool
    norms: np.ndarray
    means: np.ndarray

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
    norms : numpy.ndarray, shape (n_live,), float64
        Norm of each live column (after centring when ``centered``), before normalisation.
    means : numpy.ndarray, shape (n_neurons,), float64
        Column means of the original matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.factor import prepare
    >>> P = prepare(np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]]))
    >>> P.columns.shape, P.live.tolist(), P.dead.tolist()
    ((2, 2), [0, 2], [1])
    >>> P.columns[:, 0].tolist(), P.norms.tolist(), P.means.tolist()
    ([0.6, 0.8], [5.0, 1.4142135623730951], [3.5, 0.0, 1.0])
    """

    columns: np.ndarray
    live: np.ndarray
    n_samples: int
    n_neurons: int
    centered: bool
    norms: np.ndarray
    means: np.ndarray

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
    means = matrix.mean(axis=0)
    if center:
        matrix -= means
    n_samples, n_neurons = matrix.shape
    norms = np.linalg.norm(matrix, axis=0)
    largest = float(norms.max())
    live = np.flatnonzero(norms > DEAD_RTOL * largest) if largest > 0.0 else np.zeros(0, np.int64)
    live = live.astype(np.int64)
    if live.size == n_neurons:
        matrix /= norms
        columns = matrix
    else:
        norms = norms[live]
        columns = matrix[:, : live.size]
        columns[...] = matrix[:, live] / norms
    return Prepared(columns, live, n_samples, n_neurons, center, norms, means)


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
    return Factor(basis, coords, layer.live, layer.n_samples, layer.n_neurons, center, layer.norms, layer.means)


def cross_product(fa: Factor, fb: Factor) -> np.ndarray:
    """Return ``fa.basis.T @ fb.basis``, the one product over the samples that a pair of factors needs.

    Compute it once per pair and pass it to both :func:`~raymatch.match.match_curve` (``cross=``)
    and :func:`~raymatch.match.cka.linear_cka_factors`.

    Parameters
    ----------
    fa, fb : Factor
        Two factors of the same samples.

    Returns
    -------
    numpy.ndarray, shape (fa.rank, fb.rank)
        Inner products between the basis vectors of ``fa`` and those of ``fb``.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import cross_product, factor
    >>> rng = np.random.default_rng(0)
    >>> fa, fb = factor(rng.standard_normal((50, 3))), factor(rng.standard_normal((50, 2)))
    >>> cross_product(fa, fb).shape
    (3, 2)
    """
    check_same_samples(fa.n_samples, fb.n_samples)
    # One thread even for a large GEMM: switching the thread count back and forth between this and
    # the peel costs more than the second thread saves (measured 0.16 s steady vs 0.13-0.29 s for
    # a 10,000-sample 512 + 512 pair).
    with one_thread():
        return fa.basis.T @ fb.basis


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
        settled = settle_rank(r)
        if settled is None:
            return q, r
        u, s, vt = settled
        return q @ u, s[:, None] * vt


def settle_rank(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """None when the QR triangle ``r`` (p × k) is trusted as it is, else its kept singular triplets.

    The one rank decision of :func:`factor` and :func:`~raymatch.match.compact.compact_factor`.

    Returns
    -------
    None or (u, s, vt)
        ``u`` (p × rank), ``s`` (rank,), ``vt`` (rank × k): the singular triplets of ``r`` with
        ``s > RANK_RTOL * s[0]``.
    """
    p = min(r.shape)
    rcond, info = lapack.dtrcon(np.asfortranarray(r[:p, :p]), norm="1", uplo="U", diag="N")
    if info == 0 and rcond > _TRUST_RCOND:
        return None
    u, s, vt = scipy.linalg.svd(r, full_matrices=False, check_finite=False)
    rank = int(np.count_nonzero(s > RANK_RTOL * s[0]))
    return u[:, :rank], s[:rank], vt[:rank]


def row_permutation(n_samples: int, seed: int) -> np.ndarray:
    """The fixed permutation of ``n_samples`` rows that the permuted-row null applies to model b.

    Parameters
    ----------
    n_samples : int
        Number of rows (samples).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray, shape (n_samples,), int64
        ``rows[i]`` is the original row placed at position ``i``: the permuted matrix is ``B[rows]``.
    """
    return np.random.default_rng(seed).permutation(n_samples).astype(np.int64)


def permute_rows(fb: Factor, rows: np.ndarray) -> Factor:
    """The :class:`Factor` of ``B[rows]`` from the factor of ``B``, without refactoring.

    Permuting the samples permutes the basis's rows and leaves everything else as it is: ``B[rows] =
    basis[rows] @ coords * norms``, ``basis[rows]`` is still orthonormal, and column norms and means do not
    depend on the order of the rows. Spectra are kept; the correspondence of samples with any other model's is not.

    Parameters
    ----------
    fb : Factor
        Factor of ``B`` (n_samples × n_neurons).
    rows : numpy.ndarray, shape (n_samples,), int
        A permutation of ``range(n_samples)`` (see :func:`row_permutation`).

    Returns
    -------
    Factor
        A new factor; ``fb`` is not changed.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import factor, match_curve
    >>> from raymatch.match.factor import permute_rows, row_permutation
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((60, 4)), rng.standard_normal((60, 3))
    >>> rows = row_permutation(60, 0)
    >>> fast = match_curve(factor(A), permute_rows(factor(B), rows))
    >>> plain = match_curve(factor(A), factor(B[rows]))
    >>> bool(np.allclose(fast.critical_a, plain.critical_a) and np.allclose(fast.critical_b, plain.critical_b))
    True
    """
    rows = np.asarray(rows)
    if rows.shape != (fb.n_samples,) or not np.array_equal(np.sort(rows), np.arange(fb.n_samples)):
        raise ValueError(f"rows must be a permutation of range({fb.n_samples})")
    return Factor(np.ascontiguousarray(fb.basis[rows]), fb.coords, fb.live, fb.n_samples, fb.n_neurons, fb.centered,
                  fb.norms, fb.means)
