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
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

#: Steps between two folds of the pending updates into ``M₀`` (one batched GEMM each).
FLUSH = 16
#: Steps between two checks whether any pair is left to peel (a check waits for the device).
CHECK = 4
#: Compact the arrays when the widest remaining side of any pair needs at most this fraction of the width.
COMPACT_FRACTION = 0.75
#: The largest array a :class:`Workspace` keeps between peels.
WORKSPACE_BYTES = 256 * 2**20
#: A dual shorter than 1 / AMPLIFY of its length when last computed is recomputed before it is used
#: (float64: a relative rounding of at most ~1e-10 in its squared norm; see the module notes).
AMPLIFY = {torch.float64: 1e3, torch.float32: 30.0}


class Workspace(threading.local):
    """The large arrays of the peels of one thread, kept from one peel to the next.

    Fresh memory costs a page fault per page on its first write (measured: the first write of 30 MB takes 3–4×
    the second), and arrays this large are returned to the system when freed; a pair task peels one chunk after
    another. Arrays larger than :data:`WORKSPACE_BYTES` are not kept. A thread runs one :class:`LockstepPeel` at a
    time (the arrays of a peel live here until the next one is set up).
    """

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``, in the buffer kept under ``key`` (grown when too small)."""
        numel = math.prod(shape)
        slot = (key, dtype, device)
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < numel:
            self.buffers.pop(slot, None)
            buffer = torch.empty(numel, dtype=dtype, device=device)
            if numel * buffer.element_size() <= WORKSPACE_BYTES:
                self.buffers[slot] = buffer
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        """Release every kept array."""
        self.buffers.clear()


#: Each thread's arrays (see :class:`Workspace`); ``WORKSPACE.clear()`` releases them.
WORKSPACE = Workspace()


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

    Attributes
    ----------
    stats : dict
        Counts of ``steps``, ``flushes``, ``compactions`` and ``rebases`` (re-factored sides).
    seconds : dict
        Wall time of the ``setup``, the ``steps`` and the ``flushes`` (with the re-factorings and compactions);
        on a GPU, of launching them unless the device is synchronised.

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
        started = time.perf_counter()
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self.sizes = [int(c.shape[1]) for c in coords]
        self.n_pairs = n_pairs = len(model_a)
        self.h = h = max(1, *self.sizes) if self.sizes else 1
        self.ia = torch.as_tensor(np.asarray(model_a, dtype=np.int64), device=self.device)
        self.ib = torch.as_tensor(np.asarray(model_b, dtype=np.int64), device=self.device)
        self.coords = _padded_coords(coords, h, self.device)
        self.crosses = [torch.as_tensor(cross, device=self.device, dtype=torch.float64) for cross in crosses]
        self._buffer = "M0"
        M, res2 = _neuron_space(self.coords, _inverses(self.coords, coords), self.ia, self.ib, self.crosses)
        slots = torch.arange(h, device=self.device)
        sizes = torch.as_tensor(self.sizes, device=self.device)
        live = torch.stack([slots < sizes[self.ia][:, None], slots < sizes[self.ib][:, None]], 1)
        self.res2 = res2.masked_fill_(~live, -math.inf).to(dtype)
        self.M = M.to(dtype)
        self.amplify2 = AMPLIFY.get(dtype, AMPLIFY[torch.float32]) ** 2
        self.limit2 = torch.diagonal(self.M, dim1=1, dim2=2).reshape(n_pairs, 2, h) / self.amplify2
        self.slot = slots.expand(n_pairs, 2, h).clone()  # original live position held by each slot
        # The steps since the last flush: each side's candidate slot, whether it qualified (its ratio reaches the
        # level) and whether it was deleted; levels[t] is the level before step t (levels[0] carries over).
        self.chosen = torch.zeros(FLUSH, n_pairs, 2, dtype=torch.long, device=self.device)
        self.wanted = torch.zeros(FLUSH, n_pairs, 2, dtype=torch.bool, device=self.device)
        self.deleted = torch.zeros(FLUSH, n_pairs, 2, dtype=torch.bool, device=self.device)
        self.levels = torch.ones(FLUSH + 1, n_pairs, dtype=dtype, device=self.device)
        self.tops = torch.empty(n_pairs, 2, dtype=dtype, device=self.device)
        self.floor2 = torch.as_tensor(np.square(np.asarray(floor, dtype=np.float64)), device=self.device).to(dtype)
        self.critical = torch.zeros(n_pairs, 2, h, dtype=dtype, device=self.device)
        self.pending = WORKSPACE.take("pending", (n_pairs, 2, FLUSH, 2 * h), dtype, self.device)
        self.n_pending = 0
        self.stats = {"steps": 0, "flushes": 0, "compactions": 0, "rebases": 0}
        self._index()
        self.seconds = {"setup": time.perf_counter() - started, "steps": 0.0, "flushes": 0.0}

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
        started = time.perf_counter()
        while True:
            self.step()
            if self.n_pending == FLUSH:
                self.flush()
            if self.stats["steps"] % CHECK == 0 and not bool((self.levels[self.n_pending] > self.floor2).any()):
                break
        self.flush(last=True)
        self.seconds["steps"] = time.perf_counter() - started - self.seconds["flushes"]
        critical = self.critical.to(torch.float64).cpu().numpy()
        na, nb = self.ia.cpu().numpy(), self.ib.cpu().numpy()
        return [(critical[p, 0, : self.sizes[na[p]]], critical[p, 1, : self.sizes[nb[p]]])
                for p in range(self.n_pairs)]

    def step(self) -> None:
        """Delete, in every pair, the neuron of largest ratio of each side whose ratio reaches the level."""
        P, h, t = self.n_pairs, self.h, self.n_pending
        tops, j = torch.max(self.res2, 2, out=(self.tops, self.chosen[t]))  # each side's largest ratio, its slot
        level = torch.minimum(self.levels[t], tops.amax(1), out=self.levels[t + 1])
        want = torch.ge(tops, level[:, None], out=self.wanted[t])
        index = j + self.offset  # (P, 2): the candidates' rows of M
        m = self.M_rows.index_select(0, (index + self.row_base).view(-1))  # (2P, 2h): their rows of M₀
        pending, slot, gain_a, gain_b = self._slot(t)
        if t:
            weights = pending.gather(2, index.view(2 * P, 1, 1).expand(2 * P, t, 1))
            m.sub_(torch.matmul(weights.transpose(1, 2), pending).view(2 * P, 2 * h))
        m = m.view(P, 2, 2 * h)
        delta = m.view(2 * P, 2 * h).gather(1, index.view(2 * P, 1)).view(P, 2)  # ‖d_j‖² of each candidate
        ok = torch.gt(delta, self.limit2_flat.gather(1, index), out=self.deleted[t]).logical_and_(want)
        torch.mul(m, torch.where(ok, delta.rsqrt(), 0.0).unsqueeze(2), out=slot)
        self.res2_flat.scatter_(1, index, tops.masked_fill(ok, -math.inf))
        self.res2_a.addcmul_(gain_a, gain_a)
        self.res2_b.addcmul_(gain_b, gain_b)
        self.n_pending += 1
        self.stats["steps"] += 1

    def flush(self, last: bool = False) -> None:
        """Fold the pending updates into ``M₀``; re-factor the sides that wait for it; compact (unless ``last``)."""
        started = time.perf_counter()
        t, h, P = self.n_pending, self.h, self.n_pairs
        if t:
            updates = self.by_side[:, :t]  # (2P, t, 2h); batch 2p + side holds the side's rows
            own = torch.stack([self.pending[:, 0, :t, :h], self.pending[:, 1, :t, h:]], 1).view(2 * P, t, h)
            self.M.view(2 * P, h, 2 * h).baddbmm_(own.transpose(1, 2), updates, alpha=-1.0)
            self.stats["flushes"] += 1
        waiting = self._waiting(t)
        self._record(t)
        self.levels[0] = self.levels[t]
        self.n_pending = 0
        for p, side in waiting:
            self.rebase(p, side)
        if not last:
            width = max(1, int((self.res2 > -math.inf).sum(2).amax()))
            if width <= COMPACT_FRACTION * h:
                self.compact(width)
        self.seconds["flushes"] += time.perf_counter() - started

    def _waiting(self, t: int) -> list[tuple[int, int]]:
        """(pair, side) of the deletions refused in the last ``t`` steps because their dual was amplified."""
        if not t:
            return []
        active = self.levels[1 : t + 1] > self.floor2
        refused = (self.wanted[:t] & ~self.deleted[:t] & active[:, :, None]).any(0)
        return [tuple(x) for x in refused.nonzero().tolist()]

    def _record(self, t: int) -> None:
        """Write the critical ε of the deletions of the last ``t`` steps (slots translated to live positions)."""
        if not t:
            return
        level = self.levels[1 : t + 1]
        done = self.deleted[:t] & (level > self.floor2)[:, :, None]  # (t, P, 2)
        step, pair, side = done.nonzero(as_tuple=True)
        position = self.slot[pair, side, self.chosen[:t][step, pair, side]]
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
        cross = self.coords.new_zeros(self.coords.shape[1:])  # in the models' padded coordinates, not the slots'
        cross[: self.crosses[p].shape[0], : self.crosses[p].shape[1]] = self.crosses[p]
        cross = cross if side == 0 else cross.T
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
        P, target = self.n_pairs, "M1" if self._buffer == "M0" else "M0"
        rows = WORKSPACE.take("rows", (P * 2 * width, 2 * self.h), self.dtype, self.device)
        torch.index_select(self.M.view(-1, 2 * self.h), 0, (index + self.row_base).view(-1), out=rows)
        M = WORKSPACE.take(target, (P, 2 * width, 2 * width), self.dtype, self.device)
        torch.gather(rows.view(P, 2 * width, 2 * self.h), 2, index[:, None, :].expand(P, 2 * width, 2 * width), out=M)
        self.M, self._buffer = M, target
        self.h = width
        self.pending = WORKSPACE.take("pending", (self.n_pairs, 2, FLUSH, 2 * width), self.dtype, self.device)
        self._index()


def _neuron_space(coords: torch.Tensor, inverse: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                  crosses: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's ``M`` (P × 2h × 2h) and squared ratios (P × 2 × h, padding not yet marked), in float64.

    A's rows of ``M`` are ``[R_a⁻¹ R_a⁻ᵀ | R_a⁻¹ C R_b]`` (``C R_b``: B's neurons projected on span A, in A's
    coordinates), B's rows ``[R_b⁻¹ Cᵀ R_a | R_b⁻¹ R_b⁻ᵀ]``; the squared ratios are ``1 − ‖C R_b‖²`` and
    ``1 − ‖Cᵀ R_a‖²`` column by column.
    """
    n_pairs, h = ia.numel(), coords.shape[1]
    wide, device = coords.dtype, coords.device

    def take(key):
        return WORKSPACE.take(key, (n_pairs, h, h), wide, device)

    cross = take("cross")
    if all(tuple(c.shape) == (h, h) for c in crosses) and crosses:
        torch.stack(crosses, out=cross)
    else:
        cross.zero_()
        for p, c in enumerate(crosses):
            cross[p, : c.shape[0], : c.shape[1]] = c
    gram = inverse @ inverse.transpose(1, 2)  # the duals' Gram matrices, per model
    M = WORKSPACE.take("M0", (n_pairs, 2 * h, 2 * h), wide, device)
    left, right, b_in_a, a_in_b = take("left"), take("right"), take("b_in_a"), take("a_in_b")
    torch.bmm(cross, torch.index_select(coords, 0, ib, out=right), out=b_in_a)
    torch.bmm(cross.transpose(1, 2), torch.index_select(coords, 0, ia, out=left), out=a_in_b)
    torch.bmm(torch.index_select(inverse, 0, ia, out=left), b_in_a, out=M[:, :h, h:])
    torch.bmm(torch.index_select(inverse, 0, ib, out=right), a_in_b, out=M[:, h:, :h])
    M[:, :h, :h] = torch.index_select(gram, 0, ia, out=left)
    M[:, h:, h:] = torch.index_select(gram, 0, ib, out=right)
    res2 = torch.stack([(a_in_b * a_in_b).sum(1), (b_in_a * b_in_a).sum(1)], 1)
    return M, res2.neg_().add_(1.0).clamp_(0.0, 1.0)


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
