"""The span of one side's remaining neurons during a peel: a basis chosen among them, and its duals.

Deleting basis neuron ``j`` removes exactly the direction ``d_j / ‖d_j‖`` from the span (unless a redundant
neuron can take its place); the other side's squared residuals then grow by the squared projections onto that
direction. Near-degenerate neurons have long duals that lose accuracy to cancellation when a partner is deleted:
before a dual shortened more than ``_AMPLIFY`` times is used, the span is re-factored (:meth:`Span.rebase`).
See :mod:`raymatch.match.peel` for how the peel uses it.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from .inputs import RANK_RTOL

#: Arrays are compacted (deleted columns dropped, the span re-based) once the live part of a side
#: falls below this fraction of the stored width, and the width is at least ``COMPACT_MIN``.
COMPACT_FRACTION = 0.5
#: The smallest stored width that is ever compacted.
COMPACT_MIN = 16
# Lost directions are projected out of the stored duals in blocks of this many.
_FLUSH = 32
# A dual this many times shorter than the longest it has been (its ``scale``) lost that factor of
# relative accuracy to cancellation (a near-degenerate basis broken by a deletion): the span is
# re-factored from its neurons before such a dual is used (generic layers measured: at most ~10).
_AMPLIFY = 1e3
# Directions lost from duals shortened more than this are re-orthogonalised against the pending ones.
_REORTHOGONALISE = 10.0


class Span:
    """The span of one side's remaining neurons, as a basis chosen among them plus its duals.

    Attributes
    ----------
    coords : numpy.ndarray, shape (r, k)
        The side's neurons in the current coordinates (columns of deleted neurons are stale).
        Never written in place: :meth:`rebase` replaces it, so copies may share it.
    dual : numpy.ndarray, shape (r, n_slots)
        Column ``s`` is the dual vector of the basis neuron in slot ``s`` (zero for a freed slot),
        up to the pending projection: the current duals are ``(I - P Pᵀ) dual`` with
        ``P = pending[:, :n_pending]`` the orthonormal directions lost since the last flush.
        Deferring the projection turns one rank-one update per deletion into one GEMM per
        ``_FLUSH`` deletions.
    scale : numpy.ndarray, shape (n_slots,)
        The largest norm each dual has had since it was last computed from ``coords`` (its
        rounding error is about ``1e-16 * scale``). A dual much shorter than its scale was
        obtained by cancellation: it is recomputed (:meth:`rebase`) before it is used.
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
        self.coords = coords
        self.slot_of = np.full(k, -1, dtype=np.int64)
        self.slot_of[basis] = np.arange(rank)
        self.owner = basis.astype(np.int64)
        self.redundant = np.setdiff1d(np.arange(k), basis)
        self.redundant_live = np.ones(self.redundant.size, dtype=bool)
        square = coords[:, basis]
        self._refresh(square, triangular=rank == k and not np.tril(square, -1).any())

    def _refresh(self, square: np.ndarray, triangular: bool) -> None:
        """Compute the duals (and the redundant neurons' coefficients) afresh from ``coords``.

        ``square`` holds the coordinates of the basis neurons (every slot owned), in slot order.
        """
        rank = square.shape[0]
        if rank == 0:
            self.dual = np.zeros((0, 0))
        elif triangular:
            inverse, info = lapack.dtrtri(square, lower=0)
            if info != 0:  # pragma: no cover - the basis neurons are independent
                raise np.linalg.LinAlgError(f"singular triangular factor (dtrtri info {info})")
            self.dual = inverse.T
        else:
            self.dual = np.linalg.solve(square.T, np.eye(rank))
        self.scale = np.sqrt(np.einsum("ij,ij->j", self.dual, self.dual))
        self.coef = self.dual.T @ self.coords[:, self.redundant]
        self.n_live_slots = rank
        self.pending = np.zeros((rank, _FLUSH))
        self.n_pending = 0

    def copy(self) -> Span:
        """An independent copy (its arrays copied, ``coords`` shared: it is never written in place)."""
        twin = object.__new__(Span)
        twin.__dict__.update({key: (value.copy() if isinstance(value, np.ndarray) and key != "coords" else value)
                              for key, value in self.__dict__.items()})
        return twin

    def amplified(self, slots: np.ndarray, norms: np.ndarray) -> bool:
        """Whether the current duals of ``slots`` (with these norms) were shortened by cancellation."""
        return bool((self.scale[slots] > _AMPLIFY * norms).any())

    def delete(self, neurons: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Remove ``neurons`` (remaining ones).

        Returns
        -------
        rebase : numpy.ndarray, shape (r, r_new), or None
            When the span was re-based on the way (:meth:`rebase`): an orthonormal basis of the
            span at that point in the old coordinates. The other side's projections must be
            re-based with it and its ratios recomputed; they then include every direction lost
            before the re-basing.
        lost : numpy.ndarray, shape (r or r_new, n_lost)
            Orthonormal directions that left the span after that (all of them when ``rebase`` is
            None), in the current coordinates.
        """
        slots = self.slot_of[neurons]
        if self.redundant.size:
            self.redundant_live &= ~np.isin(self.redundant, neurons[slots < 0])
        slots = slots[slots >= 0]
        if slots.size == 0:
            return None, np.zeros((self.dual.shape[0], 0))
        if not self.redundant_live.any():
            return self._drop_slots(slots)
        self._flush()
        rebase, lost = None, []
        for neuron in self.owner[slots]:
            slot = self.slot_of[neuron]
            d = self.dual[:, slot].copy()
            norm = np.linalg.norm(d)
            if self.amplified(slot, norm):
                # Recompute the duals of the span as it is (the neuron still in it): the
                # directions lost so far are then in the other side's recomputed ratios.
                basis = self.rebase()
                rebase = basis if rebase is None else rebase @ basis
                lost = []
                slot = self.slot_of[neuron]
                d = self.dual[:, slot].copy()
                norm = np.linalg.norm(d)
            self.slot_of[neuron] = -1
            w = self._delete_slot(slot, d, norm)
            if w is not None:
                lost.append(w)
        return rebase, (np.column_stack(lost) if lost else np.zeros((self.dual.shape[0], 0)))

    def current(self, slots: np.ndarray) -> np.ndarray:
        """The current duals of ``slots``, shape (r, len(slots)): the stored ones, pending projection applied."""
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

    def _drop_slots(self, slots: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Free ``slots`` (no redundant neuron can take their place); see :meth:`delete`."""
        duals = self.current(slots)
        # Relative accuracy lost to cancellation: in shortening the duals, then in their QR.
        lost = None
        if slots.size == 1:
            column = duals[:, 0]
            norm = math.sqrt(column @ column)
            loss = self.scale[slots[0]] / norm
            if loss <= _AMPLIFY:
                lost = duals / norm
        else:
            norms = np.sqrt(np.einsum("ij,ij->j", duals, duals))
            loss = (self.scale[slots] / norms).max()
            if loss <= _AMPLIFY:
                lost, triangle = scipy.linalg.qr(duals / norms, mode="economic", check_finite=False)
                loss /= np.abs(np.diag(triangle)).min()
                if not loss <= _AMPLIFY:
                    lost = None
        self.slot_of[self.owner[slots]] = -1
        self.dual[:, slots] = 0.0
        self.coef[slots] = 0.0
        self.owner[slots] = -1
        self.n_live_slots -= slots.size
        if lost is None:
            # Cancellation: the lost directions would carry the rounding of much longer vectors.
            # The remaining basis neurons span exactly what is left: factor them afresh.
            return self.rebase(), np.zeros((self.n_live_slots, 0))
        if self.n_pending and loss > _REORTHOGONALISE:
            # Keep the pending directions orthonormal: they project stale duals that may be long.
            pending = self.pending[:, : self.n_pending]
            lost = lost - pending @ (pending.T @ lost)
            if lost.shape[1] == 1:
                lost /= np.linalg.norm(lost)
            else:
                lost, _ = scipy.linalg.qr(lost, mode="economic", check_finite=False)
        if self.n_pending + lost.shape[1] > _FLUSH:
            self._flush()
        if lost.shape[1] > _FLUSH:
            self.dual -= lost @ (lost.T @ self.dual)
        else:
            self.pending[:, self.n_pending : self.n_pending + lost.shape[1]] = lost
            self.n_pending += lost.shape[1]
        return None, lost

    def _delete_slot(self, slot: int, d: np.ndarray, norm: float) -> np.ndarray | None:
        """Free ``slot`` (current dual ``d``, of norm ``norm``), or give it to a redundant neuron."""
        # A redundant neuron z with a component along d/‖d‖ (z has unit norm) keeps the span whole.
        along = np.where(self.redundant_live, np.abs(self.coef[slot]), 0.0) / norm
        best = int(np.argmax(along)) if along.size else -1
        if best >= 0 and along[best] > RANK_RTOL:
            c = self.coef[:, best].copy()
            ratio = c / c[slot]
            self.dual -= np.outer(d, ratio)
            self.dual[:, slot] = d / c[slot]
            grown = self.scale[slot] * np.abs(ratio)  # what the update added to each dual's rounding
            self.scale = np.maximum(self.scale, grown)
            self.scale[slot] = grown[slot] / abs(c[slot])
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

    def rebase(self) -> np.ndarray:
        """Re-express the span in an orthonormal basis of itself and compute the duals afresh.

        The basis is a QR factorisation of the remaining basis neurons' coordinates, so the span
        is as accurate as those coordinates, whatever rounding the rank-one updates left; freed
        slots and deleted redundant neurons are dropped.

        Returns
        -------
        numpy.ndarray, shape (r, r_new)
            Orthonormal basis of the span in the old coordinates (the caller re-bases the other
            side's projections with it and recomputes its ratios).
        """
        keep = np.flatnonzero(self.owner >= 0)
        self.owner = self.owner[keep]
        self.slot_of[self.owner] = np.arange(keep.size)
        self.redundant = self.redundant[self.redundant_live]
        self.redundant_live = np.ones(self.redundant.size, dtype=bool)
        old = self.coords
        if keep.size:
            span, triangle = scipy.linalg.qr(old[:, self.owner], mode="economic", check_finite=False)
        else:
            span, triangle = np.zeros((old.shape[0], 0)), np.zeros((0, 0))
        coords = np.zeros((keep.size, old.shape[1]))
        coords[:, self.owner] = triangle
        if self.redundant.size:
            coords[:, self.redundant] = span.T @ old[:, self.redundant]
        self.coords = coords
        self._refresh(triangle, triangular=True)
        return span

    def compact(self) -> np.ndarray | None:
        """:meth:`rebase` when the arrays are mostly empty (freed slots); None when nothing was done."""
        width = self.owner.size
        if width < COMPACT_MIN or self.n_live_slots > COMPACT_FRACTION * width:
            return None
        return self.rebase()
