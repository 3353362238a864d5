"""The ε rule is stated once: membership (critical ε ≤ max(ε, exact_tol)) and the ε range check ([0, 1]).

The SQL of the views and macros (``matches``, ``matches_at``, ``cross_matches``, ``universality``) and the
report's step functions are checked against :func:`raymatch.match.inputs.in_match` and
:func:`raymatch.match.inputs.check_eps` on the edge cases: a critical ε exactly at ε, exactly at the exact
tolerance, one float step above and below, 0 and ``inf``, at ε = 0 and ε = 1.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL
from raymatch.match.inputs import check_eps, in_match
from raymatch.report.science import pair_steps, similarity_at
from raymatch.results import append_rows, query
from raymatch.results.views import eps_check_sql, membership_sql
from raymatch.store import layout

FLOAT32_TOL = 2.0 ** -13  # exact_tolerance(float32)
EPS = (0.0, FLOAT32_TOL, 0.25, 1.0)


def _edges(eps: float, exact_tol: float) -> list[float]:
    """Critical values on both sides of every edge of the rule at ``eps`` and ``exact_tol``."""
    values = {0.0, math.inf, 1.0, 0.5}
    for edge in (eps, exact_tol):
        values |= {edge, math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)}
    return sorted(v for v in values if v >= 0.0)


def _cases():
    return [(eps, tol) for eps in EPS for tol in (EXACT_TOL, FLOAT32_TOL)]


def test_in_match_is_the_rule_on_scalars_and_arrays():
    assert in_match(0.25, 0.25) and not in_match(math.nextafter(0.25, 1.0), 0.25)
    assert in_match(FLOAT32_TOL, 0.0, FLOAT32_TOL) and not in_match(math.nextafter(FLOAT32_TOL, 1.0), 0.0, FLOAT32_TOL)
    assert in_match(0.0, 0.0) and not in_match(math.inf, 1.0)
    assert isinstance(in_match(0.1, 0.2), bool)
    critical = np.array([[0.0, 0.3], [np.inf, 1.0]])
    assert in_match(critical, 0.3).tolist() == [[True, True], [False, False]]
    assert in_match(critical, np.array([0.2, 0.0])).tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize(("eps", "exact_tol"), _cases())
def test_the_sql_expression_is_the_python_rule(eps, exact_tol):
    values = _edges(eps, exact_tol)
    sql = membership_sql("x", "$eps", "$tol")
    got = duckdb.sql(f"SELECT list({sql} ORDER BY i) FROM (SELECT unnest($values) AS x, "
                     f"unnest(range(len($values))) AS i)",
                     params={"eps": eps, "tol": exact_tol, "values": values}).fetchall()[0][0]
    assert got == [in_match(value, eps, exact_tol) for value in values]


def _store_with_edges(store):
    """One curve row per (ε, exact_tol) case whose critical values sit on that case's edges; a cross row each."""
    store.write_json(layout.study_record_key("e1"), {"name": "e1", "config_hash": "h1", "eps": list(EPS),
                                                     "layers": ["fc1"]})
    rows, cross = [], []
    for index, (eps, tol) in enumerate(_cases()):
        values = _edges(eps, tol)
        row = {"study": "e1", "population": "trained", "layer": "fc1", "repeat": index, "model_a": "m0",
               "model_b": "m1", "probe_id": "p1", "config_hash": "h1", "code_version": "0.2.0", "n_samples": 100,
               "n_a": len(values), "n_b": len(values), "dead_a": values.count(math.inf),
               "dead_b": values.count(math.inf), "critical_a": values, "critical_b": values[::-1], "exact_tol": tol,
               "max_epsilon": 1.0, "chance": 0.5, "cka": None, "seconds": 0.0, "status": "ok", "error": None}
        rows.append(row)
        cross_row = {key: value for key, value in row.items() if key != "layer"}
        cross.append({**cross_row, "layer_a": "fc1", "layer_b": "fc2", "pool": "none"})
    append_rows(store, "curves", rows)
    append_rows(store, "cross_curves", cross)
    return rows


def _expected_neurons(critical, eps, exact_tol) -> list[int]:
    return np.flatnonzero(in_match(np.asarray(critical, dtype=float), eps, exact_tol)).tolist()


