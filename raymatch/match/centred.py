"""The centred geometry of a factored layer, from its factor alone: what every standard measure reads.

A :class:`~raymatch.match.Factor` holds the live columns as ``A_L = basis @ M`` with ``M = coords * norms``
(rank × n_live) and their column means μ. Centring is ``P A_L`` with ``P = I − 1 1ᵀ / d``, so everything the
measures need follows from small matrices (DESIGN.md §1, "Doing it fast"):

- ``s = basisᵀ 1`` solves ``Mᵀ s = d μ`` (the column sums of the live neurons), so the centred self
  product of the basis is ``basisᵀ P basis = I − s sᵀ / d``. Its eigenvectors are ŝ = s / ‖s‖, with eigenvalue
  ``λ = 1 − ‖s‖² / d`` (the squared sine of the angle between the constant vector and the layer's span),
  and any orthonormal complement ``E`` of ŝ, with eigenvalue 1.
- The centred span therefore has the orthonormal *frame* ``P basis Φ`` with ``Φ = [E, ŝ / √λ]`` (rank
  columns), or ``Φ = E`` (rank − 1 columns) when ``λ ≤ CONSTANT_IN_SPAN_TOL``: the constant vector lies in
  the span (a constant neuron, or neurons that sum to a constant) and centring removes that direction.
- In that frame the centred neurons have coordinates ``T = [Eᵀ M; √λ ŝᵀ M]`` (``X_c = P basis Φ T``), and two
  layers' frames have the cross product ``G = Φₐᵀ (basisₐᵀ basis_b − sₐ s_bᵀ / d) Φ_b``: canonical
  correlations are its singular values, without ever whitening the neurons themselves.
- The centred cross product of the neurons, ``X_aᵀ X_b = Mₐᵀ (basisₐᵀ basis_b) M_b − d μₐ μ_bᵀ``, needs no
  ``s`` at all (as in :func:`~raymatch.match.linear_cka_factors`).

A factor made with ``center=True`` has μ = 0 and ``s = 0``: its frame is the basis itself and ``T = M``, and
everything is as accurate as the factor. A raw factor's ``s`` carries the rounding of a solve with its small factor
(about 1e-16 × cond(coords) × ‖s‖), which the frame's last direction divides by √λ: when a raw span nearly contains
the constant vector (λ small, e.g. wide layers with large means over few samples), canonical correlations lose
about ``1e-16 · cond / √λ`` (1e-9 at cond 3,000 and λ = 4e-8). A factor does not keep ``basisᵀ 1``, which would
make that ``1e-16 / √λ``.
Per-layer results are cached (keyed on the factor's ``coords``, which :func:`~raymatch.match.factor.permute_rows`
shares), so a layer in many pairs pays its small SVDs once.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ._blas import one_thread
from .factor import Factor
from .inputs import DEAD_RTOL, RANK_RTOL, check_same_samples

#: The constant vector counts as lying in a layer's span when the squared sine of its angle to the span,
#: ``λ = 1 − ‖basisᵀ 1‖² / d``, is at most this: centring then removes one direction of the span. (λ comes from
#: the column means through the layer's small factor; its rounding error grows with the factor's condition
#: number, about 1e-16 × cond, so an exact dependency never leaves a spurious direction of size √λ behind.)
CONSTANT_IN_SPAN_TOL = 1e-10

# Per-layer centred geometry, computed once per factor: keyed on the id of its coords array (shared by row
# permutations of the factor; arrays are unhashable) and dropped when that array is.
_LAYERS: dict[int, tuple] = {}


@dataclass(frozen=True, eq=False)
class CentredLayer:
    """One layer's kept neurons, centred, in an orthonormal frame of its centred span.

    Attributes
    ----------
    kept : numpy.ndarray, shape (n_kept,), int64
        Sorted indices of the neurons the measures see: live and not flat.
    columns : numpy.ndarray, shape (n_kept,), int64
        Positions of ``kept`` among the factor's live columns.
    frame : numpy.ndarray, shape (rank, r)
        ``Φ``: the frame ``P basis Φ`` is orthonormal and spans the centred live neurons.
    coords : numpy.ndarray, shape (r, n_kept)
        ``T``: the centred kept neurons in the frame (their norms are ``norms``).
    norms : numpy.ndarray, shape (n_kept,)
        Centred norms of the kept neurons.
    span : numpy.ndarray, shape (r, rank_c)
        Orthonormal basis (in frame coordinates) of the span of the centred unit-norm kept neurons: the left
        singular vectors of ``coords / norms`` with singular value above ``RANK_RTOL`` times the largest, or
        ``directions`` itself when both have full rank r (the same space).
    directions, variances : numpy.ndarray, shapes (r, rank_v) and (rank_v,)
        Left singular vectors of ``coords`` (the principal directions of the centred neurons, in frame
        coordinates) and their squared singular values, descending; singular values at most ``RANK_RTOL`` times
        the largest are dropped.
    ones : numpy.ndarray, shape (r,)
        ``Φᵀ basisᵀ 1``, the part of the constant vector the frame sees (zero but for its last entry).
    n_samples, n_neurons : int
        Shape of the factored matrix.
    weights : numpy.ndarray, shape (rank, n_kept)
        ``M`` on the kept columns: the kept (uncentred) neurons in the factor's basis coordinates.
    """

    kept: np.ndarray
    columns: np.ndarray
    frame: np.ndarray
    coords: np.ndarray
    norms: np.ndarray
    span: np.ndarray
    directions: np.ndarray
    variances: np.ndarray
    ones: np.ndarray
    n_samples: int
    n_neurons: int
    weights: np.ndarray

    @property
    def rank(self) -> int:
        """Dimension of the span of the centred unit-norm kept neurons (what CCA sees)."""
        return self.span.shape[1]

    # Products every pair of this layer uses, formed once (a layer is in many pairs of a task).

    @functools.cached_property
    def principal_frame(self) -> np.ndarray:
        """``Φ V`` (rank × rank_v): the principal directions in basis coordinates, less the constant's share."""
        return self.frame @ self.directions

    @functools.cached_property
    def principal_ones(self) -> np.ndarray:
        """``Vᵀ Φᵀ basisᵀ 1`` (rank_v,): the principal directions' share of the constant vector."""
        return self.directions.T @ self.ones

    @functools.cached_property
    def span_coords(self) -> np.ndarray:
        """``Sᵀ T`` (rank_c × n_kept): the centred kept neurons in the span's orthonormal basis."""
        return self.span.T @ self.coords


