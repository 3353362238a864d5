"""The fast path: Algorithm 1, the peeling pass and the v-minimal procedure on reduced coordinates.

Notation. Side A has ``k_a`` live neurons, unit vectors given by ``coords_a`` (r_a × k_a) in an
orthonormal basis of their span; likewise side B. ``cross`` (r_a × r_b) holds the inner products
between the two bases. A neuron's *ratio* is ``dist(z, span(other side's remaining neurons))``
(its norm is 1), so only these small matrices matter, never the samples.

State. For each side a :class:`Span` keeps a basis of the remaining neurons' span chosen among
the neurons, with the *dual* vectors of that basis (``b_iᵀ d_j = δ_ij``). Deleting basis neuron
``j`` removes exactly the direction ``d_j / ‖d_j‖`` from the span (unless a redundant neuron can
take its place, in which case nothing is lost); the other side's squared residuals then grow by
the squared projections onto that direction — a rank-one update, not a fresh factorisation.
A block of deletions removes ``span(d_J)`` in one BLAS-3 step.

Accuracy. Each dual carries the rounding of the longest it has been since it was computed
(``scale``). Near-degenerate neurons (exact dependencies broken by float32 storage leave directions
of relative size ~1e-8) have duals ~1e8 long; deleting one of them shrinks its partners' duals to
~1, and with them goes ~1e8 of relative accuracy, enough to move a critical ε by 1e-4 or more.
Before a dual shortened more than ``_AMPLIFY`` times is used, the span is re-factored from its
remaining neurons (a QR of their coordinates: :meth:`Span.rebase`) and the other side's ratios are
recomputed from scratch in the new basis. That happens once per break-up of near-degenerate
groups, never on well-conditioned layers (their duals shrink less than ten-fold), and the same
re-factoring drops freed slots once the arrays are mostly empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from ._blas import one_thread, one_thread_method, small
from .factor import Factor, Prepared, cross_product, orthonormal_coords, prepare
from .inputs import EXACT_TOL, activation_array, check_same_samples
from .span import COMPACT_FRACTION, COMPACT_MIN, Span


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

    Examples
    --------
    Two arrays are reduced with one QR of ``[A B]``; factors need only the cross GEMM. Either
    way only small matrices are left, whatever the number of samples.

    >>> import numpy as np
    >>> from raymatch.match import factor
    >>> from raymatch.match.peel import Pair
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 3))
    >>> B = np.column_stack([A[:, 0] + A[:, 1], A[:, 0] - A[:, 1], rng.standard_normal(100)])
    >>> pair, _, _ = Pair.from_arrays(A, B, center=False)
    >>> pair.coords_a.shape, pair.coords_b.shape, pair.cross.shape
    ((3, 3), (3, 3), (3, 3))
    >>> Pair.from_factors(factor(A), factor(B)).cross.shape
    (3, 3)
    >>> pair.restrict(np.array([0, 1]), np.array([2])).cross.shape
    (2, 1)
    """

    coords_a: np.ndarray
    coords_b: np.ndarray
    cross: np.ndarray

    @classmethod
    def from_factors(cls, fa: Factor, fb: Factor, cross: np.ndarray | None = None) -> Pair:
        """Pair two factors of the same samples: only ``basis_aᵀ basis_b`` is computed.

        Parameters
        ----------
        fa, fb : Factor
            The factored layers (same ``n_samples``, checked by the caller).
        cross : numpy.ndarray, shape (fa.rank, fb.rank), optional
            ``fa.basis.T @ fb.basis`` when the caller has computed it already (:func:`cross_product`).

        Returns
        -------
        Pair
            The factors' coordinates and their cross product.
        """
        if cross is None:
            cross = cross_product(fa, fb)
        elif np.shape(cross) != (fa.rank, fb.rank):
            raise ValueError(f"cross must have shape ({fa.rank}, {fb.rank}) (A's rank, B's rank); "
                             f"got {np.shape(cross)}")
        return cls(fa.coords, fb.coords, np.asarray(cross, dtype=np.float64))

    @classmethod
    def from_arrays(cls, A, B, center: bool) -> tuple[Pair, Prepared, Prepared]:
        """Validate two activation matrices and reduce them with one QR of the joint ``[A B]``.

        Both sides are normalised straight into one column-major buffer, which LAPACK factors in
        place (no basis is formed). The first ``k_a`` columns of R are A's coordinates in the joint
        basis, the rest B's; each side is then re-factored in that small space.

        Parameters
        ----------
        A, B : array_like or torch.Tensor, shape (n_samples, n_a), (n_samples, n_b)
            The two activation matrices.
        center : bool
            Subtract column means first.

        Returns
        -------
        pair : Pair
            Both sides in reduced coordinates.
        la, lb : Prepared
            Each side's live neurons and counts (their columns share the overwritten buffer).
        """
        array_a, array_b = activation_array(A, "A"), activation_array(B, "B")
        check_same_samples(array_a.shape[0], array_b.shape[0])
        n_a = array_a.shape[1]
        joint = np.empty((array_a.shape[0], n_a + array_b.shape[1]), order="F")
        la = prepare(array_a, center=center, name="A", out=joint[:, :n_a])
        lb = prepare(array_b, center=center, name="B", out=joint[:, n_a:])
        k_a, k_b = la.live.size, lb.live.size
        if k_a < n_a:
            joint[:, k_a : k_a + k_b] = lb.columns
        joint = joint[:, : k_a + k_b]
        with one_thread(small(joint.size)):
            if joint.shape[1]:
                lwork = int(lapack.dgeqrf_lwork(*joint.shape)[0])
                qr, _, _, info = lapack.dgeqrf(joint, lwork=lwork, overwrite_a=1)
                if info != 0:  # pragma: no cover - only for invalid arguments
                    raise np.linalg.LinAlgError(f"dgeqrf failed (info {info})")
                r = np.triu(qr[: min(qr.shape)])
            else:
                r = np.zeros((0, 0))
            qa, ca = _coords_of(r[:k_a, :k_a].copy())
            qb, cb = _coords_of(r[:, k_a:].copy())
            return cls(ca, cb, qa.T @ qb[:k_a]), la, lb

    def restrict(self, keep_a: np.ndarray, keep_b: np.ndarray) -> Pair:
        """Restrict the same geometry to neurons ``keep_a`` of A and ``keep_b`` of B.

        Parameters
        ----------
        keep_a, keep_b : numpy.ndarray of int
            Positions among the live neurons (columns of ``coords_a`` and ``coords_b``).

        Returns
        -------
        Pair
            A pair whose columns are the kept neurons, in the given order.
        """
        qa, ca = _coords_of(self.coords_a[:, keep_a])
        qb, cb = _coords_of(self.coords_b[:, keep_b])
        return Pair(ca, cb, qa.T @ self.cross @ qb)