def test_matches_matches_at_and_cross_matches_follow_the_python_rule(local_store):
    rows = _store_with_edges(local_store)
    grid = query(local_store, "SELECT repeat, eps, neurons_a, neurons_b, size_a, similarity FROM matches")
    cross = query(local_store, "SELECT repeat, eps, neurons_a, neurons_b FROM cross_matches")
    assert len(grid) == len(cross) == len(rows) * len(EPS)
    for view in (grid, cross):
        for record in view.itertuples():
            row = rows[record.repeat]
            assert list(record.neurons_a) == _expected_neurons(row["critical_a"], record.eps, row["exact_tol"])
            assert list(record.neurons_b) == _expected_neurons(row["critical_b"], record.eps, row["exact_tol"])
    for record in grid.itertuples():
        row = rows[record.repeat]
        size_b = len(_expected_neurons(row["critical_b"], record.eps, row["exact_tol"]))
        assert record.similarity == pytest.approx((record.size_a + size_b) / (row["n_a"] + row["n_b"]))
    for eps in EPS:
        at = query(local_store, f"SELECT repeat, neurons_a, neurons_b FROM matches_at({eps!r})")
        for record in at.itertuples():
            row = rows[record.repeat]
            assert list(record.neurons_a) == _expected_neurons(row["critical_a"], eps, row["exact_tol"])
            assert list(record.neurons_b) == _expected_neurons(row["critical_b"], eps, row["exact_tol"])


def test_universality_follows_the_python_rule(local_store):
    rows = _store_with_edges(local_store)
    for eps in EPS:
        shared = query(local_store, f"SELECT repeat, model, neuron, matched_in FROM universality({eps!r})")
        for record in shared.itertuples():
            row = rows[record.repeat]
            critical = row["critical_a"] if record.model == "m0" else row["critical_b"]
            assert record.matched_in == int(in_match(critical[record.neuron], eps, row["exact_tol"]))


def test_the_reports_step_functions_follow_the_python_rule():
    rows = []
    for index, (eps, tol) in enumerate(_cases()):
        values = _edges(eps, tol)
        rows.append({"population": "trained", "layer": "fc1", "model_a": f"a{index}", "model_b": "b",
                     "critical_a": values, "critical_b": values[::-1], "n_a": len(values), "n_b": len(values),
                     "exact_tol": tol, "repeat": 0, "chance": 0.5, "status": "ok"})
    steps = pair_steps(pd.DataFrame(rows))
    assert steps["model_a"].tolist() == [row["model_a"] for row in rows]
    drawn = similarity_at(steps, np.array(EPS))  # (pairs, ε): every pair at every ε of the cases
    for index, (row, tol) in enumerate(zip(rows, (tol for _, tol in _cases()), strict=True)):
        critical = np.asarray(row["critical_a"] + row["critical_b"], dtype=float)
        for column, eps in enumerate(EPS):
            expected = in_match(critical, eps, tol).sum() / (row["n_a"] + row["n_b"])
            assert drawn[index, column] == pytest.approx(expected, abs=1e-12), (eps, tol)


ARGUMENTS = {"-0.1": -0.1, "0": 0, "0.0": 0.0, "1": 1, "1.0000001": 1.0000001, "0.5": 0.5, "2": 2,
             "'nan'": "nan", "NULL": None, "'abc'": "abc", "'0.25'": "0.25", "'inf'": "inf"}


@pytest.mark.parametrize("argument", list(ARGUMENTS))
def test_the_sql_eps_check_accepts_what_check_eps_accepts(argument):
    value = ARGUMENTS[argument]
    sql = f"SELECT {eps_check_sql(argument, 'matches_at')}"
    try:
        expected = check_eps(value)
    except ValueError:
        with pytest.raises(duckdb.InvalidInputException, match=r"^Invalid Input Error: matches_at: eps must be a "
                                                                r"number in \[0, 1\]; got "):
            duckdb.sql(sql).fetchall()
    else:
        assert duckdb.sql(sql).fetchall()[0][0] == expected


@pytest.mark.parametrize("sql", ["SELECT count(*) FROM universality(2)", "SELECT count(*) FROM matches_at(2)",
                                 "SELECT count(*) FROM universality(-0.5)", "SELECT 1 FROM matches_at(NULL)",
                                 "SELECT count(*) FROM universality('x')"])
@pytest.mark.parametrize("filled", [True, False], ids=["rows", "empty"])
def test_raymatch_query_refuses_an_eps_out_of_range_with_exit_2_and_one_line(local_store, capsys, sql, filled):
    if filled:
        _store_with_edges(local_store)
    else:
        local_store.write_json(layout.study_record_key("e1"), {"name": "e1", "config_hash": "h1", "eps": [0.5],
                                                               "layers": []})
    assert main(["query", local_store.root, sql]) == 2
    captured = capsys.readouterr()
    macro = sql.split(" FROM ")[1].split("(")[0]
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert f"{macro}: eps must be a number in [0, 1]; got " in captured.err
