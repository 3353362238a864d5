"""The standard similarity measures of two layers, from their factors and the cross product the match forms.

``cka`` (Kornblith et al. 2019), ``cca`` (mean canonical correlation), ``svcca`` (Raghu et al. 2017), ``pwcca``
(Morcos et al. 2018), ``procrustes`` (the orthogonal Procrustes distance, Ding et al. 2021) and ``neuron_corr``
(per-neuron best correlations, Li et al. 2015, and their one-to-one assignment) are all functions of the centred
activations' small matrices: :mod:`raymatch.match.centred` derives them from two factors and
``cross_product(fa, fb)``, so a pair costs a handful of operations on n × n matrices and no pass over the samples.
docs/measures.md gives the formulas and what each measure is invariant to.

The rule for degenerate neurons and layers, the same for every measure (and for the oracle,
:mod:`raymatch.match.reference_measures`):

- Every measure reads the *centred* activations of the *kept* neurons: those live in the factor (dead neurons,
  ``DEAD_RTOL``, are never seen) and not *flat*. A neuron is flat when its centred norm is at most ``DEAD_RTOL``
  times the largest centred norm of its layer: a constant non-zero neuron is live in a raw factor but flat, and
  has no Pearson correlation and no CCA direction. Flat neurons get no partner in ``neuron_corr`` (NaN
  correlation, partner -1) and count nowhere else.
- A layer's centred span is that of its centred unit-norm kept neurons, directions with singular value at most
  ``RANK_RTOL`` times the largest dropped (as the match decides rank). CCA-type measures see only this span:
  duplicated or dependent neurons add nothing, and canonical correlations number ``min(rank_a, rank_b)``.
  When the constant vector lies in a raw layer's span (to ``CONSTANT_IN_SPAN_TOL``), centring removes a direction.
- Nothing is regularised when the ranks approach the number of samples: with ``rank_a + rank_b > d − 1`` at
  least that excess of canonical correlations is 1 by dimension count alone (:func:`measure_counts` reports the
  ranks and ``n_samples``).
- A layer with no kept neuron is unrelated to everything: every similarity is 0, the Procrustes distance 1.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg

from ._blas import one_thread, one_thread_method
from .centred import CentredLayer, centred_cross, centred_layer, frame_cross, principal_cross
from .cka import linear_cka_factors
from .factor import Factor, cross_product, factor
from .inputs import check_same_samples
from .neurons import NeuronCorrelations, match_neurons

#: Every measure :func:`pair_measures` computes, in its order.
MEASURES = ("cka", "cca", "svcca", "pwcca", "procrustes", "neuron_corr")
#: The share of each layer's variance SVCCA keeps (Raghu et al. 2017).
SVCCA_KEEP = 0.99
#: Canonical correlations closer than this count as tied in PWCCA's weights (:func:`projection_weights`).
PWCCA_TIE_TOL = 1e-8


class _Pair:
    """Two layers' centred geometry and the products the measures share, each computed once when first needed."""

    def __init__(self, A, B, cross):
        self.fa, self.fb = _as_factor(A, "A"), _as_factor(B, "B")
        check_same_samples(self.fa.n_samples, self.fb.n_samples)
        if cross is None:
            cross = cross_product(self.fa, self.fb)
        elif np.shape(cross) != (self.fa.rank, self.fb.rank):
            raise ValueError(f"cross must have shape ({self.fa.rank}, {self.fb.rank}) (fa.rank, fb.rank); "
                             f"got {np.shape(cross)}")
        self.cross = np.asarray(cross, dtype=np.float64)
        self.la: CentredLayer = centred_layer(self.fa)
        self.lb: CentredLayer = centred_layer(self.fb)
        self.empty = self.la.kept.size == 0 or self.lb.kept.size == 0

    @cached_property
    def frames(self) -> np.ndarray:
        """``G``: the frames' inner products (r_a × r_b)."""
        return frame_cross(self.la, self.fa, self.lb, self.fb, self.cross)

    @cached_property
    def products(self) -> np.ndarray:
        """``X_aᵀ X_b`` of the centred kept neurons."""
        return centred_cross(self.la, self.fa, self.lb, self.fb, self.cross)

    @cached_property
    def principal(self) -> np.ndarray:
        """``Vₐᵀ G V_b``: inner products of the two layers' principal directions (rank_v_a × rank_v_b)."""
        return principal_cross(self.la, self.fa, self.lb, self.fb, self.cross)

    def spans(self) -> np.ndarray:
        """Inner products of orthonormal bases of the two centred spans (``principal`` when both are full rank)."""
        if self.la.span is self.la.directions and self.lb.span is self.lb.directions:
            return self.principal
        return self.la.span.T @ self.frames @ self.lb.span

    @cached_property
    @one_thread_method
    def canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``L, ρ, Nᵀ`` of the SVD of the spans' inner products: ρ are the canonical correlations."""
        spans = self.spans()
        if spans.size == 0:
            return np.zeros((spans.shape[0], 0)), np.zeros(0), np.zeros((0, spans.shape[1]))
        left, rho, right = scipy.linalg.svd(spans, full_matrices=False, check_finite=False)
        return left, np.clip(rho, 0.0, 1.0), right

    @cached_property
    @one_thread_method
    def rho(self) -> np.ndarray:
        """The canonical correlations, without the singular vectors unless PWCCA has asked for them already."""
        if "canonical" in self.__dict__ or self.spans().size == 0:
            return self.canonical[1]
        return np.clip(scipy.linalg.svdvals(self.spans(), check_finite=False), 0.0, 1.0)

    def cca(self) -> float:
        rho = self.rho
        return float(rho.mean()) if rho.size else 0.0

    @one_thread_method
    def svcca(self, keep: float) -> float:
        if self.empty:
            return 0.0
        block = self.principal[: _covering(self.la.variances, keep), : _covering(self.lb.variances, keep)]
        return float(np.clip(scipy.linalg.svdvals(block, check_finite=False), 0.0, 1.0).mean())

    @one_thread_method
    def pwcca(self) -> float:
        if self.empty:
            return 0.0
        left, rho, right = self.canonical
        r = rho.size
        return 0.5 * (_weighted(self.la, left[:, :r], rho) + _weighted(self.lb, right[:r].T, rho))

    @one_thread_method
    def procrustes(self) -> float:
        if self.empty:
            return 1.0
        # X_aᵀ X_b = W_a S_a (Vₐᵀ G V_b) S_b W_bᵀ: its singular values are those of S_a (Vₐᵀ G V_b) S_b.
        scaled = np.sqrt(self.la.variances)[:, None] * self.principal * np.sqrt(self.lb.variances)
        nuclear = scipy.linalg.svdvals(scaled, check_finite=False).sum()
        scale = np.linalg.norm(self.la.norms) * np.linalg.norm(self.lb.norms)
        return float(min(max(1.0 - nuclear / scale, 0.0), 1.0))

    @one_thread_method
    def neurons(self) -> NeuronCorrelations:
        return match_neurons(self.la, self.lb, None if self.empty else self.products)


