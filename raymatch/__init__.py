"""raymatch: how much of their learned representation do many trained networks share.

The neuron-activation subspace match model of Wang et al. (NeurIPS 2018, arXiv 1810.11750),
run at population scale on Ray. The mathematics lives in :mod:`raymatch.match`.
"""

__version__ = "0.2.0"

#: The mathematics, re-exported here; imported on first use, so that ``raymatch query`` and the Ray workers that
#: run task bodies do not pay for scipy before they need it.
_MATH = ("Factor", "Match", "MatchCurve", "SimpleMatch", "factor", "match_curve", "max_match", "minimal_match",
         "simple_matches")


def __getattr__(name: str):
    if name in _MATH:
        from . import match

        return getattr(match, name)
    raise AttributeError(f"module 'raymatch' has no attribute {name!r}")


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
