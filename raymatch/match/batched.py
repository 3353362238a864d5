"""The match kernel for a block of pairs: stacked cross products and lockstep peels, in torch.

A pair task (one layer, the pairs between two blocks of models or within one) hands all its pairs of factors
to :func:`match_curves` at once. Their cross products are a few large GEMMs (``Q_aᵀ [Q_b1 … Q_bk]`` for the
partners of each model ``a``), and their peels run together (:class:`~raymatch.match.lockstep.LockstepPeel`),
so the per-neuron work of Python is paid once per block instead of once per pair. The same code runs on the
CPU and on a CUDA device (``device=``). The results are those of :func:`~raymatch.match.match_curve` for each
pair, up to float64 rounding.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .api import match_curve
from .factor import Factor
from .inputs import resolve_exact_tol
from .lockstep import LockstepPeel
from .matches import MatchCurve

#: The lockstep state of one chunk of pairs is kept under about this many bytes (pairs beyond it run in
#: further chunks; each chunk's Python work per step is paid once for all of its pairs).
CHUNK_BYTES = 256 * 2**20
#: Bytes of lockstep state per pair, per squared width (M, its compacted copy, the set-up's products).
PAIR_BYTES = 112
#: Fewer pairs than this are peeled one at a time (:func:`~raymatch.match.match_curve`): the lockstep's work per
#: step is then shared by too few pairs to pay off (measured on 2 cores: a lone 512 + 512 pair 0.18 s in
#: lockstep, 0.13 s alone; a lone 128 + 128 pair ~25 ms against ~9 ms).
LOCKSTEP_MIN_PAIRS = 3
#: The bases of a block are stacked into one matrix (so that each model's partners are one GEMM) up to this size.
STACK_BYTES = 1 * 2**30


def match_curves(pairs: Sequence[tuple[Factor, Factor]], *, exact_tol=None, device=None, dtype=None,
                 crosses: Sequence | None = None, timings: dict | None = None) -> list[MatchCurve]:
    """Every neuron's critical ε for each pair of factors, computed together.

    Parameters
    ----------
    pairs : sequence of (Factor, Factor)
        The pairs (model a, model b) of one layer; factors may repeat (a model paired with several others).
    exact_tol : float or sequence of float, optional
        The exact tolerance, one for all pairs or one per pair, in [``EXACT_TOL``, 1); default ``EXACT_TOL``
        (as :func:`~raymatch.match.match_curve` for factors: pass the tolerance of the stored activations).
    device : str or torch.device, optional
        Where to compute (default: the CPU).
    dtype : torch.dtype, optional
        Of the peel's state (default ``torch.float64``; the cross products and the set-up are float64 always).
        ``torch.float32`` halves the peel's memory traffic; measured on ReLU-like layers it moves critical ε by
        < 5e-7, on near-degenerate ones by up to 3e-5, and changed no set at ε = 0 or the paper's grid
        (``tests/match/test_batched_kernel.py``), but it is not float64-accurate.
    crosses : sequence of array_like, shape (fa.rank, fb.rank), optional
        The pairs' cross products when already computed (:func:`cross_products`).
    timings : dict, optional
        Receives (adds to) the seconds spent on the ``cross`` products, the peels' ``setup``, ``steps`` and
        ``flushes``, and on the pairs peeled ``one_pair`` at a time.

    Returns
    -------
    list of MatchCurve
        One per pair, in order: what ``match_curve(fa, fb, cross=..., exact_tol=...)`` returns.

    Notes
    -----
    Pairs with a rank-deficient side (more live neurons than the rank of their span: duplicated neurons,
    fewer samples than neurons), and blocks of fewer than :data:`LOCKSTEP_MIN_PAIRS` pairs, are peeled one at a
    time by :func:`~raymatch.match.match_curve` on the CPU.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import factor, match_curve, match_curves
    >>> rng = np.random.default_rng(0)
    >>> fs = [factor(rng.standard_normal((80, 6))) for _ in range(3)]
    >>> pairs = [(fs[0], fs[1]), (fs[0], fs[2]), (fs[1], fs[2])]
    >>> curves = match_curves(pairs)
    >>> all(np.allclose(c.critical_a, match_curve(a, b).critical_a) for c, (a, b) in zip(curves, pairs))
    True
    """
    pairs = _check_pairs(pairs)
    tolerances = _tolerances(exact_tol, len(pairs))
    device = torch.device("cpu") if device is None else torch.device(device)
    dtype = torch.float64 if dtype is None else dtype
    clock = dict.fromkeys(("cross", "setup", "steps", "flushes", "one_pair"), 0.0)
    started = time.perf_counter()
    if crosses is None:
        crosses = _cross_tensors(pairs, device)
    else:
        crosses = _check_crosses(pairs, crosses)
    clock["cross"] = time.perf_counter() - started
    curves: list[MatchCurve | None] = [None] * len(pairs)

    def one_at_a_time(p: int) -> None:
        started = time.perf_counter()
        cross = crosses[p].cpu().numpy() if isinstance(crosses[p], torch.Tensor) else crosses[p]
        curves[p] = match_curve(*pairs[p], cross=np.asarray(cross, dtype=np.float64), exact_tol=tolerances[p])
        clock["one_pair"] += time.perf_counter() - started

    full_rank = []
    for p, (fa, fb) in enumerate(pairs):
        if fa.coords.shape[0] < fa.coords.shape[1] or fb.coords.shape[0] < fb.coords.shape[1]:
            one_at_a_time(p)
        else:
            full_rank.append(p)
    for chunk in _chunks(full_rank, pairs):
        if len(chunk) < LOCKSTEP_MIN_PAIRS:
            for p in chunk:
                one_at_a_time(p)
            continue
        results, seconds = _peel_chunk(pairs, chunk, crosses, tolerances, device, dtype)
        for key, value in seconds.items():
            clock[key] += value
        for p, (live_a, live_b) in zip(chunk, results, strict=True):
            curves[p] = _curve(*pairs[p], live_a, live_b)
    if timings is not None:
        for key, value in clock.items():
            timings[key] = timings.get(key, 0.0) + value
    return curves


def _peel_chunk(pairs, chunk: list[int], crosses, tolerances, device, dtype) -> tuple[list, dict]:
    """The critical ε of the live neurons of the pairs ``chunk``, peeled in lockstep, and the peel's seconds."""
    models: dict[int, int] = {}
    coords = []
    for p in chunk:
        for f in pairs[p]:
            if id(f) not in models:
                models[id(f)] = len(coords)
                coords.append(f.coords)
    model_a = [models[id(pairs[p][0])] for p in chunk]
    model_b = [models[id(pairs[p][1])] for p in chunk]
    with _one_thread(device):
        peel = LockstepPeel(coords, model_a, model_b, [crosses[p] for p in chunk], [tolerances[p] for p in chunk],
                            device=device, dtype=dtype)
        return peel.run(), peel.seconds


