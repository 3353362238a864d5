"""The mathematics of raymatch: neuron-activation subspace matches on plain arrays.

No Ray, no IO: arrays (numpy or torch) or :class:`Factor` objects in, dataclasses out.
"""

from .api import candidate_order, match_curve, max_match, minimal_match, simple_matches
from .batched import cross_products, match_curves
from .cka import linear_cka, linear_cka_factors
from .factor import CompactFactor, Factor, compact_factor, cross_product, factor
from .inputs import DEAD_RTOL, EXACT_TOL, EXACT_TOL_EPS, RANK_RTOL, exact_tolerance
from .matches import Match, MatchCurve, SimpleMatch

__all__ = [
    "DEAD_RTOL",
    "EXACT_TOL",
    "EXACT_TOL_EPS",
    "RANK_RTOL",
    "CompactFactor",
    "Factor",
    "Match",
    "MatchCurve",
    "SimpleMatch",
    "candidate_order",
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
    "minimal_match",
    "simple_matches",
]
