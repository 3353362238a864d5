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
    live : numpy.ndarray, shape (n_live,), int64
    n_samples, n_neurons : int
    centered : bool
    """

    columns: np.ndarray
    live: np.ndarray
    n_samples: int
    n_neurons: int
    centered: bool

    @property
    def dead(self) -> np.ndarray:
        return _complement(self.live, self.n_neurons)


def prepare(activations, *, center: bool = False, name: str = "A", out: np.ndarray | None = None) -> Prepared:
    """Validate, optionally center, find the dead neurons and normalise the live ones.

    Parameters
    ----------
    activations : array_like or torch.Tensor, shape (n_samples, n_neurons)
    center : bool
    name : str
        Name used in error messages.
    out : numpy.ndarray, shape (n_samples, n_neurons), float64, column-major, optional
        Storage to work in (a slice of a joint matrix); the live columns end up first.
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
    """
    layer = prepare(activations, center=center, name=name)
    if layer.live.size == 0:
        basis, coords = np.zeros((layer.n_samples, 0)), np.zeros((0, 0))
    else:
        basis, coords = orthonormal_coords(layer.columns, overwrite=True)
    return Factor(basis, coords, layer.live, layer.n_samples, layer.n_neurons, center)


def _complement(live: np.ndarray, n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[live] = False
    return np.flatnonzero(mask).astype(np.int64)


def orthonormal_coords(columns: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rank-revealing thin factorisation ``columns ≈ basis @ coords``.

    Parameters
    ----------
    columns : numpy.ndarray, shape (m, k), float64, non-zero columns
    overwrite : bool
        Let the QR overwrite ``columns`` (saves a copy of a large matrix).

    Returns
    -------
    basis : numpy.ndarray, shape (m, rank)
        Orthonormal columns.
    coords : numpy.ndarray, shape (rank, k)
        Directions with singular value at most ``RANK_RTOL`` times the largest are dropped.
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
