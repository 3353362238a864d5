"""The two match kernels behind one signature, so that curve tests run against both.

``"peel"`` is today's one-pair kernel (:func:`raymatch.match_curve`); ``"batched"`` is the block kernel
(:func:`raymatch.match.match_curves`), given the factors of the same inputs as a block of three copies of the pair
(a block of fewer pairs would be peeled one at a time).
"""

from __future__ import annotations

import raymatch
from raymatch.match import Factor, factor, match_curves
from raymatch.match.batched import LOCKSTEP_MIN_PAIRS
from raymatch.match.inputs import resolve_exact_tol

KERNELS = ("peel", "batched")


def batched_match_curve(A, B, *, center=None, cross=None, exact_tol=None):
    """:func:`raymatch.match_curve`'s signature and result, computed by :func:`match_curves`."""
    tol = resolve_exact_tol(exact_tol, A, B)
    sides = []
    for value, name, other in ((A, "A", B), (B, "B", A)):
        if isinstance(value, Factor):
            if center is not None and value.centered != center:
                raise ValueError(f"{name} is a Factor with center={value.centered}, but center={center} was asked")
            sides.append(value)
        else:
            default = other.centered if isinstance(other, Factor) else False
            sides.append(factor(value, center=default if center is None else center, name=name))
    copies = max(LOCKSTEP_MIN_PAIRS, 1)
    crosses = None if cross is None else [cross] * copies
    return match_curves([tuple(sides)] * copies, exact_tol=tol, crosses=crosses)[0]


def curve_function(kernel: str):
    """The ``match_curve`` of ``kernel``."""
    return raymatch.match_curve if kernel == "peel" else batched_match_curve
