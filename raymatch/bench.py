"""Benchmarks, printed as tables with the baseline measured in the same process.

Run ``raymatch bench match`` (or ``python -m raymatch.bench match``). Targets are stated in
``docs/benchmarks.md``; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy
import scipy.linalg

from . import __version__
from .match import candidate_order, factor, match_curve, max_match, minimal_match, reference, simple_matches
from .match.synthetic import relu_pair

PAPER_EPS = (0.15, 0.2, 0.25, 0.3, 0.5)


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Median wall time of ``repeats`` calls (after one untimed warm-up when repeats > 1)."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, raymatch {__version__}")


def bench_match(n_samples: int, n_neurons: int, small_samples: int, small_neurons: int,
                repeats: int, seed: int = 0) -> list[dict]:
    """Rows 1-6 of the match-core benchmark (see docs/benchmarks.md)."""
    A, B = relu_pair(n_samples, n_neurons, n_neurons, seed=seed)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    joint = np.hstack([A64, B64])
    rows = []

    def row(number, what, seconds, runs, target=""):
        rows.append({"row": number, "what": what, "seconds": seconds, "runs": runs, "target": target})

    seconds, runs = _time(lambda: [reference.max_match(A64, B64, eps) for eps in PAPER_EPS], 1)
    row(1, f"oracle Algorithm 1, ε ∈ {{{', '.join(map(str, PAPER_EPS))}}}", seconds, runs)
    seconds, runs = _time(lambda: scipy.linalg.qr(joint, mode="economic", check_finite=False), repeats)
    row(2, f"float64 thin QR of the joint {n_samples} × {2 * n_neurons} matrix (floor)", seconds, runs)
    seconds, runs = _time(lambda: match_curve(A, B), repeats)
    row(3, "match_curve from arrays (every ε)", seconds, runs, "≤ 1.5 × row 2, ≥ 10× faster than row 1")
    fa, fb = factor(A), factor(B)
    seconds, runs = _time(lambda: match_curve(fa, fb), repeats)
    row(4, "match_curve from two cached factors", seconds, runs, "≤ 0.3 s")
    found = []
    seconds, runs = _time(lambda: found.append(simple_matches(fa, fb, 0.25)), 1)
    m = max_match(fa, fb, 0.25)
    row(5, f"simple_matches at ε = 0.25, all v ({m.size_a}+{m.size_b} neurons, "
           f"{len(found[-1])} distinct)", seconds, runs, "≤ 60 s")

    a_small, b_small = relu_pair(small_samples, small_neurons, small_neurons, seed=seed + 1, dtype=np.float64)
    eps_small = 0.5
    ref_a, ref_b = reference.max_match(a_small, b_small, eps_small)
    neuron = ("a", int(ref_a[0]))
    candidates, _ = candidate_order(ref_a, ref_b, None)
    seconds_ref, runs = _time(
        lambda: reference.minimal_match(a_small, b_small, eps_small, neuron, candidates), 1)
    row("6a", f"oracle v-minimal, one v, {small_neurons}+{small_neurons} neurons, "
              f"{small_samples} samples, ε = {eps_small} ({ref_a.size}+{ref_b.size} in the max match)",
        seconds_ref, runs)
    seconds, runs = _time(lambda: minimal_match(a_small, b_small, eps_small, neuron), repeats)
    row("6b", "raymatch minimal_match, same v", seconds, runs, "≥ 100× faster than row 6a")
    return rows


def _verdicts(rows: list[dict]) -> None:
    by = {r["row"]: r["seconds"] for r in rows}
    checks = {
        3: (by[3] <= 1.5 * by[2] and by[1] / by[3] >= 10,
            f"{by[3] / by[2]:.2f} × row 2, {by[1] / by[3]:.0f}× faster than row 1"),
        4: (by[4] <= 0.3, f"{by[4]:.3f} s"),
        5: (by[5] <= 60, f"{by[5]:.1f} s"),
        "6b": (by["6a"] / by["6b"] >= 100, f"{by['6a'] / by['6b']:.0f}× faster than row 6a"),
    }
    for r in rows:
        if r["row"] in checks:
            ok, detail = checks[r["row"]]
            r["result"] = f"{'met' if ok else 'MISSED'}: {detail}"
        else:
            r["result"] = ""


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    header = ("row", "what", "median s", "runs", "target", "result")
    lines = [(str(r["row"]), r["what"], f"{r['seconds']:.3f}", str(r["runs"]), r["target"], r["result"])
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raymatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["match"], help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke run; the targets refer to the full sizes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per fast row (median reported)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = {"n_samples": 1000, "n_neurons": 64, "small_samples": 400, "small_neurons": 32}
    else:
        sizes = {"n_samples": 10_000, "n_neurons": 512, "small_samples": 2_000, "small_neurons": 128}
    print(f"raymatch bench match — {machine()}")
    print(f"synthetic ReLU pair: {sizes['n_samples']} samples, {sizes['n_neurons']} + {sizes['n_neurons']} "
          f"neurons (raymatch.match.synthetic.relu_pair, seed 0)\n")
    rows = bench_match(repeats=max(1, args.repeats), **sizes)
    _verdicts(rows)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
