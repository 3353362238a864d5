"""``raymatch bench match``, rows 7–8: the batched kernel against today's one-pair kernel and the GEMM floor.

Row 7: the table-scale layers (128 and 64 ReLU-like neurons, each model its own seed, 1,797 samples), every pair
within blocks of 8, 16 and 32 models (28 / 120 / 496 curves). Row 8: one paper-size pair (512 + 512 neurons,
10,000 samples). Each kernel gets the models' factors; what is timed is what a pair task does with them:

- today's kernel: ``cross_product`` and ``match_curve`` for each pair in turn (one BLAS thread, its own policy);
- the batched kernel: ``cross_products`` (the stacked GEMM) and ``match_curves`` of the whole block;
- the floor: ``cross_products`` alone.

The three run in turns (``repeats`` rounds after a warm-up; medians reported), and the batched kernel's curves
are checked against today's at ε = 0 and the paper's grid on every pair (:func:`differing_sets`).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from ..match import EXACT_TOL, cross_product, cross_products, factor, match_curve, match_curves
from ..match.synthetic import relu_pair
from .timing import PAPER_EPS, text_table

__all__ = ["bench_blocks", "differing_sets", "print_blocks"]

#: ε at which the two kernels' maximum matches are compared.
GRID = (0.0, *PAPER_EPS)
#: A critical ε this close to a grid ε may fall on either side of it in either kernel (float64 rounding of two
#: different computations of the same number): such a neuron is not counted as a difference.
ROUNDING = 1e-9

FULL = {"samples": 1797, "layers": ((128, 8), (128, 16), (128, 32), (64, 8), (64, 16), (64, 32)),
        "paper": (512, 10_000)}
QUICK = {"samples": 400, "layers": ((32, 4), (32, 6), (16, 4)), "paper": (64, 1000)}


def differing_sets(got, want, grid=GRID) -> list[str]:
    """Where two lists of curves give different maximum matches at ``grid``, neurons within ROUNDING of ε aside."""
    problems = []
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        for eps in grid:
            for side in ("a", "b"):
                mine, theirs = getattr(g, f"critical_{side}"), getattr(w, f"critical_{side}")
                if mine.shape != theirs.shape:
                    problems.append(f"pair {p}: side {side} has {mine.size} neurons against {theirs.size}")
                    break
                close = (np.abs(mine - eps) <= ROUNDING) | (np.abs(theirs - eps) <= ROUNDING)
                differ = ((mine <= max(eps, EXACT_TOL)) != (theirs <= max(eps, EXACT_TOL))) & ~close
                if differ.any():
                    problems.append(f"pair {p}, ε = {eps}, side {side}: neurons {np.flatnonzero(differ).tolist()}")
    return problems


def _layers(n_models: int, n_samples: int, n_neurons: int) -> list:
    """Factors of ``n_models`` ReLU-like layers, model ``s`` drawn with seed ``s``."""
    return [factor(relu_pair(n_samples, n_neurons, n_neurons, seed=seed)[0]) for seed in range(n_models)]


def _time_pairs(pairs, repeats: int, device) -> dict:
    """Median seconds of today's kernel, the batched kernel and the floor on ``pairs``; their curves compared."""

    def today():
        return [match_curve(fa, fb, cross=cross_product(fa, fb), exact_tol=EXACT_TOL) for fa, fb in pairs]

    def batched():
        return match_curves(pairs, crosses=cross_products(pairs, device=device), device=device, exact_tol=EXACT_TOL)

    def floor():
        return cross_products(pairs, device=device)

    kernels = {"today": today, "batched": batched, "floor": floor}
    results = {name: fn() for name, fn in kernels.items()}  # warm-up, and the curves to compare
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(repeats):
        for name, fn in kernels.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    parts: dict[str, float] = {}
    cross_products(pairs, device=device)
    started = time.perf_counter()
    crosses = cross_products(pairs, device=device)
    parts["cross"] = time.perf_counter() - started
    match_curves(pairs, crosses=crosses, device=device, exact_tol=EXACT_TOL, timings=parts)
    problems = differing_sets(results["batched"], results["today"])
    if problems:
        raise AssertionError("the batched kernel's sets differ from today's: " + "; ".join(problems[:5]))
    return {"curves": len(pairs), "runs": repeats, "parts": parts,
            **{name: statistics.median(values) for name, values in times.items()}}


def bench_blocks(*, quick: bool = False, repeats: int = 3, device=None, seed: int = 0) -> list[dict]:
    """Rows 7 (table-scale blocks) and 8 (one paper-size pair); seconds are medians per run of the whole block."""
    sizes = QUICK if quick else FULL
    device = torch.device("cpu") if device is None else torch.device(device)
    rows = []
    for n_neurons, n_models in sizes["layers"]:
        factors = _layers(n_models, sizes["samples"], n_neurons)
        pairs = [(factors[i], factors[j]) for i in range(n_models) for j in range(i + 1, n_models)]
        row = _time_pairs(pairs, repeats, device)
        row.update(row=f"7{'abcdef'[len(rows)]}", shape=f"{n_neurons} + {n_neurons} neurons, {sizes['samples']} "
                   f"samples, block of {n_models}", kind="table")
        rows.append(row)
    n_neurons, n_samples = sizes["paper"]
    A, B = relu_pair(n_samples, n_neurons, n_neurons, seed=seed)
    row = _time_pairs([(factor(A), factor(B))], repeats, device)
    row.update(row="8", shape=f"{n_neurons} + {n_neurons} neurons, {n_samples} samples, one pair", kind="paper")
    rows.append(row)
    for row in rows:
        _judge(row)
    return rows


def _judge(row: dict) -> None:
    speedup, over_floor = row["today"] / row["batched"], row["batched"] / row["floor"]
    if row["kind"] == "table":
        row["target"] = "≥ 4× faster than today's, ≤ 2× the floor"
        ok = speedup >= 4 and over_floor <= 2
    else:
        row["target"] = "no slower than today's"
        ok = speedup >= 1
    row["result"] = f"{'met' if ok else 'MISSED'}: {speedup:.1f}× faster than today's, {over_floor:.2f}× the floor"


def print_blocks(rows: list[dict], out=None) -> None:
    """Print rows 7–8 (milliseconds per curve) and where the batched kernel's time goes."""
    out = out or sys.stdout
    header = ("row", "shape", "curves", "today ms", "batched ms", "floor ms", "runs", "target", "result")
    lines = [(r["row"], r["shape"], str(r["curves"]), *(f"{1e3 * r[k] / r['curves']:.3f}"
                                                       for k in ("today", "batched", "floor")),
              str(r["runs"]), r["target"], r["result"]) for r in rows]
    text_table(header, lines, out)
    print("\nwhere the batched kernel's time goes (ms per curve, one more run; `other`: checks, chunking, results):",
          file=out)
    parts = ("cross", "setup", "steps", "flushes", "one_pair")
    header = ("row", "GEMM", "set-up", "steps", "flushes", "one pair at a time", "other")
    lines = []
    for r in rows:
        values = [r["parts"].get(k, 0.0) for k in parts]
        lines.append((r["row"], *(f"{1e3 * v / r['curves']:.3f}" for v in values),
                      f"{1e3 * max(0.0, r['batched'] - sum(values)) / r['curves']:.3f}"))
    text_table(header, lines, out)