def _coords_of(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`orthonormal_coords` that also accepts zero columns."""
    if columns.shape[1] == 0:
        return np.zeros((columns.shape[0], 0)), np.zeros((0, 0))
    return orthonormal_coords(columns)


class _Side:
    """One side's remaining neurons and their squared ratios to the other side's span.

    Attributes
    ----------
    span : Span
        This side's own span (what the *other* side's ratios are measured against).
    proj : numpy.ndarray, shape (r_other, n_cols)
        This side's neurons projected onto the other side's span, in the other side's coordinates.
        Columns of deleted neurons are zeroed (so rank-one updates leave them alone) and dropped
        at compaction.
    cols : numpy.ndarray, shape (n_cols,)
        The neuron of each column of ``proj``.
    res2 : numpy.ndarray, shape (k,)
        Squared ratio of each neuron; -1 once deleted.
    """

    def __init__(self, coords: np.ndarray, proj: np.ndarray, other_empty: bool):
        self.span = Span(coords)
        self.proj = proj
        k = coords.shape[1]
        self.cols = np.arange(k)
        self.col_of = np.arange(k)
        if other_empty:  # nothing to project on: every ratio is 1
            self.res2 = np.ones(k)
        else:
            self.res2 = np.clip(1.0 - np.einsum("ij,ij->j", proj, proj), 0.0, 1.0)
        self.n_alive = k

    def copy(self) -> _Side:
        twin = object.__new__(_Side)
        twin.__dict__.update(self.__dict__)
        twin.span = self.span.copy()
        twin.res2 = self.res2.copy()
        twin.proj = self.proj.copy()
        return twin

    def alive(self, neuron: int) -> bool:
        return bool(self.res2[neuron] >= 0.0)

    def remove(self, neurons: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Delete ``neurons``; return what their side's span did (see :meth:`Span.delete`)."""
        self.res2[neurons] = -1.0
        self.proj[:, self.col_of[neurons]] = 0.0
        self.n_alive -= neurons.size
        return self.span.delete(neurons)

    def rebase(self, basis: np.ndarray) -> None:
        """Follow the other side's span into new coordinates and recompute the squared ratios there.

        ``basis`` (orthonormal columns, in the other side's old coordinates) spans all that is left
        of that span, so the ratios come straight from the re-based projections: no rounding
        accumulated by earlier rank-one updates survives.
        """
        self.proj = basis.T @ self.proj
        alive = self.res2[self.cols] >= 0.0
        columns = self.proj[:, alive]
        self.res2[self.cols[alive]] = np.clip(1.0 - np.einsum("ij,ij->j", columns, columns), 0.0, 1.0)

    def grow(self, lost: np.ndarray) -> None:
        """Raise the squared ratios by the squared projections onto the other side's lost directions."""
        gain = lost.T @ self.proj
        increase = gain[0] * gain[0] if gain.shape[0] == 1 else np.einsum("ij,ij->j", gain, gain)
        self.res2[self.cols] = np.minimum(self.res2[self.cols] + increase, 1.0)

    def compact_columns(self) -> None:
        if self.cols.size >= COMPACT_MIN and self.n_alive <= COMPACT_FRACTION * self.cols.size:
            keep = self.res2[self.cols] >= 0.0
            self.cols = self.cols[keep]
            self.proj = self.proj[:, keep]
            self.col_of = np.full(self.res2.size, -1)
            self.col_of[self.cols] = np.arange(self.cols.size)