def cross_products(pairs: Sequence[tuple[Factor, Factor]], *, device=None) -> list[np.ndarray]:
    """The cross products ``fa.basis.T @ fb.basis`` of many pairs, as a few stacked GEMMs.

    For the pairs of one model ``a`` with models ``b1 … bk`` this is one product ``Q_aᵀ [Q_b1 … Q_bk]``.
    Pass the result to :func:`match_curves` (``crosses=``) and to the measures of the same pairs.

    Parameters
    ----------
    pairs : sequence of (Factor, Factor)
    device : str or torch.device, optional
        Where to compute (default: the CPU). Always in float64: squared ratios are ``1 − ‖projection‖²``, and a
        cross product rounded to float32 would leave them ~1e-7 off, ratios near 0 ~3e-4 off.

    Returns
    -------
    list of numpy.ndarray, shape (fa.rank, fb.rank), float64

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import cross_product, cross_products, factor
    >>> rng = np.random.default_rng(0)
    >>> fs = [factor(rng.standard_normal((50, k))) for k in (3, 2, 4)]
    >>> crosses = cross_products([(fs[0], fs[1]), (fs[0], fs[2]), (fs[1], fs[2])])
    >>> [c.shape for c in crosses]
    [(3, 2), (3, 4), (2, 4)]
    >>> bool(np.allclose(crosses[1], cross_product(fs[0], fs[2])))
    True
    """
    pairs = _check_pairs(pairs)
    device = torch.device("cpu") if device is None else torch.device(device)
    return [c.cpu().numpy() for c in _cross_tensors(pairs, device)]


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU operations on one thread inside the block (nothing changes on other devices).

    The peel's steps are many small operations: with more threads each one waits for the others (measured on
    2 shared cores: a 64 × 64 matmul 72 µs on one thread, 5.4 ms on two), and its flushes are bound by
    memory. Ray workers run one thread per task anyway.
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_pairs(pairs) -> list[tuple[Factor, Factor]]:
    """Each pair as two factors of the same samples, both centred or both not; a ValueError names the first bad one."""
    checked = []
    for p, pair in enumerate(pairs):
        try:
            fa, fb = pair
        except (TypeError, ValueError):
            raise ValueError(f"pairs[{p}] must be a pair (fa, fb) of Factors; got {pair!r}") from None
        for name, f in (("fa", fa), ("fb", fb)):
            if not isinstance(f, Factor):
                raise ValueError(f"pairs[{p}]: {name} must be a Factor; got {type(f).__name__}")
        if fa.n_samples != fb.n_samples:
            raise ValueError(f"pairs[{p}]: A and B must have the same number of samples (rows): "
                             f"A has {fa.n_samples}, B has {fb.n_samples}")
        if fa.centered != fb.centered:
            raise ValueError(f"pairs[{p}]: A and B must both be centered or both not: "
                             "factor them with the same center=")
        checked.append((fa, fb))
    return checked


def _tolerances(exact_tol, n_pairs: int) -> list[float]:
    """One exact tolerance per pair (each checked as :func:`~raymatch.match.inputs.resolve_exact_tol` does)."""
    if exact_tol is None or isinstance(exact_tol, numbers.Real):
        return [resolve_exact_tol(exact_tol)] * n_pairs
    values = list(exact_tol)
    if len(values) != n_pairs:
        raise ValueError(f"exact_tol must be one number or one per pair ({n_pairs}); got {len(values)}")
    return [resolve_exact_tol(value) for value in values]


