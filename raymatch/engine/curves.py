"""The measured fields of a block of pairs: their ε-curves from the batched kernel, and CKA from the same products.

A pair task (match or cross stage) hands every pair it can measure to :func:`block_curves` at once: the cross
products are a few stacked GEMMs (:func:`~raymatch.match.cross_products`) and the peels run in lockstep
(:func:`~raymatch.match.match_curves`), on the CPU or on the task's GPU. Each row's fields then come from its own
curve and cross product (:func:`curve_fields`), so a row is what the one-pair kernel
(:func:`~raymatch.match.match_curve`, ``kernel='one_pair'``) gives, up to float64 rounding. If the block's call
raises, its pairs are computed one at a time instead, so that one bad pair is one failed row.

The kernel's modules (torch) are imported when a block is computed, not with this module: a cold Ray worker
imports the stage modules for its task bodies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

__all__ = ["KERNELS", "block_curves", "chance_level", "curve_fields", "pair_fields"]

#: How a task computes its curves (``resources.match_kernel``).
KERNELS = ("batched", "one_pair")


def chance_level(n_neurons: int, n_samples: int) -> float:
    """√(1 − k/d): the ratio of a random vector against a random k-dimensional subspace of R^d."""
    return math.sqrt(1.0 - n_neurons / n_samples) if n_neurons < n_samples else 0.0


def curve_fields(curve, exact_tol: float) -> dict:
    """A pair's row fields from its :class:`~raymatch.match.MatchCurve`: critical ε, counts and chance ratio.

    ``critical_a`` and ``critical_b`` are lists of floats (``inf`` for a dead neuron), as the ``curves`` table
    stores them; ``exact_tol`` is recorded as given.
    """
    return {"n_samples": int(curve.n_samples), "n_a": curve.n_a, "n_b": curve.n_b,
            "dead_a": int(curve.dead_a.size), "dead_b": int(curve.dead_b.size),
            "critical_a": curve.critical_a.astype(float).tolist(),
            "critical_b": curve.critical_b.astype(float).tolist(),
            "exact_tol": exact_tol, "max_epsilon": curve.max_epsilon,
            "chance": chance_level(max(curve.n_a, curve.n_b), curve.n_samples)}


def pair_fields(fa, fb, exact_tol: float, *, cka: bool, clock: dict | None = None) -> dict:
    """One pair's measured row fields by the one-pair kernel: its ε-curve, counts, chance ratio and CKA.

    Both from one cross product of the two factors' bases. ``clock`` (optional) accumulates
    ``match_seconds`` and ``cka_seconds``.
    """
    from ..match import cross_product, linear_cka_factors, match_curve

    started = time.perf_counter()
    cross = cross_product(fa, fb)
    curve = match_curve(fa, fb, cross=cross, exact_tol=exact_tol)
    matched = time.perf_counter()
    value = linear_cka_factors(fa, fb, cross) if cka else None
    if clock is not None:
        clock["match_seconds"] += matched - started
        clock["cka_seconds"] += time.perf_counter() - matched
    return {**curve_fields(curve, exact_tol), "cka": value}


def block_curves(pairs: Sequence, tolerances: Sequence[float], *, kernel: str = "batched", device: str | None = None,
                 clock: dict | None = None) -> list:
    """The cross product and ε-curve of every pair of factors, or the error that stopped that pair.

    Parameters
    ----------
    pairs : sequence of (Factor, Factor)
        The pairs of one layer (a model paired with several others appears once, as one object, in each).
    tolerances : sequence of float
        Each pair's exact tolerance (that of the coarser of its two stored dtypes).
    kernel : {'batched', 'one_pair'}
        The pairs together (:func:`~raymatch.match.match_curves`), or one at a time.
    device : str, optional
        Where the batched kernel computes (``'cuda'`` in a task on a GPU actor; default the CPU). Cross products
        and peels are float64 on every device.
    clock : dict, optional
        Accumulates ``match_seconds``.

    Returns
    -------
    list
        Per pair, in order: ``(cross, curve)`` (the cross product as a float64 numpy array), or the exception
        that its computation raised.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    started = time.perf_counter()
    results: list = []
    if kernel == "batched" and pairs:
        from ..match import cross_products, match_curves

        try:
            crosses = cross_products(pairs, device=device)
            curves = match_curves(pairs, crosses=crosses, exact_tol=list(tolerances), device=device)
            results = list(zip(crosses, curves, strict=True))
        except Exception:
            results = []
    if not results:
        results = [_one_pair(fa, fb, tol) for (fa, fb), tol in zip(pairs, tolerances, strict=True)]
    if clock is not None:
        clock["match_seconds"] += time.perf_counter() - started
    return results


def _one_pair(fa, fb, exact_tol: float):
    """``(cross, curve)`` of one pair by the one-pair kernel, or the exception it raised."""
    from ..match import cross_product, match_curve

    try:
        cross = cross_product(fa, fb)
        return cross, match_curve(fa, fb, cross=cross, exact_tol=exact_tol)
    except Exception as error:
        return error