class PairState:
    """The remaining neurons of both sides and every remaining neuron's current squared ratio.

    Attributes
    ----------
    a, b : _Side
        The two sides; ``res2`` holds each neuron's squared ratio, -1 once deleted.

    Examples
    --------
    A's first two neurons span the same plane as B's first two; the third neurons are unrelated.

    >>> import numpy as np
    >>> from raymatch.match.peel import Pair, PairState
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 3))
    >>> B = np.column_stack([A[:, 0] + A[:, 1], A[:, 0] - A[:, 1], rng.standard_normal(100)])
    >>> state = PairState(Pair.from_arrays(A, B, center=False)[0])
    >>> np.sqrt(state.a.res2).round(3).tolist()
    [0.0, 0.0, 0.984]
    >>> trial = state.copy()
    >>> trial.cascade(1e-6)
    True
    >>> trial.alive_a.tolist(), trial.alive_b.tolist(), state.alive_a.tolist()
    ([True, True, False], [True, True, False], [True, True, True])
    >>> [critical.round(3).tolist() for critical in state.peel()]
    [[0.0, 0.0, 0.984], [0.0, 0.0, 0.984]]
    """

    @one_thread_method
    def __init__(self, pair: Pair):
        k_a, k_b = pair.coords_a.shape[1], pair.coords_b.shape[1]
        # Neurons of A expressed in B's coordinates (their projections onto span B), and vice versa.
        self.a = _Side(pair.coords_a, pair.cross.T @ pair.coords_a, other_empty=k_b == 0)
        self.b = _Side(pair.coords_b, pair.cross @ pair.coords_b, other_empty=k_a == 0)

    def copy(self) -> PairState:
        """Return an independent copy (trial deletions leave the original alone)."""
        twin = object.__new__(PairState)
        twin.a, twin.b = self.a.copy(), self.b.copy()
        return twin

    def side(self, name: str) -> _Side:
        """Return side ``"a"`` or ``"b"``."""
        return self.a if name == "a" else self.b

    @property
    def alive_a(self) -> np.ndarray:
        """Boolean mask of A's remaining neurons."""
        return self.a.res2 >= 0.0

    @property
    def alive_b(self) -> np.ndarray:
        """Boolean mask of B's remaining neurons."""
        return self.b.res2 >= 0.0

    def delete(self, drop_a: np.ndarray, drop_b: np.ndarray) -> None:
        """Delete remaining neurons ``drop_a`` of A and ``drop_b`` of B (index arrays)."""
        for side, other, drop in ((self.a, self.b, drop_a), (self.b, self.a, drop_b)):
            if drop.size:
                basis, lost = side.remove(drop)
                if basis is not None:
                    other.rebase(basis)
                if lost.shape[1] and other.n_alive:
                    other.grow(lost)
        for side, other in ((self.a, self.b), (self.b, self.a)):
            basis = side.span.compact()
            if basis is not None:  # re-base the other side's projections onto the smaller span
                other.rebase(basis)
            side.compact_columns()

    @one_thread_method
    def cascade(self, eps: float, watch: tuple[str, int] | None = None) -> bool:
        """Algorithm 1 from the current state: delete every neuron with ratio > ``eps`` until none.

        Returns False (leaving the state part-way) as soon as neuron ``watch`` would be deleted.
        """
        eps2 = eps * eps
        while True:
            drop_a = np.flatnonzero(self.a.res2 > eps2)
            drop_b = np.flatnonzero(self.b.res2 > eps2)
            if drop_a.size == 0 and drop_b.size == 0:
                return True
            if watch is not None:
                side, index = watch
                if index in (drop_a if side == "a" else drop_b):
                    return False
            self.delete(drop_a, drop_b)

    @one_thread_method
    def peel(self, exact_tol: float = EXACT_TOL) -> tuple[np.ndarray, np.ndarray]:
        """Every remaining neuron's critical ε, by peeling the largest ratio first.

        The maximum match at ε is what remains once the largest ratio is ≤ ε, so a neuron's
        critical ε is the running minimum of the largest ratios seen up to its deletion.
        Neurons whose ratio reaches the running minimum are deleted together (a cascade).
        What is left once the largest ratio is at most ``exact_tol`` is the exact match: critical ε 0.

        Returns
        -------
        critical_a : numpy.ndarray, shape (k_a,)
        critical_b : numpy.ndarray, shape (k_b,)
        """
        a, b = self.a, self.b
        critical_a = np.zeros(a.res2.size)
        critical_b = np.zeros(b.res2.size)
        level2 = np.inf
        floor2 = exact_tol * exact_tol
        while a.n_alive or b.n_alive:
            top = max(a.res2.max(initial=-1.0), b.res2.max(initial=-1.0))
            level2 = min(level2, top)
            if level2 <= floor2:  # everything left is an exact match
                break
            drop_a = np.flatnonzero(a.res2 >= level2)
            drop_b = np.flatnonzero(b.res2 >= level2)
            level = np.sqrt(level2)
            critical_a[drop_a] = level
            critical_b[drop_b] = level
            self.delete(drop_a, drop_b)
        return critical_a, critical_b

    @one_thread_method
    def minimal(self, eps: float, neuron: tuple[str, int], order: Sequence[tuple[str, int]]) -> None:
        """Shrink the state (a match containing ``neuron``) to a ``neuron``-minimal match.

        Each candidate of ``order`` still present is deleted in turn; the deletion is kept when
        ``neuron`` survives in the maximum match of what is left, which becomes the new state.
        """
        none = np.zeros(0, dtype=np.int64)
        for side, index in order:
            if (side, index) == neuron or not self.side(side).alive(index):
                continue
            one = np.array([index])
            drop = (one, none) if side == "a" else (none, one)
            verdict = self._one_step_verdict(side, index, eps, neuron)
            if verdict is True:
                self.delete(*drop)
            elif verdict is None:
                trial = self.copy()
                trial.delete(*drop)
                if trial.cascade(eps, watch=neuron):
                    self.a, self.b = trial.a, trial.b

    def _one_step_verdict(self, side: str, index: int, eps: float, neuron: tuple[str, int]) -> bool | None:
        """Decide a trial deletion from its first step alone, without touching the state.

        True: nothing else rises above ``eps`` (the rest is still a match: keep the deletion).
        False: ``neuron`` itself rises above ``eps`` (undo). None: a cascade follows, or the span has
        redundant neurons: run the trial in full.
        """
        span = self.side(side).span
        if span.redundant_live.any():
            return None
        other_name = "b" if side == "a" else "a"
        other = self.side(other_name)
        slot = span.slot_of[index : index + 1]
        d = span.current(slot)
        norm = np.linalg.norm(d)
        if span.amplified(slot, norm):  # recompute the duals first (the span stays the same)
            other.rebase(span.rebase())
            slot = span.slot_of[index : index + 1]
            d = span.current(slot)
            norm = np.linalg.norm(d)
        lost = d / norm
        gain = (lost.T @ other.proj)[0]
        res2 = np.minimum(other.res2[other.cols] + gain * gain, 1.0)
        over = other.cols[res2 > eps * eps]
        if over.size == 0:
            return True
        if neuron[0] == other_name and neuron[1] in over:
            return False
        return None
