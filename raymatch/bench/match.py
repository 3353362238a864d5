"""``raymatch bench match``: the match core against the float64 oracle and the QR floor (docs/benchmarks.md)."""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import scipy.linalg

from ..match import candidate_order, factor, match_curve, max_match, minimal_match, reference, simple_matches
from ..match.synthetic import relu_pair
from .timing import PAPER_EPS, median_time

__all__ = ["bench_match", "judge", "print_table"]


def bench_match(n_samples: int, n_neurons: int, small_samples: int, small_neurons: int,
                repeats: int, seed: int = 0) -> list[dict]:
    """Rows 1-6 of the match-core benchmark (see docs/benchmarks.md)."""
    A, B = relu_pair(n_samples, n_neurons, n_neurons, seed=seed)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    joint = np.hstack([A64, B64])
    rows = []

    def row(number, what, seconds, runs, target=""):
        rows.append({"row": number, "what": what, "seconds": seconds, "runs": runs, "target": target})

    seconds, runs = median_time(lambda: [reference.max_match(A64, B64, eps) for eps in PAPER_EPS], 1)
    row(1, f"oracle Algorithm 1, ε ∈ {{{', '.join(map(str, PAPER_EPS))}}}", seconds, runs)
    seconds, runs = median_time(lambda: scipy.linalg.qr(joint, mode="economic", check_finite=False), repeats)
    row(2, f"float64 thin QR of the joint {n_samples} × {2 * n_neurons} matrix (floor)", seconds, runs)
    seconds, runs = median_time(lambda: match_curve(A, B), repeats)
    row(3, "match_curve from arrays (every ε)", seconds, runs, "≤ 1.5 × row 2, ≥ 10× faster than row 1")
    fa, fb = factor(A), factor(B)
    seconds, runs = median_time(lambda: match_curve(fa, fb), repeats)
    row(4, "match_curve from two cached factors", seconds, runs, "≤ 0.3 s")
    found = []
    seconds, runs = median_time(lambda: found.append(simple_matches(fa, fb, 0.25)), 1)
    m = max_match(fa, fb, 0.25)
    row(5, f"simple_matches at ε = 0.25, all v ({m.size_a}+{m.size_b} neurons, "
           f"{len(found[-1])} distinct)", seconds, runs, "≤ 60 s")

    a_small, b_small = relu_pair(small_samples, small_neurons, small_neurons, seed=seed + 1, dtype=np.float64)
    fa_small, fb_small = factor(a_small), factor(b_small)
    joint_small = np.asfortranarray(np.hstack([a_small, b_small]))
    seconds, runs = median_time(lambda: scipy.linalg.qr(joint_small, mode="r", check_finite=False), 3 * repeats)
    row("6", f"float64 QR (R only) of the joint {small_samples} × {2 * small_neurons} matrix (floor for 6b, 6e)",
        seconds, runs)
    # Two ε: the paper's largest grid value (only the planted part matches) and one above the
    # maximal ε of this pair, where the search runs through every neuron of both layers.
    for labels, eps_small in ((("6a", "6b", "6c"), 0.5), (("6d", "6e", "6f"), 0.9)):
        ref_a, ref_b = reference.max_match(a_small, b_small, eps_small)
        neuron = ("a", int(ref_a[0]))
        candidates, _ = candidate_order(ref_a, ref_b, None)
        oracle = partial(reference.minimal_match, a_small, b_small, eps_small, neuron, candidates)
        seconds, runs = median_time(oracle, 1)
        row(labels[0], f"oracle v-minimal, one v, {small_neurons}+{small_neurons} neurons, {small_samples} "
                       f"samples, ε = {eps_small} ({ref_a.size}+{ref_b.size} in the max match)", seconds, runs)
        seconds, runs = median_time(partial(minimal_match, a_small, b_small, eps_small, neuron), 3 * repeats)
        row(labels[1], "raymatch minimal_match, same v, from arrays", seconds, runs,
            f"≥ 100× faster than row {labels[0]}")
        seconds, runs = median_time(partial(minimal_match, fa_small, fb_small, eps_small, neuron), 3 * repeats)
        row(labels[2], "raymatch minimal_match, same v, from cached factors", seconds, runs)
    return rows


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def judge(rows: list[dict]) -> None:
    """Fill each row's ``result``: its target met or missed, and its ratio to the row it is measured against."""
    by = {r["row"]: r["seconds"] for r in rows}
    checks = {
        3: (by[3] <= 1.5 * by[2] and by[1] / by[3] >= 10,
            f"{by[3] / by[2]:.2f} × row 2, {_times(by[1] / by[3])} faster than row 1"),
        4: (by[4] <= 0.3, f"{by[4]:.3f} s"),
        5: (by[5] <= 60, f"{by[5]:.1f} s"),
        "6b": (by["6a"] / by["6b"] >= 100, f"{_times(by['6a'] / by['6b'])} faster than row 6a"),
        "6c": (True, f"{_times(by['6a'] / by['6c'])} faster than row 6a"),
        "6e": (by["6d"] / by["6e"] >= 100, f"{_times(by['6d'] / by['6e'])} faster than row 6d"),
        "6f": (True, f"{_times(by['6d'] / by['6f'])} faster than row 6d"),
    }
    for r in rows:
        if r["row"] in checks:
            ok, detail = checks[r["row"]]
            r["result"] = f"{'met' if ok else 'MISSED'}: {detail}" if r["target"] else detail
        else:
            r["result"] = ""


def print_table(rows: list[dict], out=None) -> None:
    """Print the match benchmark's rows (to ``out``, default stdout)."""
    out = out or sys.stdout
    header = ("row", "what", "median s", "runs", "target", "result")
    lines = [(str(r["row"]), r["what"], f"{r['seconds']:.3f}", str(r["runs"]), r["target"], r["result"])
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)