def _as_factor(value, name: str) -> Factor:
    """``value`` if a factor, else the centred factor of the activations (exact centring: no means to carry)."""
    return value if isinstance(value, Factor) else factor(value, center=True, name=name)


def _covering(variances: np.ndarray, keep: float) -> int:
    """The number of leading principal directions whose variances first reach ``keep`` of the total."""
    if variances.size == 0:
        return 0
    total = np.cumsum(variances)
    return min(int(np.searchsorted(total, keep * total[-1])) + 1, variances.size)


def _weighted(layer: CentredLayer, variates: np.ndarray, rho: np.ndarray) -> float:
    """Morcos et al.'s mean of ``rho`` weighted by ``Σ_j |⟨h_i, x_j⟩|`` over the layer's centred neurons x_j.

    The canonical variates h_i are ``span @ variates`` in frame coordinates; within a group of tied correlations
    they are first rotated onto the principal directions of the neurons' projections (:func:`tie_groups`).
    """
    projections = variates.T @ layer.span_coords  # ⟨h_i, x_j⟩ = ((S L)ᵀ T)_ij, r × n_kept
    return float(projection_weights(projections, rho) @ rho)


def tie_groups(rho: np.ndarray) -> list[slice]:
    """Runs of canonical correlations (descending) that differ by at most ``PWCCA_TIE_TOL`` from their neighbour.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.measures import tie_groups
    >>> tie_groups(np.array([1.0, 1.0 - 1e-14, 0.5, 0.2, 0.2]))
    [slice(0, 2, None), slice(2, 3, None), slice(3, 5, None)]
    """
    starts = [0, *(np.flatnonzero(-np.diff(rho) > PWCCA_TIE_TOL) + 1).tolist(), rho.size]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(starts) if hi > lo]


def projection_weights(projections: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """PWCCA's normalised weights from the projections ``⟨h_i, x_j⟩`` (r × n) of the neurons on the variates.

    Canonical variates of a tied group span a subspace but are not unique within it, and the L1 weights depend on
    the basis chosen; the basis of the group's left singular vectors of ``projections`` makes them a function of
    the subspace alone (a single variate keeps Morcos et al.'s weight). The shared rule of the fast path and the
    oracle.
    """
    weights = np.abs(projections).sum(axis=1)
    for group in tie_groups(rho):
        if group.stop - group.start > 1:
            block = projections[group]
            u = np.linalg.svd(block, full_matrices=False)[0]
            weights[group] = np.abs(u.T @ block).sum(axis=1)
    return weights / weights.sum()


def _check_keep(keep) -> float:
    keep = float(keep)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"svcca_keep must be in (0, 1]; got {keep!r}")
    return keep


