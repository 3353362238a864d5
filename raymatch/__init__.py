"""raymatch: how much of their learned representation do many trained networks share.

The neuron-activation subspace match model of Wang et al. (NeurIPS 2018, arXiv 1810.11750),
run at population scale on Ray. The mathematics lives in :mod:`raymatch.match`.
"""

from .match import (
    Factor,
    Match,
    MatchCurve,
    SimpleMatch,
    factor,
    match_curve,
    max_match,
    minimal_match,
    simple_matches,
)

__version__ = "0.1.0"

__all__ = [
    "Factor",
    "Match",
    "MatchCurve",
    "SimpleMatch",
    "__version__",
    "factor",
    "match_curve",
    "max_match",
    "minimal_match",
    "simple_matches",
]
