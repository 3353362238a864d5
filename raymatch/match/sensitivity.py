"""What each measure sees: Ding et al.'s (2021) sensitivity and specificity tests, on plain arrays.

The pure part of ``raymatch evaluate-measures``; reading a store's activations and results is the command's.

- :func:`pc_deletion`: a layer against itself with its top k principal components removed, for k on a grid. A
  measure that sees the deleted directions grows more dissimilar as k grows: the Spearman ρ of k against the
  dissimilarity is then 1, and ``stops_noticing`` is the k from which the value no longer moves.
- :func:`depth_test`: over layer × layer matrices of pairs of different seeds, the Spearman ρ between |depth
  difference| and each measure's dissimilarity (larger: the measure tracks depth).
- :func:`specificity_test`: the probability that a measure rates a layer of another seed more similar than the
  next layer of the same seed (1: always; 0.5: it cannot tell).

Measures are named as in :data:`~raymatch.match.MEASURES`, plus the subspace match at each ε as
:func:`match_key` names it (``max_match@0.25``). Values are as measured: similarities, except ``procrustes``,
a distance; :func:`dissimilarity` turns each into a dissimilarity.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ._blas import one_thread, small
from .api import match_curve
from .factor import Factor, cross_product, factor
from .inputs import DEAD_RTOL, RANK_RTOL, as_activation_matrix
from .measures import MEASURES, SVCCA_KEEP, pair_measures

#: The paper's ε grid: the subspace match is one measure per ε.
MATCH_EPS = (0.15, 0.2, 0.25, 0.3, 0.5)
#: Measures whose value is a distance rather than a similarity.
DISTANCES = frozenset({"procrustes"})


def match_key(eps: float) -> str:
    """The name of the subspace match at ``eps`` as a measure, e.g. ``max_match@0.25``."""
    return f"max_match@{float(eps):g}"


def dissimilarity(measure: str, value):
    """``1 − value`` for a similarity, ``value`` for a distance (``procrustes``); arrays elementwise.

    Examples
    --------
    >>> from raymatch.match.sensitivity import dissimilarity
    >>> dissimilarity("cka", 0.75), dissimilarity("procrustes", 0.25), dissimilarity("max_match@0.25", 1.0)
    (0.25, 0.25, 0.0)
    """
    value = np.asarray(value, dtype=np.float64)
    out = value if measure in DISTANCES else 1.0 - value
    return float(out) if out.ndim == 0 else out


#: Values closer than this are ties in the rank statistics: rounding does not rank.
RESOLUTION = 1e-9


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ over the finite pairs, values rounded to ``RESOLUTION``; NaN when either side is constant."""
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = np.round(x[finite] / RESOLUTION), np.round(y[finite] / RESOLUTION)
    if x.size < 2 or np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


@dataclass(frozen=True)
class Deletion:
    """A layer against itself with its top k principal components deleted, for each k of a grid.

    Attributes
    ----------
    ks : numpy.ndarray, shape (m,), int64
        Numbers of deleted components, increasing.
    values : dict of str to numpy.ndarray, shape (m,)
        Each measure's value at each k (a similarity, or the Procrustes distance).
    spearman : dict of str to float
        Spearman ρ between k and the measure's dissimilarity: 1 when it grows with every deletion, NaN when the
        measure never moves.
    stops_noticing : dict of str to int
        The smallest k of the grid from which the value stays within ``tol`` of its value there: deleting more
        components is not seen (``ks[0]`` for a measure that sees no deletion at all).
    """

    ks: np.ndarray
    values: dict[str, np.ndarray]
    spearman: dict[str, float]
    stops_noticing: dict[str, int]


def delete_components(A, k: int, *, from_top: bool = True) -> np.ndarray:
    """``A`` with ``k`` principal components of its centred columns subtracted (the means kept).

    Parameters
    ----------
    A : array_like, shape (n_samples, n_neurons)
    k : int
        In [0, min(n_samples, n_neurons)].
    from_top : bool, default True
        Delete the ``k`` components of largest variance (else of smallest).

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_neurons), float64
        ``μ + X − U_k S_k V_kᵀ`` with ``X = A − μ = U S Vᵀ`` and ``k`` columns of ``U`` chosen.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.sensitivity import delete_components
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 4)) * [5.0, 3.0, 2.0, 1.0] + 7.0
    >>> D = delete_components(A, 2)
    >>> bool(np.allclose(D.mean(axis=0), A.mean(axis=0))), int(np.linalg.matrix_rank(D - D.mean(axis=0)))
    (True, 2)
    >>> (np.linalg.svd(A - A.mean(axis=0), compute_uv=False) / 10).round(1).tolist()
    [4.7, 2.6, 2.0, 1.1]
    >>> (np.linalg.svd(D - D.mean(axis=0), compute_uv=False) / 10).round(1).tolist()
    [2.0, 1.1, 0.0, 0.0]
    """
    means, delete, _ = _components(as_activation_matrix(A, "A"))
    return means + delete(k, from_top)