def centred_layer(f: Factor) -> CentredLayer:
    """The :class:`CentredLayer` of a factor (cached per factor).

    Parameters
    ----------
    f : Factor
        A factor made with or without ``center``.

    Returns
    -------
    CentredLayer

    Examples
    --------
    A constant neuron is live in a raw factor but flat once centred; the measures leave it out, and the
    centred span loses the direction of the constant vector:

    >>> import numpy as np
    >>> from raymatch.match import factor
    >>> from raymatch.match.centred import centred_layer
    >>> rng = np.random.default_rng(0)
    >>> A = np.column_stack([rng.standard_normal((50, 2)) + 3.0, np.full(50, 2.0)])
    >>> f = factor(A)
    >>> layer = centred_layer(f)
    >>> f.rank, f.live.tolist(), layer.kept.tolist(), layer.frame.shape[1], layer.rank
    (3, [0, 1, 2], [0, 1], 2, 2)
    >>> bool(np.allclose(layer.norms, np.linalg.norm(A[:, :2] - A[:, :2].mean(axis=0), axis=0)))
    True
    """
    key = id(f.coords)
    entry = _LAYERS.get(key)
    if entry is not None and all(ref() is part for ref, part in zip(entry[0], _parts(f), strict=True)):
        return entry[1]
    with one_thread():
        layer = _centred_layer(f)
    _LAYERS[key] = (tuple(weakref.ref(part) for part in _parts(f)), layer)
    weakref.finalize(f.coords, _LAYERS.pop, key, None)
    return layer


def _parts(f: Factor) -> tuple[np.ndarray, ...]:
    """The arrays a factor's centred geometry depends on (with ``n_samples`` and ``centered``, fixed by them)."""
    return f.coords, f.norms, f.means, f.live


def _centred_layer(f: Factor) -> CentredLayer:
    rank = f.rank
    weights = f.coords * f.norms  # M: the live columns in basis coordinates
    ones = np.zeros(rank)
    if f.centered or rank == 0:
        frame, coords = np.eye(rank), weights
    else:
        frame, coords, ones = _frame(_column_sums(f), weights, f.n_samples)
    norms = np.linalg.norm(coords, axis=0)
    largest = float(norms.max(initial=0.0))
    columns = np.flatnonzero(norms > DEAD_RTOL * largest) if largest > 0.0 else np.zeros(0, np.int64)
    coords, norms = coords[:, columns], norms[columns]
    directions, singular = _left_singular(coords)
    # A layer of full rank in its frame spans it whichever way its neurons are scaled: one basis serves both.
    span = directions if _unit_full_rank(coords, norms, singular) else _left_singular(coords / norms)[0]
    return CentredLayer(f.live[columns].astype(np.int64), columns.astype(np.int64), frame, coords, norms, span,
                        directions, singular**2, ones, f.n_samples, f.n_neurons, weights[:, columns])