def canonical_correlations(A, B, cross=None) -> np.ndarray:
    """The canonical correlations of two layers' centred activations, descending.

    Parameters
    ----------
    A, B : Factor or array_like, shapes (n_samples, n_a) and (n_samples, n_b)
        Factors of the two layers (centred or not), or their activations (factored here, centred).
    cross : numpy.ndarray, shape (A.rank, B.rank), optional
        ``cross_product(A, B)`` when the caller has it (the pair's match computes it).

    Returns
    -------
    numpy.ndarray, shape (min(rank_a, rank_b),)
        Cosines of the principal angles between the two centred spans.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import canonical_correlations
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((500, 2))
    >>> A = np.column_stack([Z, rng.standard_normal(500)]) @ rng.standard_normal((3, 3)) + 5.0
    >>> B = np.column_stack([Z[:, 0], rng.standard_normal(500)])
    >>> canonical_correlations(A, B).round(3).tolist()
    [1.0, 0.054]
    """
    return _Pair(A, B, cross).canonical[1].copy()


def cca(A, B, cross=None) -> float:
    """Mean canonical correlation of the centred activations (the arguments of :func:`canonical_correlations`)."""
    return _Pair(A, B, cross).cca()


def svcca(A, B, cross=None, *, keep: float = SVCCA_KEEP) -> float:
    """SVCCA: the mean canonical correlation of each layer's top principal directions covering ``keep`` of its variance.

    Variance is that of the centred activations as they are (squared singular values), so a neuron's scale matters
    for which directions are kept; CCA is then invariant to any invertible map of the kept directions.
    """
    return _Pair(A, B, cross).svcca(_check_keep(keep))


def pwcca(A, B, cross=None) -> float:
    """Projection-weighted CCA, symmetrised: the mean of the weighted means with A's and with B's weights.

    Morcos et al. weight canonical correlation i by ``Σ_j |⟨h_i, x_j⟩|``, with h_i the i-th canonical variate of
    one layer and x_j its centred neurons; which layer gives the weights makes the measure asymmetric, so both are
    averaged.
    """
    return _Pair(A, B, cross).pwcca()


def procrustes(A, B, cross=None) -> float:
    """Orthogonal Procrustes distance ``1 − ‖X̃ᵀ Ỹ‖_*`` of the centred activations scaled to unit Frobenius norm.

    Half of Ding et al.'s ``‖X̃‖² + ‖Ỹ‖² − 2 ‖X̃ᵀ Ỹ‖_*``: 0 for layers equal up to a rotation and a scale, 1 for
    orthogonal ones.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import procrustes
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((200, 4))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    >>> round(procrustes(A, 2.0 * A @ Q), 12), round(procrustes(A, A @ np.diag([1.0, 1.0, 1.0, 5.0])), 3)
    (0.0, 0.239)
    """
    return _Pair(A, B, cross).procrustes()


def neuron_correlations(A, B, cross=None) -> NeuronCorrelations:
    """Every neuron's best absolute Pearson correlation with the other layer, its partner, and the assignment.

    Examples
    --------
    B's first neuron is A's second with noise, its second a scaled copy of A's first:

    >>> import numpy as np
    >>> from raymatch.match import neuron_correlations
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((1000, 3))
    >>> B = np.column_stack([A[:, 1] + 0.5 * rng.standard_normal(1000), -3.0 * A[:, 0]])
    >>> nc = neuron_correlations(A, B)
    >>> nc.partner_a.tolist(), nc.best_a.round(2).tolist(), nc.partner_b.tolist()
    ([1, 0, 1], [1.0, 0.89, 0.01], [1, 0])
    >>> nc.assignment.tolist(), round(nc.mean, 2)
    ([[0, 1], [1, 0]], 0.95)
    >>> nc.rows()[0]
    {'side': 'a', 'neuron': 0, 'partner': 1, 'correlation': 1.0}
    """
    return _Pair(A, B, cross).neurons()


def neuron_corr(A, B, cross=None) -> float:
    """Mean absolute Pearson correlation over the one-to-one assignment of :func:`neuron_correlations`."""
    return _Pair(A, B, cross).neurons().mean


