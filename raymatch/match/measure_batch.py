"""The standard measures of the pairs of a task at once: what a pair task computes beside its ε-curves.

:func:`measure_pairs` takes the factor pairs of a task and the cross products their match formed, and returns each
pair's measures (as :func:`~raymatch.match.measure_pair` does) with what the measures saw
(:func:`~raymatch.match.measure_counts`). Everything a layer needs on its own is computed once per factor however
many pairs it is in (:func:`~raymatch.match.centred.centred_layer` caches it), and the whole batch runs with one
BLAS thread (its matrices are n × n, where threads only add overhead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._blas import one_thread
from .factor import Factor
from .measures import MEASURES, SVCCA_KEEP, PairMeasures, measure_counts, measure_pair

__all__ = ["measure_pairs"]


def measure_pairs(pairs: Sequence[tuple[Factor, Factor]], crosses: Sequence[np.ndarray], *, measures=MEASURES,
                  svcca_keep: float = SVCCA_KEEP) -> list[tuple[PairMeasures, dict[str, int]]]:
    """Every requested measure of each pair, from its factors and the cross product its match formed.

    Parameters
    ----------
    pairs : sequence of (Factor, Factor)
        The pairs' factors (model a's, model b's), over the same samples within a pair.
    crosses : sequence of numpy.ndarray, shapes (fa.rank, fb.rank)
        ``cross_product(fa, fb)`` of each pair (what :func:`~raymatch.match.match_curve` takes as ``cross=``, or
        :func:`~raymatch.match.cross_products` gives for a block).
    measures : iterable of str, default MEASURES
        Any of :data:`~raymatch.match.MEASURES`.
    svcca_keep : float, default 0.99

    Returns
    -------
    list of (PairMeasures, dict)
        Per pair, in order: its :class:`~raymatch.match.PairMeasures` and its :func:`~raymatch.match.measure_counts`.

    Raises
    ------
    ValueError
        ``pairs`` and ``crosses`` of different lengths, and the errors of :func:`~raymatch.match.pair_measures`.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import cross_product, factor, pair_measures
    >>> from raymatch.match.measure_batch import measure_pairs
    >>> rng = np.random.default_rng(0)
    >>> fa, fb, fc = (factor(rng.standard_normal((300, 5))) for _ in range(3))
    >>> pairs = [(fa, fb), (fa, fc)]
    >>> results = measure_pairs(pairs, [cross_product(*pair) for pair in pairs], measures=["cca", "procrustes"])
    >>> results[1][0].values == pair_measures(fa, fc, measures=["cca", "procrustes"])
    True
    >>> results[1][1]["rank_a"], results[1][1]["n_samples"]
    (5, 300)
    """
    if len(pairs) != len(crosses):
        raise ValueError(f"pairs and crosses must have the same length; got {len(pairs)} and {len(crosses)}")
    measures = tuple(measures)
    with one_thread():
        return [(measure_pair(fa, fb, cross, measures=measures, svcca_keep=svcca_keep), measure_counts(fa, fb))
                for (fa, fb), cross in zip(pairs, crosses, strict=True)]