def _check_crosses(pairs, crosses) -> list:
    """The given cross products, each of shape (fa.rank, fb.rank)."""
    crosses = list(crosses)
    if len(crosses) != len(pairs):
        raise ValueError(f"crosses must hold one cross product per pair ({len(pairs)}); got {len(crosses)}")
    for p, ((fa, fb), cross) in enumerate(zip(pairs, crosses, strict=True)):
        if tuple(cross.shape) != (fa.rank, fb.rank):
            raise ValueError(f"crosses[{p}] must have shape ({fa.rank}, {fb.rank}) (A's rank, B's rank); "
                             f"got {tuple(cross.shape)}")
    return crosses


def _cross_tensors(pairs, device: torch.device) -> list[torch.Tensor]:
    """``fa.basis.T @ fb.basis`` for every pair: one GEMM per model ``a`` and run of its partners.

    The bases are stacked once, transposed (a factor's basis is column-major: each becomes a block of rows, a
    plain copy), unless every model ``a`` has a single partner on the CPU: those pairs multiply the factors' own
    arrays. Always in float64 (see :func:`cross_products`).
    """
    runs, p = [], 0
    while p < len(pairs):  # runs of consecutive pairs of the same model a
        q = p + 1
        while q < len(pairs) and pairs[q][0] is pairs[p][0]:
            q += 1
        runs.append((p, q))
        p = q
    unique: dict[int, Factor] = {}
    for fa, fb in pairs:
        unique.setdefault(id(fa), fa)
        unique.setdefault(id(fb), fb)
    rows: dict[int, tuple[int, int]] = {}
    start = 0
    for key, f in unique.items():
        rows[key] = (start, start + f.rank)
        start += f.rank
    n_samples = pairs[0][0].n_samples if pairs else 0
    dtype = torch.float64
    own_arrays = device.type == "cpu" and all(q - p == 1 for p, q in runs)
    stacked = None
    if not own_arrays and n_samples * start * torch.finfo(dtype).bits // 8 <= STACK_BYTES:
        stacked = torch.empty(start, n_samples, dtype=dtype, device=device)
        for key, f in unique.items():
            lo, hi = rows[key]
            stacked[lo:hi] = torch.as_tensor(f.basis.T, device=device)

    def basis_rows(f: Factor) -> torch.Tensor:
        if stacked is not None:
            return stacked[slice(*rows[id(f)])]
        return torch.as_tensor(f.basis.T, device=device, dtype=dtype)

    out: list[torch.Tensor | None] = [None] * len(pairs)
    for p, q in runs:
        fa, partners = pairs[p][0], [pairs[r][1] for r in range(p, q)]
        side_by_side = all(rows[id(b)][0] == rows[id(a)][1] for a, b in itertools.pairwise(partners))
        if stacked is not None and len(partners) > 1 and side_by_side:
            lo, hi = rows[id(partners[0])][0], rows[id(partners[-1])][1]
            block = basis_rows(fa) @ stacked[lo:hi].T
            for r, fb in zip(range(p, q), partners, strict=True):
                out[r] = block[:, rows[id(fb)][0] - lo : rows[id(fb)][1] - lo]
        else:
            for r, fb in zip(range(p, q), partners, strict=True):
                out[r] = basis_rows(fa) @ basis_rows(fb).T
    return out


def _chunks(batched: list[int], pairs) -> list[list[int]]:
    """The pairs to peel in lockstep, by width (similar widths pad least), each chunk within :data:`CHUNK_BYTES`.

    A last chunk too small to be worth a lockstep shares the pairs of the one before it.
    """
    width = {p: max(1, pairs[p][0].coords.shape[1], pairs[p][1].coords.shape[1]) for p in batched}
    chunks, current, widest = [], [], 0
    for p in sorted(batched, key=lambda p: width[p]):
        widest_next = max(widest, width[p])
        if current and (len(current) + 1) * PAIR_BYTES * widest_next**2 > CHUNK_BYTES:
            chunks.append(current)
            current, widest_next = [], width[p]
        current.append(p)
        widest = widest_next
    if current:
        chunks.append(current)
    if len(chunks) > 1 and len(chunks[-1]) < LOCKSTEP_MIN_PAIRS:
        both = chunks.pop(-2) + chunks.pop(-1)
        chunks += [both[: len(both) // 2], both[len(both) // 2 :]]
    return chunks


def _curve(fa: Factor, fb: Factor, live_a: np.ndarray, live_b: np.ndarray) -> MatchCurve:
    """The :class:`MatchCurve` of a pair from its live neurons' critical ε (``inf`` for the dead)."""
    critical_a = np.full(fa.n_neurons, np.inf)
    critical_b = np.full(fb.n_neurons, np.inf)
    critical_a[fa.live] = live_a
    critical_b[fb.live] = live_b
    return MatchCurve(critical_a, critical_b, fa.n_samples, fa.dead, fb.dead)