def _components(a: np.ndarray):
    """From one SVD of ``a``'s centred columns: their means, and the centred part with k components deleted.

    ``delete(k, from_top)`` gives that part as a matrix, ``deleted_factor(k, from_top)`` its centred factor, exactly.
    """
    means = a.mean(axis=0)
    with one_thread(small(a.size)):
        u, s, vt = np.linalg.svd(a - means, full_matrices=False)

    def kept(k: int, from_top: bool) -> slice:
        if not 0 <= k <= s.size:
            raise ValueError(f"k must be in [0, {s.size}] (the number of principal components); got {k}")
        return slice(k, None) if from_top else slice(0, s.size - k)

    def delete(k: int, from_top: bool) -> np.ndarray:
        rest = kept(k, from_top)
        with one_thread(small(a.size)):
            return (u[:, rest] * s[rest]) @ vt[rest]

    def deleted_factor(k: int, from_top: bool) -> Factor:
        # The deleted layer's span is that of the remaining left singular vectors, exactly: factoring the product
        # again would let the rounding of nearly flat neurons (1e-16 of the largest, much more of their own norm
        # once normalised) add directions the layer does not have.
        rest = kept(k, from_top)
        significant = s[rest] > RANK_RTOL * s[0] if s.size else np.zeros(0, bool)
        weights = s[rest][significant, None] * vt[rest][significant]  # rank × n_neurons
        norms = np.linalg.norm(weights, axis=0)
        live = np.flatnonzero(norms > DEAD_RTOL * norms.max(initial=0.0)) if norms.size else np.zeros(0, np.int64)
        if live.size == 0:
            return factor(np.zeros_like(a), center=True)
        return Factor(np.ascontiguousarray(u[:, rest][:, significant]), weights[:, live] / norms[live], live,
                      a.shape[0], a.shape[1], True, norms[live], np.zeros(a.shape[1]))

    return means, delete, deleted_factor


def pc_deletion(A, ks=None, *, measures=MEASURES, eps=MATCH_EPS, svcca_keep: float = SVCCA_KEEP,
                from_top: bool = True, center: bool = False, tol: float = 0.01) -> Deletion:
    """Ding et al.'s principal-component deletion test of one layer.

    Parameters
    ----------
    A : array_like, shape (n_samples, n_neurons)
        The layer's activations.
    ks : sequence of int, optional
        Numbers of components to delete, each in [0, min(n_samples, n_neurons)]; by default 0 and 10
        geometrically spaced values below the number of components (deleting all leaves a constant layer).
    measures : iterable of str, default MEASURES
        The measures of :func:`~raymatch.match.pair_measures` to test.
    eps : iterable of float, default MATCH_EPS
        The ε at which the subspace match is a measure (``max_match@ε``); empty for none.
    svcca_keep : float, default 0.99
    from_top : bool, default True
        Delete the components of largest variance first (as issue 24 asks); False deletes from the smallest up.
    center : bool, default False
        Whether the match's factors are centred (as a study's ``center``); the other measures always centre.
    tol : float, default 0.01
        How far a value may still move for the measure to count as no longer noticing (``stops_noticing``).

    Returns
    -------
    Deletion

    Examples
    --------
    CKA (dominated by the top components) sees the deletions; mean CCA, a function of the span alone, sees none:
    the deleted layer's span lies inside the original's.

    >>> import numpy as np
    >>> from raymatch.match.sensitivity import pc_deletion
    >>> rng = np.random.default_rng(0)
    >>> A = np.maximum(rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8)), 0.0)
    >>> result = pc_deletion(A, [0, 1, 2, 4], measures=["cka", "cca"], eps=[0.25])
    >>> result.values["cka"].round(2).tolist(), result.values["cca"].round(2).tolist()
    ([1.0, 0.58, 0.33, 0.13], [1.0, 1.0, 1.0, 1.0])
    >>> result.spearman["cka"], result.stops_noticing["cca"]
    (1.0, 0)
    """
    a = as_activation_matrix(A, "A")
    n_components = min(a.shape)
    if ks is None:
        ks = np.concatenate([[0], np.unique(np.round(np.geomspace(1, max(n_components - 1, 1), 10)))])
    ks = np.unique(np.asarray(ks, dtype=np.int64))
    measures, eps = tuple(measures), tuple(float(e) for e in eps)
    names = [*measures, *map(match_key, eps)]
    values = {name: np.empty(ks.size) for name in names}
    # The measures (which centre) read the centred parts, the deleted copy's as its exact factor: with the means
    # added back, deleting all but the smallest components leaves nearly constant columns whose centred part
    # carries the means' rounding (1e-16 of the mean, a large share of what is left). The match reads the layer as
    # the study does (``center``).
    means, delete, deleted_factor = _components(a)
    fa, ca = factor(a, center=center), factor(a - means, center=True)
    for i, k in enumerate(ks.tolist()):
        deleted = delete(k, from_top)
        ck = deleted_factor(k, from_top)
        for name, value in pair_measures(ca, ck, cross_product(ca, ck), measures=measures,
                                         svcca_keep=svcca_keep).items():
            values[name][i] = value
        if eps:
            fk = ck if center else factor(means + deleted)
            curve = match_curve(fa, fk, cross=cross_product(fa, fk))
            for e in eps:
                values[match_key(e)][i] = curve.at(e).similarity
    spearman = {name: _spearman(ks.astype(np.float64), dissimilarity(name, values[name])) for name in names}
    return Deletion(ks, values, spearman, {name: _stops_noticing(ks, values[name], tol) for name in names})


