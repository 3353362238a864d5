"""The set-up of the lockstep peel: each pair's neuron-space matrix ``M`` and squared ratios, in torch.

For a pair (a, b) with coordinates ``R_a``, ``R_b`` (a model's live unit neurons in an orthonormal basis of their
span) and cross product ``C = Q_aᵀ Q_b``, side A's rows of ``M`` are ``[R_a⁻¹ R_a⁻ᵀ | R_a⁻¹ C R_b]`` and side B's
``[R_b⁻¹ Cᵀ R_a | R_b⁻¹ R_b⁻ᵀ]`` (see :mod:`raymatch.match.lockstep`); the squared ratios are ``1 − ‖C R_b‖²`` and
``1 − ‖Cᵀ R_a‖²`` column by column. That is four ``h³`` products per pair. They run one batched product per run
of pairs that share model ``a`` (the pair tasks' order: one model against the next ones), with the per-model
factor broadcast (no copy) on one side and, when the partners are consecutive models, a slice of the models'
stack on the other.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch

#: The largest array a :class:`Workspace` keeps between peels.
WORKSPACE_BYTES = 256 * 2**20


class Workspace(threading.local):
    """The large arrays of the peels of one thread, kept from one peel to the next.

    Fresh memory costs a page fault per page on its first write (measured: the first write of 30 MB takes 3–4×
    the second), and arrays this large are returned to the system when freed; a pair task peels one chunk after
    another. Arrays larger than :data:`WORKSPACE_BYTES` are not kept. A thread runs one peel at a time (the
    arrays of a peel live here until the next one is set up).
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


def neuron_space(coords: torch.Tensor, inverse: torch.Tensor, model_a: Sequence[int], model_b: Sequence[int],
                 crosses: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's ``M`` and squared ratios, in float64.

    Parameters
    ----------
    coords, inverse : torch.Tensor, shape (n_models, h, h), float64
        Each model's padded coordinates (:func:`padded_coords`) and their inverses (:func:`inverses`).
    model_a, model_b : sequence of int, length P
        The models of each pair.
    crosses : sequence of torch.Tensor, shape (k_a, k_b), float64
        Each pair's cross product.

    Returns
    -------
    M : torch.Tensor, shape (P, 2h, 2h)
        A workspace array (valid until the next set-up on this thread).
    res2 : torch.Tensor, shape (P, 2h)
        A's squared ratios, then B's (padding not yet marked).
    """
    n_pairs, h = len(model_a), coords.shape[1]
    wide, device = coords.dtype, coords.device
    cross = WORKSPACE.take("cross", (n_pairs, h, h), wide, device)
    if crosses and all(tuple(c.shape) == (h, h) for c in crosses):
        torch.stack(list(crosses), out=cross)
    else:
        cross.zero_()
        for p, c in enumerate(crosses):
            cross[p, : c.shape[0], : c.shape[1]] = c
    gram = inverse @ inverse.mT  # the duals' Gram matrices, per model
    M = WORKSPACE.take("M0", (n_pairs, 2 * h, 2 * h), wide, device)
    res2 = torch.empty(n_pairs, 2 * h, dtype=wide, device=device)
    scratch = WORKSPACE.take("scratch", (n_pairs, h, h), wide, device)
    for lo, hi in _runs(model_a):
        a, partners = model_a[lo], model_b[lo:hi]
        k = hi - lo
        block, part = M[lo:hi], scratch[lo:hi]
        c = cross[lo:hi]
        # B's neurons projected on span A, in A's coordinates (C R_b): B's ratios, and A's rows' B part.
        torch.bmm(c, _per_pair(coords, partners), out=part)
        torch.bmm(inverse[a].expand(k, h, h), part, out=block[:, :h, h:])
        torch.sum(part.square_(), 1, out=res2[lo:hi, h:])
        # A's neurons projected on span B, in B's coordinates (Cᵀ R_a): A's ratios, and B's rows' A part.
        torch.bmm(c.mT, coords[a].expand(k, h, h), out=part)
        torch.bmm(_per_pair(inverse, partners), part, out=block[:, h:, :h])
        torch.sum(part.square_(), 1, out=res2[lo:hi, :h])
        block[:, :h, :h] = gram[a]
        block[:, h:, h:] = _per_pair(gram, partners)
    return M, res2.neg_().add_(1.0).clamp_(0.0, 1.0)


def _runs(models: Sequence[int]) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each run of consecutive equal entries."""
    runs, lo = [], 0
    for p in range(1, len(models) + 1):
        if p == len(models) or models[p] != models[lo]:
            runs.append((lo, p))
            lo = p
    return runs


def _per_pair(per_model: torch.Tensor, models: Sequence[int]) -> torch.Tensor:
    """``per_model[models]``: a slice when the models are consecutive (no copy), else a gathered copy."""
    first = models[0]
    if all(m == first + i for i, m in enumerate(models)):
        return per_model[first : first + len(models)]
    return per_model[torch.as_tensor(np.asarray(models, dtype=np.int64), device=per_model.device)]


def padded_coords(coords: Sequence[np.ndarray], h: int, device: torch.device) -> torch.Tensor:
    """Each model's coordinates in an (h × h) block, the identity on the padding (float64)."""
    out = torch.zeros(len(coords), h, h, dtype=torch.float64, device=device)
    for m, c in enumerate(coords):
        k = c.shape[1]
        out[m, :k, :k] = torch.as_tensor(c, dtype=torch.float64, device=device)
        out[m, range(k, h), range(k, h)] = 1.0
    return out


def inverses(padded: torch.Tensor, coords: Sequence[np.ndarray]) -> torch.Tensor:
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
