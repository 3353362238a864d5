"""The cost of every standard measure beside the match (issue 24's target: at most 15 % more per pair).

For each layer pair the baseline is what a pair task computes today: the cross product of two stored factors, the
ε-curve (``match_curve``) and linear CKA. The measured row adds everything a pair task with
``measures: [max_match, cka, cca, svcca, pwcca, procrustes, neuron_corr]`` computes: ``measure_pair``, values and
per-neuron rows. Two cases: *cold*, fresh factor objects every call (a layer's own small
SVDs are paid in the pair), and *warm*, the same factors again (what a factor in many pairs of a population pays).
ReLU-like layers of ``raymatch.match.synthetic.relu_pair`` at the table sizes (1,797 samples: sklearn's digits).

Run ``python -m raymatch.bench.measures`` (``--quick`` for a smoke run); not yet a ``raymatch bench`` suite.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..match import (
    MEASURES,
    Factor,
    cross_product,
    factor,
    linear_cka_factors,
    match_curve,
    measure_pair,
    neuron_correlations,
    pair_measures,
)
from ..match.synthetic import relu_pair
from .timing import machine, median_time

__all__ = ["TARGET", "bench_measures", "measure_costs", "print_measures"]

#: The largest accepted ratio of the pair cost with every measure to the baseline's.
TARGET = 1.15
#: The layer sizes of the paper-style tables (a 128- and a 64-unit layer), as (n_a, n_b) pairs.
TABLE_SHAPES = ((128, 128), (128, 64), (64, 64))


def _fresh(f: Factor) -> Factor:
    """A copy of ``f`` sharing no array with it, so that no per-factor cache holds it."""
    return Factor(f.basis, f.coords.copy(), f.live.copy(), f.n_samples, f.n_neurons, f.centered, f.norms.copy(),
                  f.means.copy())


def _baseline(fa: Factor, fb: Factor) -> None:
    cross = cross_product(fa, fb)
    match_curve(fa, fb, cross=cross)
    linear_cka_factors(fa, fb, cross)


def _with_measures(fa: Factor, fb: Factor) -> None:
    cross = cross_product(fa, fb)
    match_curve(fa, fb, cross=cross)
    measure_pair(fa, fb, cross).neurons.rows()


def bench_measures(n_samples: int = 1797, shapes=TABLE_SHAPES, repeats: int = 15, seed: int = 0) -> list[dict]:
    """Median seconds per pair of the baseline and of the baseline with every measure, cold and warm.

    Returns
    -------
    list of dict
        Per shape and case: ``shape`` ("128 + 64"), ``case`` ("cold" or "warm"), ``baseline`` and ``measures``
        (median seconds), ``ratio`` (measures / baseline) and ``met`` (ratio ≤ ``TARGET``).
    """
    rows = []
    for n_a, n_b in shapes:
        A, B = relu_pair(n_samples, n_a, n_b, seed=seed)
        fa, fb = factor(A), factor(B)
        for case in ("cold", "warm"):
            times = {"baseline": [], "measures": []}
            for _ in range(repeats):  # interleaved, so that machine noise falls on both alike
                times["baseline"].append(_once(_baseline, fa, fb, cold=case == "cold"))
                times["measures"].append(_once(_with_measures, fa, fb, cold=case == "cold"))
            baseline, measures = (float(np.median(times[k])) for k in ("baseline", "measures"))
            rows.append({"shape": f"{n_a} + {n_b}", "case": case, "baseline": baseline, "measures": measures,
                         "ratio": measures / baseline, "met": measures / baseline <= TARGET})
    return rows


def _once(run, fa: Factor, fb: Factor, *, cold: bool) -> float:
    """Seconds of one ``run(fa, fb)``, on fresh copies of the factors when ``cold``."""
    if cold:
        fa, fb = _fresh(fa), _fresh(fb)
    return median_time(lambda: run(fa, fb), 1)[0]


def measure_costs(n_samples: int = 1797, shape=(128, 128), repeats: int = 15, seed: int = 0) -> dict[str, float]:
    """Median seconds of each measure alone on warm factors with the cross product given, and of the baseline's parts.

    Returns
    -------
    dict of str to float
        ``cross_product``, ``match_curve``, then each of ``MEASURES`` and ``neuron rows``.
    """
    A, B = relu_pair(n_samples, *shape, seed=seed)
    fa, fb = factor(A), factor(B)
    cross = cross_product(fa, fb)
    pair_measures(fa, fb, cross)  # the per-layer work, cached from here on
    runs = {"cross_product": lambda: cross_product(fa, fb), "match_curve": lambda: match_curve(fa, fb, cross=cross)}
    runs.update({name: (lambda name=name: pair_measures(fa, fb, cross, measures=[name])) for name in MEASURES})
    runs["neuron rows"] = lambda: neuron_correlations(fa, fb, cross).rows()
    return {name: median_time(run, repeats)[0] for name, run in runs.items()}


def print_measures(rows: list[dict], out=None) -> None:
    """Print :func:`bench_measures`' rows as a table (to ``out``, default stdout)."""
    out = out or sys.stdout
    header = ("layers", "case", "match + CKA s", "+ every measure s", "ratio", f"target ≤ {TARGET:.2f}")
    lines = [(r["shape"], r["case"], f"{r['baseline'] * 1e3:.2f} ms", f"{r['measures'] * 1e3:.2f} ms",
              f"{r['ratio']:.3f}", "met" if r["met"] else "MISSED") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)


def main(argv: list[str] | None = None) -> int:
    """``python -m raymatch.bench.measures [--quick] [--repeats N]``: print the cost table."""
    parser = argparse.ArgumentParser(prog="python -m raymatch.bench.measures", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape (a smoke run)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each (median reported)")
    args = parser.parse_args(argv)
    shapes, n_samples = (((32, 16),), 300) if args.quick else (TABLE_SHAPES, 1797)
    print(f"measures beside the match — {machine()}")
    print(f"synthetic ReLU pairs, {n_samples} samples (raymatch.match.synthetic.relu_pair, seed 0), float32, raw "
          "factors\n")
    print_measures(bench_measures(n_samples, shapes, max(1, args.repeats)))
    shape = shapes[0]
    costs = measure_costs(n_samples, shape, max(1, args.repeats))
    print(f"\neach part alone, {shape[0]} + {shape[1]} neurons, warm factors, cross product given (median ms): "
          + ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in costs.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
