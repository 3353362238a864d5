"""Per-neuron correlation matching (Li et al. 2015): each neuron's best partner in the other layer, and an assignment.

Gurnee et al. (2024) call a neuron universal when its best correlation across seeds stands well above a null's.

Pearson correlations are the centred neuron products scaled by the centred norms, ``R = diag(c_a)⁻¹ X_aᵀ X_b
diag(c_b)⁻¹``: :mod:`raymatch.match.measures` forms ``X_aᵀ X_b`` from two factors and their cross product.
Flat neurons (no variance) have no correlation: they get no partner and stay out of the assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .centred import CentredLayer


@dataclass(frozen=True, eq=False)
class NeuronCorrelations:
    """Each neuron's best absolute Pearson correlation with the other layer, and a one-to-one assignment.

    Attributes
    ----------
    best_a, best_b : numpy.ndarray, shapes (n_a,) and (n_b,), float64
        Each neuron's largest ``|corr|`` with a kept neuron of the other layer; NaN for a neuron that is not kept.
    partner_a, partner_b : numpy.ndarray, shapes (n_a,) and (n_b,), int64
        The other layer's neuron reaching it (the lowest index among equals); -1 for a neuron not kept.
    assignment : numpy.ndarray, shape (min(n_kept_a, n_kept_b), 2), int64
        (a, b) neuron pairs of the one-to-one assignment maximising the summed ``|corr|``
        (``scipy.optimize.linear_sum_assignment``).
    mean : float
        Mean ``|corr|`` over the assignment: the ``neuron_corr`` measure (0 when a layer has no kept neuron).
    n_samples : int
    """

    best_a: np.ndarray
    partner_a: np.ndarray
    best_b: np.ndarray
    partner_b: np.ndarray
    assignment: np.ndarray
    mean: float
    n_samples: int

    def rows(self) -> list[dict]:
        """One row per neuron of both layers, for a ``neurons`` table.

        Returns
        -------
        list of dict
            ``side`` ("a" or "b"), ``neuron``, ``partner`` (the other side's neuron; None when not kept) and
            ``correlation`` (its ``|corr|``; None when not kept), A's neurons first.
        """
        out = []
        for side, best, partner in (("a", self.best_a, self.partner_a), ("b", self.best_b, self.partner_b)):
            for neuron, (value, other) in enumerate(zip(best.tolist(), partner.tolist(), strict=True)):
                kept = other >= 0
                out.append({"side": side, "neuron": neuron, "partner": other if kept else None,
                            "correlation": value if kept else None})
        return out


def match_neurons(la: CentredLayer, lb: CentredLayer, products: np.ndarray | None) -> NeuronCorrelations:
    """The :class:`NeuronCorrelations` of two layers from their centred kept neurons' products.

    Parameters
    ----------
    la, lb : CentredLayer
        The two layers' centred geometry (kept neurons and their centred norms).
    products : numpy.ndarray, shape (n_kept_a, n_kept_b), or None
        ``X_aᵀ X_b`` of the kept neurons; None when a layer has no kept neuron.

    Returns
    -------
    NeuronCorrelations
    """
    best_a, partner_a = np.full(la.n_neurons, np.nan), np.full(la.n_neurons, -1, dtype=np.int64)
    best_b, partner_b = np.full(lb.n_neurons, np.nan), np.full(lb.n_neurons, -1, dtype=np.int64)
    if products is None or products.size == 0:
        return NeuronCorrelations(best_a, partner_a, best_b, partner_b, np.zeros((0, 2), np.int64), 0.0, la.n_samples)
    absolute = np.abs(products / np.outer(la.norms, lb.norms)).clip(max=1.0)
    best_a[la.kept], partner_a[la.kept] = absolute.max(axis=1), lb.kept[absolute.argmax(axis=1)]
    best_b[lb.kept], partner_b[lb.kept] = absolute.max(axis=0), la.kept[absolute.argmax(axis=0)]
    rows, cols = linear_sum_assignment(absolute, maximize=True)
    return NeuronCorrelations(best_a, partner_a, best_b, partner_b, np.column_stack([la.kept[rows], lb.kept[cols]]),
                              float(absolute[rows, cols].mean()), la.n_samples)
