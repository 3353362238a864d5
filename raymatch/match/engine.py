"""The fast path: Algorithm 1, the peeling pass and the v-minimal procedure on reduced coordinates.

Notation. Side A has ``k_a`` live neurons, unit vectors given by ``coords_a`` (r_a × k_a) in an
orthonormal basis of their span; likewise side B. ``cross`` (r_a × r_b) holds the inner products
between the two bases. A neuron's *ratio* is ``dist(z, span(other side's remaining neurons))``
(its norm is 1), so only these small matrices matter, never the samples.

State. For each side a :class:`_Span` keeps a basis of the remaining neurons' span chosen among
the neurons, with the *dual* vectors of that basis (``b_iᵀ d_j = δ_ij``). Deleting basis neuron
``j`` removes exactly the direction ``d_j / ‖d_j‖`` from the span (unless a redundant neuron can
take its place, in which case nothing is lost); the other side's squared residuals then grow by
the squared projections onto that direction — a rank-one update, never a fresh factorisation.
A block of deletions removes ``span(d_J)`` in one BLAS-3 step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .factor import Factor, Prepared, orthonormal_coords
from .inputs import EXACT_TOL, RANK_RTOL

# Arrays are compacted (deleted columns dropped, the span re-based) once the live part of a side
# falls below this fraction of the stored width, and the width exceeds _COMPACT_MIN.
_COMPACT_FRACTION = 0.5
_COMPACT_MIN = 16
# Lost directions are projected out of the stored duals in blocks of this many.
_FLUSH = 32


@dataclass(frozen=True)
class Pair:
    """Two layers in reduced coordinates.

    Attributes
    ----------
    coords_a : numpy.ndarray, shape (r_a, k_a)
        Unit-norm live neurons of A in an orthonormal basis of their span.
    coords_b : numpy.ndarray, shape (r_b, k_b)
    cross : numpy.ndarray, shape (r_a, r_b)
        Inner products between the basis vectors of A and those of B.
    """

    coords_a: np.ndarray
    coords_b: np.ndarray
    cross: np.ndarray

    @classmethod
    def from_factors(cls, fa: Factor, fb: Factor) -> Pair:
        return cls(fa.coords, fb.coords, fa.basis.T @ fb.basis)

    @classmethod
    def from_layers(cls, la: Prepared, lb: Prepared) -> Pair:
        """One triangular factorisation of the joint matrix ``[A B]`` (no basis is formed).

        The first ``k_a`` columns of the joint R factor are A's coordinates in the joint basis,
        the rest are B's; each side is then re-factored in that small space.
        """
        k_a = la.live.size
        joint = np.hstack([la.columns, lb.columns])
        (r,) = scipy.linalg.qr(joint, mode="r", check_finite=False, overwrite_a=True)
        r = r[: min(r.shape)]
        qa, ca = _coords_of(r[:, :k_a].copy())
        qb, cb = _coords_of(r[:, k_a:].copy())
        return cls(ca, cb, qa.T @ qb)

    def restrict(self, keep_a: np.ndarray, keep_b: np.ndarray) -> Pair:
        """The same geometry restricted to neurons ``keep_a`` of A and ``keep_b`` of B."""
        qa, ca = _coords_of(self.coords_a[:, keep_a])
        qb, cb = _coords_of(self.coords_b[:, keep_b])
        return Pair(ca, cb, qa.T @ self.cross @ qb)


def _coords_of(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if columns.shape[1] == 0:
        return np.zeros((columns.shape[0], 0)), np.zeros((0, 0))
    return orthonormal_coords(columns)


class _Span:
    """The span of one side's remaining neurons, as a basis chosen among them plus its duals.

    Attributes
    ----------
    dual : numpy.ndarray, shape (r, n_slots)
        Column ``s`` is the dual vector of the basis neuron in slot ``s`` (zero for a freed slot),
        up to the pending projection: the current duals are ``(I - P Pᵀ) dual`` with
        ``P = pending[:, :n_pending]`` the orthonormal directions lost since the last flush.
        Deferring the projection turns one rank-one update per deletion into one GEMM per
        ``_FLUSH`` deletions.
    owner : numpy.ndarray, shape (n_slots,)
        Neuron held by each slot (-1 when freed).
    redundant : numpy.ndarray, shape (n_redundant,)
        Neurons outside the basis (linearly dependent on it); ``redundant_live`` marks the remaining.
    coef : numpy.ndarray, shape (n_slots, n_redundant)
        Coefficients of the redundant neurons in the basis.
    """

    def __init__(self, coords: np.ndarray):
        rank, k = coords.shape
        if rank == k:
            basis = np.arange(k)
        else:  # more neurons than dimensions: pick a well-conditioned basis among them
            _, _, piv = scipy.linalg.qr(coords, mode="economic", pivoting=True, check_finite=False)
            basis = np.sort(piv[:rank])
        self.slot_of = np.full(k, -1, dtype=np.int64)
        self.slot_of[basis] = np.arange(rank)
        self.owner = basis.astype(np.int64)
        square = coords[:, basis]
        if rank == k and not np.tril(square, -1).any():
            self.dual = scipy.linalg.solve_triangular(square, np.eye(rank), trans="T", check_finite=False)
        else:
            self.dual = np.linalg.solve(square.T, np.eye(rank))
        redundant = np.setdiff1d(np.arange(k), basis)
        self.redundant = redundant
        self.coef = self.dual.T @ coords[:, redundant]
        self.redundant_live = np.ones(redundant.size, dtype=bool)
        self.n_live_slots = rank
        self.pending = np.zeros((rank, _FLUSH))
        self.n_pending = 0

    def copy(self) -> _Span:
        twin = object.__new__(_Span)
        twin.__dict__.update({key: (value.copy() if isinstance(value, np.ndarray) else value)
                              for key, value in self.__dict__.items()})
        return twin

    def delete(self, neurons: np.ndarray) -> np.ndarray:
        """Remove ``neurons`` (remaining ones) and return the directions lost from the span.

        Returns
        -------
        numpy.ndarray, shape (r, n_lost)
            Orthonormal directions that left the span, in this side's coordinates.
        """
        slots = self.slot_of[neurons]
        if self.redundant.size:
            self.redundant_live &= ~np.isin(self.redundant, neurons[slots < 0])
        slots = slots[slots >= 0]
        self.slot_of[neurons] = -1
        if slots.size == 0:
            return np.zeros((self.dual.shape[0], 0))
        if not self.redundant_live.any():
            return self._drop_slots(slots)
        self._flush()
        lost = [w for w in map(self._delete_slot, slots) if w is not None]
        return np.column_stack(lost) if lost else np.zeros((self.dual.shape[0], 0))

    def _current(self, slots: np.ndarray) -> np.ndarray:
        duals = self.dual[:, slots]
        if self.n_pending:
            pending = self.pending[:, : self.n_pending]
            duals = duals - pending @ (pending.T @ duals)
        return duals

    def _flush(self) -> None:
        if self.n_pending:
            pending = self.pending[:, : self.n_pending]
            self.dual -= pending @ (pending.T @ self.dual)
            self.n_pending = 0

    def _drop_slots(self, slots: np.ndarray) -> np.ndarray:
        duals = self._current(slots)
        if slots.size == 1:
            lost = duals / np.linalg.norm(duals)
        else:
            lost, _ = scipy.linalg.qr(duals, mode="economic", check_finite=False)
        self.dual[:, slots] = 0.0
        self.coef[slots] = 0.0
        self.owner[slots] = -1
        self.n_live_slots -= slots.size
        if self.n_pending + lost.shape[1] > _FLUSH:
            self._flush()
        if lost.shape[1] > _FLUSH:
            self.dual -= lost @ (lost.T @ self.dual)
        else:
            self.pending[:, self.n_pending : self.n_pending + lost.shape[1]] = lost
            self.n_pending += lost.shape[1]
        return lost

    def _delete_slot(self, slot: int) -> np.ndarray | None:
        d = self.dual[:, slot].copy()
        norm = np.linalg.norm(d)
        # A redundant neuron z with a component along d/‖d‖ (z has unit norm) keeps the span whole.
        along = np.where(self.redundant_live, np.abs(self.coef[slot]), 0.0) / norm
        best = int(np.argmax(along))
        if along[best] > RANK_RTOL:
            c = self.coef[:, best].copy()
            self.dual -= np.outer(d, c / c[slot])
            self.dual[:, slot] = d / c[slot]
            row = self.coef[slot] / c[slot]
            self.coef -= np.outer(c, row)
            self.coef[slot] = row
            self.coef[:, best] = 0.0
            self.redundant_live[best] = False
            neuron = self.redundant[best]
            self.owner[slot] = neuron
            self.slot_of[neuron] = slot
            return None
        w = d / norm
        self.dual -= np.outer(w, w @ self.dual)
        self.dual[:, slot] = 0.0
        self.coef[slot] = 0.0
        self.owner[slot] = -1
        self.n_live_slots -= 1
        return w

    def compact(self) -> np.ndarray | None:
        """Drop freed slots and re-base onto the current span when the arrays are mostly empty.

        Returns
        -------
        numpy.ndarray, shape (r, r_new), or None
            Orthonormal basis of the current span in the old coordinates (the caller re-bases the
            other side's projections with it), or None when nothing was done.
        """
        width = self.owner.size
        if width < _COMPACT_MIN or self.n_live_slots > _COMPACT_FRACTION * width:
            return None
        keep = np.flatnonzero(self.owner >= 0)
        self.owner = self.owner[keep]
        self.slot_of[self.owner] = np.arange(keep.size)
        dual = self._current(keep)
        if keep.size:
            scaled = dual / np.linalg.norm(dual, axis=0)
            span, _ = scipy.linalg.qr(scaled, mode="economic", check_finite=False)
        else:
            span = np.zeros((dual.shape[0], 0))
        self.dual = span.T @ dual
        self.n_pending = 0
        self.pending = np.zeros((keep.size, _FLUSH))
        self.redundant = self.redundant[self.redundant_live]
        self.coef = self.coef[keep][:, self.redundant_live]
        self.redundant_live = np.ones(self.redundant.size, dtype=bool)
        self.n_live_slots = keep.size
        return span


class PairState:
    """The remaining neurons of both sides and every remaining neuron's current ratio."""

    def __init__(self, pair: Pair):
        self.span_a = _Span(pair.coords_a)
        self.span_b = _Span(pair.coords_b)
        # Neurons of A expressed in B's coordinates (and vice versa): their projections onto span(B).
        self.proj_a = pair.cross.T @ pair.coords_a
        self.proj_b = pair.cross @ pair.coords_b
        self.cols_a = np.arange(pair.coords_a.shape[1])
        self.cols_b = np.arange(pair.coords_b.shape[1])
        self.res2_a = np.clip(1.0 - np.einsum("ij,ij->j", self.proj_a, self.proj_a), 0.0, 1.0)
        self.res2_b = np.clip(1.0 - np.einsum("ij,ij->j", self.proj_b, self.proj_b), 0.0, 1.0)
        self.alive_a = np.ones(pair.coords_a.shape[1], dtype=bool)
        self.alive_b = np.ones(pair.coords_b.shape[1], dtype=bool)
        self.ratio_a = np.sqrt(self.res2_a)
        self.ratio_b = np.sqrt(self.res2_b)
        if pair.coords_b.shape[1] == 0:
            self.ratio_a[:] = self.res2_a[:] = 1.0
        if pair.coords_a.shape[1] == 0:
            self.ratio_b[:] = self.res2_b[:] = 1.0

    def copy(self) -> PairState:
        twin = object.__new__(PairState)
        twin.__dict__.update({key: (value.copy() if hasattr(value, "copy") else value)
                              for key, value in self.__dict__.items()})
        return twin

    def delete(self, drop_a: np.ndarray, drop_b: np.ndarray) -> None:
        """Delete remaining neurons ``drop_a`` of A and ``drop_b`` of B (index arrays)."""
        if drop_a.size:
            self.alive_a[drop_a] = False
            lost = self.span_a.delete(drop_a)
            if lost.shape[1]:
                self._grow(self.proj_b, self.cols_b, self.alive_b, self.res2_b, self.ratio_b, lost)
        if drop_b.size:
            self.alive_b[drop_b] = False
            lost = self.span_b.delete(drop_b)
            if lost.shape[1]:
                self._grow(self.proj_a, self.cols_a, self.alive_a, self.res2_a, self.ratio_a, lost)
        self._compact()

    @staticmethod
    def _grow(proj, cols, alive, res2, ratio, lost) -> None:
        """Add the squared projections onto the lost directions to the other side's residuals."""
        gain = lost.T @ proj
        idx = cols
        res2[idx] = np.minimum(res2[idx] + np.einsum("ij,ij->j", gain, gain), 1.0)
        ratio[idx] = np.sqrt(res2[idx])

    def _compact(self) -> None:
        span = self.span_b.compact()
        if span is not None:
            self.proj_a = span.T @ self.proj_a
        span = self.span_a.compact()
        if span is not None:
            self.proj_b = span.T @ self.proj_b
        for side in "ab":
            cols = getattr(self, f"cols_{side}")
            alive = getattr(self, f"alive_{side}")
            if cols.size >= _COMPACT_MIN and np.count_nonzero(alive[cols]) <= _COMPACT_FRACTION * cols.size:
                keep = alive[cols]
                setattr(self, f"cols_{side}", cols[keep])
                setattr(self, f"proj_{side}", getattr(self, f"proj_{side}")[:, keep])

    def cascade(self, eps: float, watch: tuple[str, int] | None = None) -> bool:
        """Algorithm 1 from the current state: delete every neuron with ratio > ``eps`` until none.

        Returns False (leaving the state part-way) as soon as neuron ``watch`` would be deleted.
        """
        while True:
            drop_a = np.flatnonzero(self.alive_a & (self.ratio_a > eps))
            drop_b = np.flatnonzero(self.alive_b & (self.ratio_b > eps))
            if drop_a.size == 0 and drop_b.size == 0:
                return True
            if watch is not None:
                side, index = watch
                if index in (drop_a if side == "a" else drop_b):
                    return False
            self.delete(drop_a, drop_b)

    def peel(self) -> tuple[np.ndarray, np.ndarray]:
        """Every remaining neuron's critical ε, by peeling the largest ratio first.

        The maximum match at ε is what remains once the largest ratio is ≤ ε, so a neuron's
        critical ε is the running minimum of the largest ratios seen up to its deletion.
        Neurons whose ratio reaches the running minimum are deleted together (a cascade).

        Returns
        -------
        critical_a : numpy.ndarray, shape (k_a,)
        critical_b : numpy.ndarray, shape (k_b,)
        """
        critical_a = np.zeros(self.alive_a.size)
        critical_b = np.zeros(self.alive_b.size)
        level = np.inf
        while self.alive_a.any() or self.alive_b.any():
            top = max(_masked_max(self.ratio_a, self.alive_a), _masked_max(self.ratio_b, self.alive_b))
            level = min(level, top)
            if level <= EXACT_TOL:  # everything left is an exact match
                break
            drop_a = np.flatnonzero(self.alive_a & (self.ratio_a >= level))
            drop_b = np.flatnonzero(self.alive_b & (self.ratio_b >= level))
            critical_a[drop_a] = level
            critical_b[drop_b] = level
            self.delete(drop_a, drop_b)
        return critical_a, critical_b

    def minimal(self, eps: float, neuron: tuple[str, int], order: Sequence[tuple[str, int]]) -> None:
        """Shrink the state (a match containing ``neuron``) to a ``neuron``-minimal match.

        Each candidate of ``order`` still present is deleted in turn; the deletion is kept when
        ``neuron`` survives in the maximum match of what is left, which becomes the new state.
        """
        for side, index in order:
            if (side, index) == neuron or not (self.alive_a if side == "a" else self.alive_b)[index]:
                continue
            trial = self.copy()
            one = np.array([index])
            none = np.zeros(0, dtype=np.int64)
            trial.delete(one, none) if side == "a" else trial.delete(none, one)
            if trial.cascade(eps, watch=neuron):
                self.__dict__.update(trial.__dict__)


def _masked_max(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].max()) if mask.any() else -np.inf
