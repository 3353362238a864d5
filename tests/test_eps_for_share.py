"""``eps_for_share(share)``: at what ε is a given share of the live neurons matched (issue 26.6)?

One row per (pair, layer, repeat): the smallest ε at which at least ⌈share · live⌉ live neurons of each side lie in
the maximum match. Checked against :meth:`raymatch.match.MatchCurve.min_epsilon` and :meth:`MatchCurve.at
<raymatch.match.MatchCurve.at>` on the activation matrices the curves were made from, on the exact-tolerance edge,
and through ``raymatch query`` (a share outside (0, 1] is one clear error, exit 2).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL, match_curve
from raymatch.results import EPS_FOR_SHARE, append_rows, query
from raymatch.store import layout

SHARES = (0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0)


def _models(n_samples: int = 90, seed: int = 3) -> dict[str, np.ndarray]:
    """Four models sharing a 3-d signal, each with private neurons; m1 and m3 have one dead neuron, m2 is wider."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_samples, 3))
    models = {}
    for index in range(4):
        mixed = shared @ rng.standard_normal((3, 3)) + 0.04 * (index + 1) * rng.standard_normal((n_samples, 3))
        models[f"m{index}"] = np.hstack([mixed, rng.standard_normal((n_samples, 3 + (index == 2)))])
    models["m1"][:, 5] = 0.0
    models["m3"][:, 4] = 0.0
    return models


def _row(a: str, b: str, curve, **fields) -> dict:
    row = {"study": "q", "population": "trained", "layer": "fc", "repeat": 0, "model_a": a, "model_b": b,
           "probe_id": "p", "config_hash": "h", "code_version": "0.2.0", "n_samples": curve.n_samples,
           "n_a": curve.n_a, "n_b": curve.n_b, "dead_a": len(curve.dead_a), "dead_b": len(curve.dead_b),
           "critical_a": curve.critical_a, "critical_b": curve.critical_b, "exact_tol": EXACT_TOL,
           "max_epsilon": curve.max_epsilon, "chance": 0.8, "cka": None, "seconds": 0.0, "status": "ok",
           "error": None}
    return row | fields


@pytest.fixture
def pairs(local_store):
    models = _models()
    local_store.write_json(layout.study_record_key("q"), {"name": "q", "config_hash": "h", "eps": [0.5],
                                                          "layers": ["fc"]})
    curves = {(a, b): match_curve(models[a], models[b]) for a, b in itertools.combinations(models, 2)}
    rows = [_row(a, b, curve) for (a, b), curve in curves.items()]
    rows.append(_row("m0", "m1", curves["m0", "m1"], status="failed", error="x", layer="fc2", critical_a=None,
                     critical_b=None))  # a failed curve has no row
    append_rows(local_store, "curves", rows)
    return local_store, curves


def needed(share: float, live: int) -> int:
    """The neurons of a side with ``live`` live ones that make ``share`` of them (0.3 of 10 is 3, not 4)."""
    return max(1, math.ceil(round(share * live, 9)))


def test_eps_for_share_is_min_epsilon_of_the_curve_of_the_activations(pairs):
    store, curves = pairs
    for share in SHARES:
        table = query(store, f"SELECT * FROM eps_for_share({share!r}) ORDER BY model_a, model_b")
        assert list(table.columns) == EPS_FOR_SHARE.names and len(table) == len(curves)
        for row in table.itertuples():
            curve = curves[row.model_a, row.model_b]
            live_a, live_b = curve.n_a - len(curve.dead_a), curve.n_b - len(curve.dead_b)
            assert (row.live_a, row.live_b) == (live_a, live_b) and row.share == share
            assert (row.needed_a, row.needed_b) == (needed(share, live_a), needed(share, live_b))
            if row.needed_a == row.needed_b:
                assert row.eps == curve.min_epsilon(row.needed_a), (share, row)
            # the smallest ε: reached there, on both sides, and not one float step below
            match = curve.at(row.eps)
            assert match.size_a >= row.needed_a and match.size_b >= row.needed_b
            if row.eps > 0:
                below = curve.at(math.nextafter(row.eps, 0.0))
                assert below.size_a < row.needed_a or below.size_b < row.needed_b
    # at share 1 every live neuron: the maximal ε of the pair
    whole = query(store, "SELECT model_a, model_b, eps, max_epsilon FROM eps_for_share(1) JOIN curves "
                         "USING (study, population, layer, repeat, model_a, model_b)")
    assert whole["eps"].tolist() == pytest.approx(whole["max_epsilon"].tolist(), abs=0)