@dataclass(frozen=True)
class PairMeasures:
    """What :func:`measure_pair` gives: the measures' values and, when ``neuron_corr`` was asked, its per-neuron rows.

    Attributes
    ----------
    values : dict of str to float
        ``measure -> value`` in the order asked.
    neurons : NeuronCorrelations or None
        The per-neuron correlations behind ``values["neuron_corr"]`` (``rows()`` for a ``neurons`` table).
    """

    values: dict[str, float]
    neurons: NeuronCorrelations | None


def measure_pair(A, B, cross=None, *, measures=MEASURES, svcca_keep: float = SVCCA_KEEP) -> PairMeasures:
    """Every requested measure of a pair of layers and the per-neuron correlations, from one set of small matrices.

    The call a pair task makes beside its :func:`~raymatch.match.match_curve` (same ``cross``); the arguments and
    errors are those of :func:`pair_measures`.

    Returns
    -------
    PairMeasures
    """
    measures = tuple(measures)
    unknown = [name for name in measures if name not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown[0]!r}: expected any of {', '.join(MEASURES)}")
    keep = _check_keep(svcca_keep)
    with one_thread():
        pair = _Pair(A, B, cross)
        if "pwcca" in measures and not pair.empty:
            pair.canonical  # noqa: B018 - one SVD with vectors then serves CCA too
        neurons = pair.neurons() if "neuron_corr" in measures else None
        compute = {"cka": lambda: linear_cka_factors(pair.fa, pair.fb, pair.cross), "cca": pair.cca,
                   "svcca": lambda: pair.svcca(keep), "pwcca": pair.pwcca, "procrustes": pair.procrustes,
                   "neuron_corr": lambda: neurons.mean}
        return PairMeasures({name: float(compute[name]()) for name in measures}, neurons)


def pair_measures(A, B, cross=None, *, measures=MEASURES, svcca_keep: float = SVCCA_KEEP) -> dict[str, float]:
    """Every requested measure of a pair of layers, sharing one cross product and one set of small matrices.

    Parameters
    ----------
    A, B : Factor or array_like, shapes (n_samples, n_a) and (n_samples, n_b)
        Factors of the two layers over the same samples (centred or not), or their activations (factored here,
        centred).
    cross : numpy.ndarray, shape (A.rank, B.rank), optional
        ``cross_product(A, B)``, the product the pair's :func:`~raymatch.match.match_curve` takes as ``cross=``.
    measures : iterable of str, default MEASURES
        Any of ``cka``, ``cca``, ``svcca``, ``pwcca``, ``procrustes``, ``neuron_corr``.
    svcca_keep : float, default 0.99
        The share of variance SVCCA keeps, in (0, 1].

    Returns
    -------
    dict of str to float
        ``measure -> value`` in the order asked: similarities in [0, 1], ``procrustes`` a distance in [0, 1].

    Raises
    ------
    ValueError
        An unknown measure, ``svcca_keep`` outside (0, 1], factors of different sample counts or a ``cross`` of
        the wrong shape.

    See Also
    --------
    measure_pair : The same values with the per-neuron correlations.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import cross_product, factor, match_curve, pair_measures
    >>> rng = np.random.default_rng(0)
    >>> A = np.maximum(rng.standard_normal((400, 6)), 0.0)
    >>> B = np.hstack([A[:, :3] @ rng.uniform(0.2, 1.0, (3, 3)), np.maximum(rng.standard_normal((400, 3)), 0.0)])
    >>> fa, fb = factor(A), factor(B)
    >>> cross = cross_product(fa, fb)
    >>> curve = match_curve(fa, fb, cross=cross)
    >>> {name: round(value, 3) for name, value in pair_measures(fa, fb, cross).items()}
    {'cka': 0.398, 'cca': 0.536, 'svcca': 0.448, 'pwcca': 0.541, 'procrustes': 0.592, 'neuron_corr': 0.338}
    """
    return measure_pair(A, B, cross, measures=measures, svcca_keep=svcca_keep).values


def measure_counts(A, B) -> dict[str, int]:
    """What the measures of a pair saw: samples, neurons, kept neurons and centred ranks of each layer.

    Returns
    -------
    dict of str to int
        ``n_samples``, ``n_a``, ``n_b``, ``kept_a``, ``kept_b`` (live and not flat), ``rank_a``, ``rank_b``
        (dimensions of the centred spans).
    """
    la, lb = centred_layer(_as_factor(A, "A")), centred_layer(_as_factor(B, "B"))
    check_same_samples(la.n_samples, lb.n_samples)
    return {"n_samples": la.n_samples, "n_a": la.n_neurons, "n_b": lb.n_neurons, "kept_a": int(la.kept.size),
            "kept_b": int(lb.kept.size), "rank_a": la.rank, "rank_b": lb.rank}
