"""The mathematics of raymatch: neuron-activation subspace matches on plain arrays.

No Ray, no IO: arrays (numpy or torch) or :class:`Factor` objects in, dataclasses out. The batched kernel
(:func:`match_curves`, :func:`cross_products`, written in torch) loads on first use, so that a task that needs only
the numpy core (a cold Ray worker's pair task planning, the study checks) imports no torch.
"""

import importlib

from .api import candidate_order, match_curve, max_match, minimal_match, simple_matches
from .cka import linear_cka, linear_cka_factors
from .compact import CompactFactor, compact_factor
from .factor import Factor, cross_product, factor
from .inputs import DEAD_RTOL, EXACT_TOL, EXACT_TOL_EPS, RANK_RTOL, exact_tolerance
from .matches import Match, MatchCurve, SimpleMatch
from .measures import (
    MEASURES,
    SVCCA_KEEP,
    NeuronCorrelations,
    PairMeasures,
    canonical_correlations,
    cca,
    measure_counts,
    measure_pair,
    neuron_corr,
    neuron_correlations,
    pair_measures,
    procrustes,
    pwcca,
    svcca,
)

__all__ = [
    "DEAD_RTOL",
    "EXACT_TOL",
    "EXACT_TOL_EPS",
    "MEASURES",
    "RANK_RTOL",
    "SVCCA_KEEP",
    "CompactFactor",
    "Factor",
    "Match",
    "MatchCurve",
    "NeuronCorrelations",
    "PairMeasures",
    "SimpleMatch",
    "candidate_order",
    "canonical_correlations",
    "cca",
    "compact_factor",
    "cross_product",
    "cross_products",
    "exact_tolerance",
    "factor",
    "linear_cka",
    "linear_cka_factors",
    "match_curve",
    "match_curves",
    "max_match",
    "measure_counts",
    "measure_pair",
    "minimal_match",
    "neuron_corr",
    "neuron_correlations",
    "pair_measures",
    "procrustes",
    "pwcca",
    "simple_matches",
    "svcca",
]

#: Names whose module imports torch: loaded when first asked for (PEP 562).
_LAZY = {"cross_products": "batched", "match_curves": "batched"}


def __getattr__(name: str):
    """Import the module defining ``name`` when it is first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