def _stops_noticing(ks: np.ndarray, values: np.ndarray, tol: float) -> int:
    """The first k from which every later value stays within ``tol`` of the value there."""
    for i in range(ks.size):
        if np.all(np.abs(values[i:] - values[i]) <= tol):
            return int(ks[i])
    return int(ks[-1])  # pragma: no cover - the last point always qualifies


def depth_test(values: dict, depths=None) -> dict[str, float]:
    """Ding et al.'s depth test: the Spearman ρ between |depth difference| and each measure's dissimilarity.

    Parameters
    ----------
    values : dict of str to array_like, shape (..., n_layers, n_layers)
        For each measure, one layer × layer matrix per pair of different seeds (stacked in any leading axes):
        entry ``[i, j]`` compares layer i of one seed with layer j of the other. NaN entries are left out.
    depths : array_like, shape (n_layers,), optional
        The layers' depths; ``0, 1, …`` by default.

    Returns
    -------
    dict of str to float
        ρ per measure, pooled over every entry of every matrix; NaN for a measure that never moves.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.sensitivity import depth_test
    >>> d = np.abs(np.subtract.outer(np.arange(4), np.arange(4)))
    >>> depth_test({"cka": 1.0 - 0.2 * d, "procrustes": np.ones((4, 4))})
    {'cka': 1.0, 'procrustes': nan}
    """
    out = {}
    for name, matrix in values.items():
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
            raise ValueError(f"values[{name!r}] must be layer × layer matrices; got shape {matrix.shape}")
        n = matrix.shape[-1]
        depth = np.arange(n, dtype=np.float64) if depths is None else np.asarray(depths, dtype=np.float64)
        if depth.shape != (n,):
            raise ValueError(f"depths must have shape ({n},) (one per layer); got {depth.shape}")
        gap = np.broadcast_to(np.abs(np.subtract.outer(depth, depth)), matrix.shape)
        out[name] = _spearman(gap.ravel(), dissimilarity(name, matrix).ravel())
    return out


def specificity_test(other_seed: dict, next_layer: dict) -> dict[str, float]:
    """Ding et al.'s seed-vs-layer specificity: a layer against another seed's, and against its next layer.

    Parameters
    ----------
    other_seed : dict of str to array_like, shape (n_layers, n_seed_pairs)
        For each measure and each layer ℓ (all but the last), its value between layer ℓ of two different seeds.
    next_layer : dict of str to array_like, shape (n_layers, n_seeds)
        For the same measures and layers, its value between layer ℓ and layer ℓ + 1 of the same seed.

    Returns
    -------
    dict of str to float
        Per measure, the mean over layers of the probability that a cross-seed pair is less dissimilar than a
        next-layer pair (ties count half): 1 when the measure always tells a layer's seeds apart from its
        neighbours, 0.5 when it cannot.

    Examples
    --------
    >>> from raymatch.match.sensitivity import specificity_test
    >>> specificity_test({"cka": [[0.9, 0.8], [0.7, 0.6]]}, {"cka": [[0.5, 0.85], [0.4, 0.3]]})
    {'cka': 0.875}
    """
    out = {}
    for name in other_seed:
        seeds = dissimilarity(name, np.atleast_2d(np.asarray(other_seed[name], dtype=np.float64)))
        layers = dissimilarity(name, np.atleast_2d(np.asarray(next_layer[name], dtype=np.float64)))
        if seeds.shape[0] != layers.shape[0]:
            raise ValueError(f"other_seed[{name!r}] and next_layer[{name!r}] must have one row per layer; "
                             f"got {seeds.shape[0]} and {layers.shape[0]}")
        scores = []
        for s, n in zip(seeds, layers, strict=True):
            s, n = s[np.isfinite(s)], n[np.isfinite(n)]
            if s.size and n.size:
                less = (s[:, None] < n[None, :]).mean() + 0.5 * (s[:, None] == n[None, :]).mean()
                scores.append(less)
        out[name] = float(np.mean(scores)) if scores else float("nan")
    return out


def measure_table(deletion: Deletion | None = None, depth: dict | None = None,
                  specificity: dict | None = None) -> list[dict]:
    """One row per measure with each test's statistic (None where a test did not run): measure × test.

    Returns
    -------
    list of dict
        ``measure``, ``deletion_spearman``, ``deletion_stops_noticing``, ``depth_spearman``, ``specificity``,
        measures in the order first seen.
    """
    names: list[str] = []
    for source in (deletion.values if deletion else {}, depth or {}, specificity or {}):
        names += [name for name in source if name not in names]
    return [{"measure": name,
             "deletion_spearman": deletion.spearman.get(name) if deletion else None,
             "deletion_stops_noticing": deletion.stops_noticing.get(name) if deletion else None,
             "depth_spearman": (depth or {}).get(name), "specificity": (specificity or {}).get(name)}
            for name in names]