def _column_sums(f: Factor) -> np.ndarray:
    """``s = basisᵀ 1`` of a raw factor, from ``Mᵀ s = d μ`` (consistent, full row rank; unit-norm columns)."""
    rhs = f.n_samples * f.means[f.live] / f.norms
    rank = f.rank
    if rank and not np.tril(f.coords[:, :rank], -1).any():  # a QR triangle: its leading square is nonsingular
        return scipy.linalg.solve_triangular(f.coords[:, :rank], rhs[:rank], trans="T", check_finite=False)
    return scipy.linalg.lstsq(f.coords.T, rhs, check_finite=False)[0]


def _unit_full_rank(coords: np.ndarray, norms: np.ndarray, singular: np.ndarray) -> bool:
    """Whether the unit-norm columns ``coords / norms`` keep every one of the frame's r directions at ``RANK_RTOL``.

    Decided without their SVD when ``cond(coords) · max(norms) / min(norms)`` bounds their condition number below
    ``1 / RANK_RTOL``; by their singular values otherwise.
    """
    r = coords.shape[0]
    if r == 0 or singular.size < r:
        return r == 0
    if singular[-1] / singular[0] * norms.min() / norms.max() > RANK_RTOL:
        return True
    unit = scipy.linalg.svdvals(coords / norms, check_finite=False)
    return int(np.count_nonzero(unit > RANK_RTOL * unit[0])) == r


def _frame(s: np.ndarray, weights: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Φ``, ``T = Φ⁺ M`` and ``Φᵀ s`` of a raw layer whose basis has column sums ``s``."""
    length = float(np.linalg.norm(s))
    rank = s.size
    if length == 0.0:
        return np.eye(rank), weights, np.zeros(rank)
    # An orthogonal matrix whose last column is ŝ: its other columns are the complement E.
    q = scipy.linalg.qr((s / length)[:, None], mode="full", check_finite=False)[0]
    rotation = np.roll(q, -1, axis=1)
    rotation[:, -1] *= np.sign(rotation[:, -1] @ s)
    coords = rotation.T @ weights
    lam = max(1.0 - length * length / n_samples, 0.0)
    if lam <= CONSTANT_IN_SPAN_TOL:
        return rotation[:, :-1], coords[:-1], np.zeros(rank - 1)
    root = np.sqrt(lam)
    rotation[:, -1] /= root
    coords[-1] *= root
    ones = np.zeros(rank)
    ones[-1] = length / root
    return rotation, coords, ones


def _left_singular(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of ``matrix`` above ``RANK_RTOL`` times the largest."""
    if matrix.size == 0:
        return np.zeros((matrix.shape[0], 0)), np.zeros(0)
    u, singular, _ = scipy.linalg.svd(matrix, full_matrices=False, check_finite=False)
    keep = singular > RANK_RTOL * singular[0]
    return u[:, keep], singular[keep]


def frame_cross(la: CentredLayer, fa: Factor, lb: CentredLayer, fb: Factor, cross: np.ndarray) -> np.ndarray:
    """``G``: inner products of the two layers' orthonormal centred frames, shape (r_a, r_b).

    Parameters
    ----------
    la, lb : CentredLayer
        :func:`centred_layer` of ``fa`` and ``fb``.
    fa, fb : Factor
    cross : numpy.ndarray, shape (fa.rank, fb.rank)
        ``fa.basis.T @ fb.basis``.
    """
    check_same_samples(fa.n_samples, fb.n_samples)
    with one_thread():
        g = la.frame.T @ cross @ lb.frame
        g -= np.outer(la.ones, lb.ones) / fa.n_samples
    return g


def principal_cross(la: CentredLayer, fa: Factor, lb: CentredLayer, fb: Factor, cross: np.ndarray) -> np.ndarray:
    """``H = Vₐᵀ G V_b``: inner products of the two layers' principal directions, shape (rank_v_a, rank_v_b).

    ``(Φₐ Vₐ)ᵀ C (Φ_b V_b)`` less the constant vector's share: two products with the per-layer
    :attr:`~CentredLayer.principal_frame` instead of four.
    """
    check_same_samples(fa.n_samples, fb.n_samples)
    with one_thread():
        h = la.principal_frame.T @ (cross @ lb.principal_frame)
        h -= np.outer(la.principal_ones, lb.principal_ones) / fa.n_samples
    return h


def centred_cross(la: CentredLayer, fa: Factor, lb: CentredLayer, fb: Factor, cross: np.ndarray) -> np.ndarray:
    """``X_aᵀ X_b``: centred inner products of the kept neurons, shape (n_kept_a, n_kept_b).

    ``Mₐᵀ C M_b − d μₐ μ_bᵀ`` on the kept columns; μ is zero for a centred factor.
    """
    check_same_samples(fa.n_samples, fb.n_samples)
    with one_thread():
        product = la.weights.T @ (cross @ lb.weights)
    if not (fa.centered or fb.centered):
        product -= fa.n_samples * np.outer(fa.means[la.kept], fb.means[lb.kept])
    return product
