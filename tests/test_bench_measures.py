"""The measures' cost benchmark (raymatch/bench/measures.py) at smoke sizes: its rows and its table."""

from __future__ import annotations

import io

from raymatch.bench.measures import TARGET, bench_measures, main, measure_costs, print_measures
from raymatch.match import MEASURES


def test_bench_measures_times_the_baseline_and_every_measure_cold_and_warm():
    rows = bench_measures(200, ((8, 6),), repeats=1)
    assert [(r["shape"], r["case"]) for r in rows] == [("8 + 6", "cold"), ("8 + 6", "warm")]
    for r in rows:
        assert r["baseline"] > 0 and r["measures"] > 0
        assert r["ratio"] == r["measures"] / r["baseline"] and r["met"] == (r["ratio"] <= TARGET)
    out = io.StringIO()
    print_measures(rows, out)
    assert "8 + 6" in out.getvalue() and "target ≤ 1.15" in out.getvalue()
    assert list(measure_costs(200, (8, 6), repeats=1)) == ["cross_product", "match_curve", *MEASURES, "neuron rows"]


def test_bench_measures_quick_prints_its_table(capsys):
    assert main(["--quick", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "32 + 16 | cold" in printed and "each part alone" in printed