def test_eps_for_share_grows_with_the_share_and_names_the_models(pairs):
    store, _ = pairs
    append_rows(store, "models", [{"study": "q", "config_hash": "h", "population": "trained", "model_id": "m0",
                                   "name": "seed0", "architecture": "mlp"}])
    table = query(store, "SELECT share, model_a, model_b, name_a, name_b, eps FROM eps_for_share(0.25) UNION ALL "
                         "SELECT share, model_a, model_b, name_a, name_b, eps FROM eps_for_share(0.75)")
    low = table[table["share"] == 0.25].set_index(["model_a", "model_b"])["eps"]
    high = table[table["share"] == 0.75].set_index(["model_a", "model_b"])["eps"]
    assert (high.reindex(low.index) >= low).all() and (high.reindex(low.index) > low).any()
    named = table.drop_duplicates(["model_a", "name_a"]).set_index("model_a")["name_a"].to_dict()
    assert named == {"m0": "seed0", "m1": "m1", "m2": "m2"}  # no models row: the id


def test_the_exact_tolerance_rule_and_sides_without_live_neurons(local_store):
    local_store.write_json(layout.study_record_key("q"), {"name": "q", "config_hash": "h", "eps": [0.5],
                                                          "layers": ["fc"]})
    tol = 2.0 ** -13
    rows = [
        # the second neuron's critical ε is exactly the tolerance: in the exact match, so half is matched at 0
        {"critical_a": [0.0, tol, 0.3, 0.6], "critical_b": [tol, 0.0, 0.2, 0.7], "exact_tol": tol, "model_b": "b1"},
        # one float step above it: not in the exact match
        {"critical_a": [0.0, math.nextafter(tol, 1.0), 0.3, 0.6], "critical_b": [0.0, 0.0, 0.2, 0.7],
         "exact_tol": tol, "model_b": "b2"},
        # every neuron of b dead: no ε gives it a share
        {"critical_a": [0.0, 0.1, 0.3, 0.6], "critical_b": [math.inf] * 4, "exact_tol": tol, "model_b": "b3"},
    ]
    append_rows(local_store, "curves", [
        {"study": "q", "population": "trained", "layer": "fc", "repeat": 0, "model_a": "a", "probe_id": "p",
         "config_hash": "h", "code_version": "0.2.0", "n_samples": 50, "n_a": 4, "n_b": 4, "dead_a": 0,
         "dead_b": 4 if row["model_b"] == "b3" else 0, "max_epsilon": 0.7, "chance": 0.9, "seconds": 0.0,
         "status": "ok", **row} for row in rows])
    table = query(local_store, "SELECT model_b, eps FROM eps_for_share(0.5) ORDER BY model_b")
    got = dict(zip(table["model_b"], table["eps"], strict=True))
    assert got["b1"] == 0.0 and got["b2"] == math.nextafter(tol, 1.0) and math.isnan(got["b3"])
    assert query(local_store, "SELECT eps FROM eps_for_share(0.75) WHERE model_b = 'b1'")["eps"].tolist() == [0.3]


@pytest.mark.parametrize("share", ["0", "-0.5", "1.5", "NULL", "'x'", "'nan'"])
def test_a_share_outside_0_1_is_one_clear_line_and_exit_2(pairs, capsys, share):
    store, _ = pairs
    for sql in (f"SELECT * FROM eps_for_share({share})", f"SELECT count(*) FROM eps_for_share({share})"):
        assert main(["query", store.root, sql]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert "eps_for_share: share must be a number in (0, 1]; got " in captured.err


def test_the_readme_example_runs(pairs, capsys):
    store, _ = pairs
    sql = ("SELECT layer, population, median(eps) AS eps_half FROM eps_for_share(0.5) "
           "GROUP BY layer, population ORDER BY layer")
    assert main(["query", store.root, sql]) == 0
    assert "eps_half" in capsys.readouterr().out
