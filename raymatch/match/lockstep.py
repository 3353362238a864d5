"""The peeling passes of a block of pairs, in lockstep, as batched torch operations.

This is the peel of :mod:`raymatch.match.peel` (delete the neuron with the largest ratio; its critical ε is
the running minimum of those largest ratios) for ``P`` pairs at once, written so that each step costs a
fixed number of tensor operations whatever ``P`` is. Every pair deletes at most one neuron per side per
step; pairs that are done, or whose side waits for a re-factoring, idle.

Neuron space. Side A's live neurons are unit vectors with coordinates ``R_a`` (k_a × k_a, full rank) in an
orthonormal basis of their span; ``C = Q_aᵀ Q_b`` is the cross product. Each pair keeps one matrix
``M`` (2h × 2h, h the padded width) whose rows of side A are ``[D_aᵀ D_a | D_aᵀ X_b]``: the Gram matrix of
the *duals* of A's remaining neurons (``D_a``, with ``a_iᵀ d_j = δ_ij`` inside span A) and their inner
products with B's neurons; the rows of side B are ``[D_bᵀ X_a | D_bᵀ D_b]``. Deleting neuron ``j`` of A
removes the direction ``w = d_j / ‖d_j‖`` from span A, so with ``ρ = M[j] / √M[j, j]``:

- B's squared ratios grow by ``ρ[B]²`` (the squared projections of B's neurons on ``w``), and
- A's rows lose ``ρ[A]ᵀ ρ`` (the duals of the others lose their component along ``w``);

B's rows do not change (span B did not), so a pair's A- and B-deletions of one step are independent.
The updates are deferred: ``M = M₀ − Σ ρ_sᵀ ρ_s`` over the pending ``ρ_s`` of each side, and one
batched GEMM folds ``FLUSH`` steps into ``M₀``. A step thus reads one row and the pending rows per
deleted neuron, never the samples and never all of ``M``. Once the remaining neurons fit in a
narrower width, the arrays are compacted.

Accuracy. ``M[j, j] = ‖d_j‖²`` is obtained by downdates: a dual shortened by cancellation (a
near-degenerate group broken up by a deletion) has ``M[j, j]`` far below its value when last
computed, and its relative rounding grows like the square of that ratio. A deletion whose dual
shrank more than :data:`AMPLIFY` times waits; at the next flush that side's rows are recomputed
from its remaining neurons' coordinates (a QR) and the other side's ratios from scratch, as the
one-pair kernel re-factors its span (:meth:`raymatch.match.span._Span.rebase`).

Rank-deficient layers (more live neurons than rank) are not handled here: see
:func:`raymatch.match.batched.match_curves`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

#: Steps between two folds of the pending updates into ``M₀`` (one batched GEMM each).
FLUSH = 16
#: Steps between two checks whether any pair is left to peel (a check waits for the device).
CHECK = 4
#: Compact the arrays when the widest remaining side of any pair needs at most this fraction of the width.
COMPACT_FRACTION = 0.75
#: A dual shorter than 1 / AMPLIFY of its length when last computed is recomputed before it is used
#: (float64: a relative rounding of at most ~1e-10 in its squared norm; see the module notes).
AMPLIFY = {torch.float64: 1e3, torch.float32: 30.0}


class LockstepPeel:
    """Every neuron's critical ε for a block of full-rank layer pairs, computed in lockstep.

    Parameters
    ----------
    coords : sequence of numpy.ndarray, shape (k_m, k_m)
        Each model's live unit neurons in an orthonormal basis of their span (:attr:`Factor.coords`,
        square: full rank).
    model_a, model_b : sequence of int, length P
        The models of each pair (indices into ``coords``).
    crosses : sequence of torch.Tensor or numpy.ndarray, shape (k_a, k_b)
        Each pair's cross product of bases (:func:`raymatch.match.factor.cross_product`).
    floor : sequence of float, length P
        Each pair's exact tolerance: once the largest ratio left is at most this, what is left is the
        exact match (critical ε 0).
    device : torch.device
    dtype : torch.dtype
        Of the peel's state (the set-up is computed in float64).

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import cross_product, factor, match_curve
    >>> from raymatch.match.lockstep import LockstepPeel
    >>> rng = np.random.default_rng(0)
    >>> fs = [factor(rng.standard_normal((60, 5))) for _ in range(3)]
    >>> pairs = [(0, 1), (0, 2), (1, 2)]
    >>> crosses = [cross_product(fs[a], fs[b]) for a, b in pairs]
    >>> peel = LockstepPeel([f.coords for f in fs], [0, 0, 1], [1, 2, 2], crosses, [1e-6] * 3)
    >>> critical_a, critical_b = peel.run()[0]
    >>> bool(np.allclose(critical_a, match_curve(fs[0], fs[1]).critical_a, atol=1e-12))
    True
    """

    def __init__(self, coords: Sequence[np.ndarray], model_a: Sequence[int], model_b: Sequence[int],
                 crosses: Sequence, floor: Sequence[float], *, device=None, dtype=torch.float64):
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self.sizes = [int(c.shape[1]) for c in coords]
        self.n_pairs = n_pairs = len(model_a)
        self.h = h = max(1, *self.sizes) if self.sizes else 1
        self.ia = torch.as_tensor(np.asarray(model_a, dtype=np.int64), device=self.device)
        self.ib = torch.as_tensor(np.asarray(model_b, dtype=np.int64), device=self.device)
        wide = torch.float64
        self.coords = _padded_coords(coords, h, self.device)
        inverse = _inverses(self.coords, coords)
        self.cross = torch.zeros(n_pairs, h, h, dtype=wide, device=self.device)
        for p, cross in enumerate(crosses):
            cross = torch.as_tensor(cross, device=self.device, dtype=wide)
            self.cross[p, : cross.shape[0], : cross.shape[1]] = cross
        ra, rb = self.coords[self.ia], self.coords[self.ib]
        b_in_a = self.cross @ rb  # B's neurons projected on span A, in A's coordinates
        a_in_b = self.cross.transpose(1, 2) @ ra
        res2 = torch.stack([1.0 - (a_in_b * a_in_b).sum(1), 1.0 - (b_in_a * b_in_a).sum(1)], 1).clamp_(0.0, 1.0)
        live = torch.zeros(n_pairs, 2, h, dtype=torch.bool, device=self.device)
        sizes = torch.as_tensor(self.sizes, device=self.device)
        slots = torch.arange(h, device=self.device)
        live[:, 0] = slots < sizes[self.ia][:, None]
        live[:, 1] = slots < sizes[self.ib][:, None]
        self.res2 = res2.masked_fill_(~live, -math.inf).to(dtype)
        gram = inverse @ inverse.transpose(1, 2)  # Gram matrices of the duals, per model
        M = torch.empty(n_pairs, 2 * h, 2 * h, dtype=wide, device=self.device)
        M[:, :h, :h] = gram[self.ia]
        M[:, h:, h:] = gram[self.ib]
        M[:, :h, h:] = inverse[self.ia] @ b_in_a
        M[:, h:, :h] = inverse[self.ib] @ a_in_b
        self.M = M.to(dtype)
        self.amplify2 = AMPLIFY.get(dtype, AMPLIFY[torch.float32]) ** 2
        self.limit2 = torch.diagonal(self.M, dim1=1, dim2=2).reshape(n_pairs, 2, h) / self.amplify2
        self.slot = slots.expand(n_pairs, 2, h).clone()  # original live position held by each slot
        self.level = torch.ones(n_pairs, dtype=dtype, device=self.device)
        self.floor2 = torch.as_tensor(np.square(np.asarray(floor, dtype=np.float64)), device=self.device).to(dtype)
        self.critical = torch.zeros(n_pairs, 2, h, dtype=dtype, device=self.device)
        self.pending = torch.zeros(n_pairs, 2, FLUSH, 2 * h, dtype=dtype, device=self.device)
        self.n_pending = 0
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.stats = {"steps": 0, "flushes": 0, "compactions": 0, "rebases": 0}
        self._index()

    def _index(self) -> None:
        """Index tensors and views of the current width (a step then creates no view it can reuse)."""
        P, h = self.n_pairs, self.h
        self.offset = torch.tensor([0, h], device=self.device)
        self.row_base = torch.arange(P, device=self.device)[:, None] * (2 * h)
        self.rows = torch.arange(P, device=self.device)[:, None]
        self.M_rows = self.M.view(P * 2 * h, 2 * h)
        self.res2_flat = self.res2.view(P, 2 * h)
        self.res2_a, self.res2_b = self.res2[:, 0], self.res2[:, 1]
        self.limit2_flat = self.limit2.view(P, 2 * h)
        self.level_column = self.level.view(P, 1)
        self.by_side = self.pending.view(2 * P, FLUSH, 2 * h)
        self._views: dict[int, tuple] = {}

    def _slot(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of pending slot ``t``: the slots before it, the slot, and the gains of A and of B it holds."""
        views = self._views.get(t)
        if views is None:
            h = self.h
            # A's deletion raises B's ratios by its row's B part squared, and B's deletion A's by its A part.
            views = (self.by_side[:, :t], self.pending[:, :, t], self.pending[:, 1, t, :h], self.pending[:, 0, t, h:])
            self._views[t] = views
        return views

    def run(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Peel every pair to the end.

        Returns
        -------
        list of (numpy.ndarray, numpy.ndarray)
            Per pair, the critical ε of A's and of B's live neurons (shapes (k_a,), (k_b,)), in the order
            of their factors' ``live``.
        """
        while True:
            self.step()
            if self.n_pending == FLUSH:
                self.flush()
            if self.stats["steps"] % CHECK == 0 and not bool((self.level > self.floor2).any()):
                break
        self.flush(last=True)
        critical = self.critical.to(torch.float64).cpu().numpy()
        na, nb = self.ia.cpu().numpy(), self.ib.cpu().numpy()
        return [(critical[p, 0, : self.sizes[na[p]]], critical[p, 1, : self.sizes[nb[p]]])
                for p in range(self.n_pairs)]

    def step(self) -> None:
        """Delete, in every pair, the neuron of largest ratio of each side whose ratio reaches the level."""
        P, h, t = self.n_pairs, self.h, self.n_pending
        tops, j = self.res2.max(2)  # (P, 2): each side's largest squared ratio and its slot
        torch.minimum(self.level, tops.amax(1), out=self.level)
        want = tops >= self.level_column
        index = j + self.offset  # (P, 2): the candidates' rows of M
        m = self.M_rows.index_select(0, (index + self.row_base).view(-1))  # (2P, 2h): their rows of M₀
        pending, slot, gain_a, gain_b = self._slot(t)
        if t:
            weights = pending.gather(2, index.view(2 * P, 1, 1).expand(2 * P, t, 1))
            m.sub_(torch.matmul(weights.transpose(1, 2), pending).view(2 * P, 2 * h))
        m = m.view(P, 2, 2 * h)
        delta = m.view(2 * P, 2 * h).gather(1, index.view(2 * P, 1)).view(P, 2)  # ‖d_j‖² of each candidate
        ok = want & (delta > self.limit2_flat.gather(1, index))
        torch.mul(m, torch.where(ok, delta.rsqrt(), 0.0).unsqueeze(2), out=slot)
        self.res2_flat.scatter_(1, index, tops.masked_fill(ok, -math.inf))
        self.res2_a.addcmul_(gain_a, gain_a)
        self.res2_b.addcmul_(gain_b, gain_b)
        self.history.append((j, ok, want, self.level.clone()))
        self.n_pending += 1
        self.stats["steps"] += 1

    def flush(self, last: bool = False) -> None:
        """Fold the pending updates into ``M₀``; re-factor the sides that wait for it; compact (unless ``last``)."""
        t, h, P = self.n_pending, self.h, self.n_pairs
        if t:
            updates = self.by_side[:, :t]  # (2P, t, 2h); batch 2p + side holds the side's rows
            own = torch.stack([self.pending[:, 0, :t, :h], self.pending[:, 1, :t, h:]], 1).view(2 * P, t, h)
            self.M.view(2 * P, h, 2 * h).baddbmm_(own.transpose(1, 2), updates, alpha=-1.0)
            self.n_pending = 0
            self.stats["flushes"] += 1
        waiting = self._waiting()
        self._record()
        for p, side in waiting:
            self.rebase(p, side)
        if last:
            return
        alive = (self.res2 > -math.inf).sum(2).amax()
        width = max(1, int(alive))
        if width <= COMPACT_FRACTION * h:
            self.compact(width)

    def _waiting(self) -> list[tuple[int, int]]:
        """(pair, side) of the deletions refused since the last flush because their dual was amplified."""
        if not self.history:
            return []
        _, ok, want, level = (torch.stack(x) for x in zip(*self.history, strict=True))
        refused = (want & ~ok & (level > self.floor2)[:, :, None]).any(0)
        return [tuple(x) for x in refused.nonzero().tolist()]

    def _record(self) -> None:
        """Write the critical ε of the deletions since the last record (slots translated to live positions)."""
        if not self.history:
            return
        j, ok, _, level = (torch.stack(x) for x in zip(*self.history, strict=True))
        self.history.clear()
        done = ok & (level > self.floor2)[:, :, None]  # (T, P, 2)
        step, pair, side = done.nonzero(as_tuple=True)
        position = self.slot[pair, side, j[step, pair, side]]
        self.critical[pair, side, position] = level[step, pair].sqrt()

    def rebase(self, p: int, side: int) -> None:
        """Recompute pair ``p``'s rows of ``side`` from its remaining neurons, and the other side's ratios.

        The duals of the remaining neurons ``Z = Q T`` (a QR of their coordinates) are ``Q T⁻ᵀ``: their Gram
        matrix is ``T⁻¹ T⁻ᵀ`` and their inner products with the other side's neurons ``X`` (projected on
        this side's span) ``T⁻¹ Qᵀ X``; the other side's squared ratios are ``1 − ‖Qᵀ X‖²``.
        """
        self.stats["rebases"] += 1
        h, other = self.h, 1 - side
        alive = self.res2[p] > -math.inf
        own, their = alive[side].nonzero()[:, 0], alive[other].nonzero()[:, 0]
        models = (self.ia[p], self.ib[p])
        wide = torch.float64
        cross = self.cross[p] if side == 0 else self.cross[p].T
        Z = self.coords[models[side]][:, self.slot[p, side, own]]
        X = cross @ self.coords[models[other]][:, self.slot[p, other, their]]
        q, t = torch.linalg.qr(Z)
        inverse = torch.linalg.solve_triangular(t, torch.eye(t.shape[0], dtype=wide, device=self.device), upper=True)
        Y = q.T @ X
        rows = own + side * h
        block = torch.zeros(own.numel(), 2 * h, dtype=wide, device=self.device)
        block[:, own + side * h] = inverse @ inverse.T
        block[:, their + other * h] = inverse @ Y
        self.M[p, side * h : (side + 1) * h] = 0.0
        self.M[p, rows] = block.to(self.dtype)
        self.limit2[p, side, own] = torch.diagonal(self.M[p, rows][:, rows]) / self.amplify2
        self.res2[p, other, their] = (1.0 - (Y * Y).sum(0)).clamp_(0.0, 1.0).to(self.dtype)

    def compact(self, width: int) -> None:
        """Keep ``width`` slots per side: the remaining neurons first (pending updates must be folded)."""
        self.stats["compactions"] += 1
        keep = torch.argsort((self.res2 == -math.inf).to(torch.int8), dim=2, stable=True)[:, :, :width]
        self.res2 = self.res2.gather(2, keep)
        self.limit2 = self.limit2.gather(2, keep)
        self.slot = self.slot.gather(2, keep)
        index = torch.cat([keep[:, 0], keep[:, 1] + self.h], 1)  # (P, 2 width) rows of M
        rows = self.M.view(-1, 2 * self.h).index_select(0, (index + self.row_base).view(-1))
        self.M = rows.view(self.n_pairs, 2 * width, 2 * self.h).gather(
            2, index[:, None, :].expand(self.n_pairs, 2 * width, 2 * width))
        self.h = width
        self.pending = torch.zeros(self.n_pairs, 2, FLUSH, 2 * width, dtype=self.dtype, device=self.device)
        self._index()


def _padded_coords(coords: Sequence[np.ndarray], h: int, device: torch.device) -> torch.Tensor:
    """Each model's coordinates in an (h × h) block, the identity on the padding."""
    out = torch.zeros(len(coords), h, h, dtype=torch.float64, device=device)
    for m, c in enumerate(coords):
        k = c.shape[1]
        out[m, :k, :k] = torch.as_tensor(c, dtype=torch.float64, device=device)
        out[m, range(k, h), range(k, h)] = 1.0
    return out


def _inverses(padded: torch.Tensor, coords: Sequence[np.ndarray]) -> torch.Tensor:
    """Inverse of each padded coordinate block (a triangular solve where the block is upper triangular)."""
    eye = torch.eye(padded.shape[1], dtype=padded.dtype, device=padded.device).expand_as(padded)
    triangular = torch.as_tensor([not np.tril(c, -1).any() for c in coords], device=padded.device)
    inverse = torch.empty_like(padded)
    if bool(triangular.all()):
        return torch.linalg.solve_triangular(padded, eye, upper=True)
    if bool(triangular.any()):
        inverse[triangular] = torch.linalg.solve_triangular(padded[triangular], eye[triangular], upper=True)
    inverse[~triangular] = torch.linalg.inv(padded[~triangular])
    return inverse
