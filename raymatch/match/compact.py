"""What a store keeps of a :class:`~raymatch.match.factor.Factor`: everything but its basis.

A :class:`CompactFactor` holds the small triangular or coordinate factor, the live neurons, their norms and the
column means, a few hundred kilobytes against the megabytes of the activations. :meth:`CompactFactor.rebuild` turns
it back into a :class:`~raymatch.match.factor.Factor` from the activations with two passes of BLAS-3 over the
samples; :func:`compact_factor` makes one with the rank decisions of :func:`~raymatch.match.factor.factor`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from ._blas import one_thread, small
from .factor import Factor, prepare, settle_rank
from .inputs import activation_array

# A rebuilt basis whose Gram matrix is farther than this from the identity was not made from the
# activations it is rebuilt from (honest rounding stays near 1e-6 even at condition 1e10).
_REBUILD_MISMATCH = 1e-3


@dataclass(frozen=True, eq=False)
class CompactFactor:
    """A :class:`Factor` without its basis: what a store keeps, rebuilt from the activations.

    The basis is the one large part of a factor (n_samples × rank in float64, twice the bytes of
    float32 activations). It follows from the activations and a small factor: with ``X`` the
    unit-norm live columns, either ``X = basis @ coords`` with ``coords`` upper trapezoidal (a QR
    triangle, the usual case), so that ``basis = X[:, :p] @ inv(coords[:, :p])``, or, for a layer
    whose triangle is too ill-conditioned to trust, ``coords = S Vᵀ`` from the kept singular
    triplets, so that ``basis = X V S⁻¹``. :meth:`rebuild` does that and re-orthogonalises once.

    Attributes
    ----------
    coords : numpy.ndarray, shape (p, n_live), float64
        The QR triangle of ``X`` (``singular`` is None), or ``S Vᵀ`` of its kept singular triplets.
    singular : numpy.ndarray, shape (rank,), float64, or None
        The kept singular values ``S`` when ``coords`` is ``S Vᵀ``.
    live, n_samples, n_neurons, centered, norms, means
        As in :class:`Factor`.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import factor, match_curve
    >>> from raymatch.match import compact_factor
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((1000, 8)).astype(np.float32)
    >>> A[:, 5] = 0.0
    >>> small = compact_factor(A)
    >>> small.coords.shape, small.live.size, small.nbytes < A.nbytes // 10
    ((7, 7), 7, True)
    >>> F = small.rebuild(A)
    >>> bool(np.allclose(F.basis.T @ F.basis, np.eye(7), atol=1e-14))
    True
    >>> B = rng.standard_normal((1000, 6))
    >>> bool(np.allclose(match_curve(F, B).critical_a, match_curve(factor(A), B).critical_a, atol=1e-12))
    True
    """

    coords: np.ndarray
    singular: np.ndarray | None
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
    def nbytes(self) -> int:
        """Bytes of the arrays held (what a store keeps, before any encoding)."""
        arrays = (self.coords, self.singular, self.live, self.norms, self.means)
        return sum(array.nbytes for array in arrays if array is not None)

    def rebuild(self, activations, *, name: str = "A") -> Factor:
        """The :class:`Factor` of ``activations``, the matrix this was made from.

        Parameters
        ----------
        activations : array_like or torch.Tensor, shape (n_samples, n_neurons)
            The same matrix :func:`compact_factor` was given (same values, any dtype it was given in).
        name : str
            Name used in error messages.

        Returns
        -------
        Factor
            Orthonormal basis (to rounding, like a Householder QR's) and the coordinates in it.

        Raises
        ------
        ValueError
            When ``activations`` has another shape, or is not the matrix this was made from.

        Notes
        -----
        Cost: the basis is ``X`` times the inverse of a small triangle (or of ``V S⁻¹``), one
        BLAS-3 pass over the samples; then its Gram matrix (a second pass) and one multiplication
        by the inverse of that Gram matrix's Cholesky factor (a third), which restores
        orthogonality to rounding whatever the conditioning of the layer (a triangular solve alone
        loses about ``cond × 1e-16``). About 3 n k² flops for n samples and k live neurons,
        against 2 n k² for the cross product of one pair.
        """
        array = activation_array(activations, name)
        if array.shape != (self.n_samples, self.n_neurons):
            raise ValueError(f"{name} has shape {array.shape}, but its factor was made from a "
                             f"({self.n_samples}, {self.n_neurons}) matrix")
        k = self.live.size
        parts = (self.live, self.n_samples, self.n_neurons, self.centered, self.norms, self.means)
        if k == 0:
            return Factor(np.zeros((self.n_samples, 0)), np.zeros((0, 0)), *parts)
        columns = np.empty((self.n_samples, k), order="F")
        columns[...] = array if k == self.n_neurons else array[:, self.live]
        if self.centered:  # the same operations as prepare(): the same unit-norm columns, bit for bit
            columns -= self.means[self.live]
        columns /= self.norms
        with one_thread(small(columns.size)):
            if self.singular is None:
                p = self.coords.shape[0]
                inverse = _triangle_inverse(self.coords[:, :p])
                basis = blas.dtrmm(1.0, inverse, columns[:, :p], side=1, lower=0, overwrite_b=1)
            else:
                basis = columns @ (self.coords.T / (self.singular * self.singular))
            basis, coords = _reorthogonalise(basis, self.coords, name)
        return Factor(basis, coords, *parts)


def compact_factor(activations, *, center: bool = False, name: str = "A") -> CompactFactor:
    """Factor one activation matrix, keeping only what :meth:`CompactFactor.rebuild` needs besides it.

    The same rank decisions as :func:`factor` (the same QR triangle and the same SVD fallback), at
    the cost of the QR alone: no basis is formed.

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
    CompactFactor
        The small factor, live neurons, norms and means; about ``n_live² × 8`` bytes.

    Examples
    --------
    A duplicated direction adds no rank: the triangle is then replaced by singular triplets.

    >>> import numpy as np
    >>> from raymatch.match import compact_factor
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 4))
    >>> A[:, 3] = 2.0 * A[:, 0]
    >>> small = compact_factor(A)
    >>> small.rank, small.coords.shape, small.singular.shape
    (3, (3, 4), (3,))
    >>> compact_factor(A[:, :3]).singular is None
    True
    """
    layer = prepare(activations, center=center, name=name)
    singular = None
    if layer.live.size == 0:
        coords = np.zeros((0, 0))
    else:
        with one_thread(small(layer.columns.size)):
            r = _qr_triangle(layer.columns)
            settled = settle_rank(r)
        if settled is None:
            coords = r
        else:
            _, singular, vt = settled
            coords = singular[:, None] * vt
    return CompactFactor(coords, singular, layer.live, layer.n_samples, layer.n_neurons, center,
                         layer.norms, layer.means)


def _qr_triangle(columns: np.ndarray) -> np.ndarray:
    """The upper-trapezoidal R (p × k, p = min(m, k)) of a QR of ``columns``, overwriting them; no Q."""
    lwork = int(lapack.dgeqrf_lwork(*columns.shape)[0])
    qr, _, _, info = lapack.dgeqrf(columns, lwork=lwork, overwrite_a=1)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise np.linalg.LinAlgError(f"dgeqrf failed (info {info})")
    return np.triu(qr[: min(qr.shape)])


def _triangle_inverse(triangle: np.ndarray) -> np.ndarray:
    """Inverse of a non-singular upper triangle (multiplying by it is twice as fast as a triangular solve)."""
    inverse, info = lapack.dtrtri(np.asfortranarray(triangle), lower=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"singular triangular factor (dtrtri info {info})")
    return inverse


def _reorthogonalise(basis: np.ndarray, coords: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One Cholesky-QR step: ``basis`` (nearly orthonormal, ``X ≈ basis @ coords``) made orthonormal.

    Returns ``(basis R⁻¹, R coords)`` with ``RᵀR`` the Gram matrix of ``basis``; ``basis`` is overwritten.
    """
    gram = blas.dsyrk(1.0, basis, trans=1)  # upper triangle of basisᵀ basis
    if np.abs(np.triu(gram) - np.eye(gram.shape[0])).max(initial=0.0) > _REBUILD_MISMATCH:
        raise ValueError(f"{name} is not the matrix its factor was made from (the rebuilt basis is not orthonormal)")
    r, info = lapack.dpotrf(gram, lower=0, clean=1)
    if info != 0:  # pragma: no cover - the check above keeps the Gram matrix far from singular
        q, r = scipy.linalg.qr(basis, mode="economic", check_finite=False)
        return q, r @ coords
    basis = blas.dtrmm(1.0, _triangle_inverse(r), basis, side=1, lower=0, overwrite_b=1)
    return basis, blas.dtrmm(1.0, r, np.asfortranarray(coords), side=0, lower=0)
