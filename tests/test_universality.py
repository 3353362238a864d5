"""``universality(eps)``: per neuron, in how many of its model's pairs it lies in the maximum match at ε.

Checked against :func:`raymatch.max_match` computed directly on the activation matrices the curves were made from.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raymatch.engine.tasks import PERMUTATION_SEED
from raymatch.match import EXACT_TOL, match_curve, max_match
from raymatch.match.factor import row_permutation
from raymatch.report import write_report
from raymatch.report.science import mean_curve, pair_steps
from raymatch.results import append_rows, connect, load, query
from raymatch.results.schema import UNIVERSALITY
from raymatch.store import layout


def _population(n_models: int = 4, n_samples: int = 80, seed: int = 0) -> dict[str, np.ndarray]:
    """Models sharing a 3-dimensional signal (mixed, with noise), each with own neurons; model m1 has a dead one."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n_samples, 3))
    models = {}
    for index in range(n_models):
        mixed = shared @ rng.standard_normal((3, 3)) + 0.05 * (index + 1) * rng.standard_normal((n_samples, 3))
        own = rng.standard_normal((n_samples, 2 + index % 2))
        models[f"m{index}"] = np.hstack([mixed, own, rng.standard_normal((n_samples, 1))])
    models["m1"][:, 4] = 0.0
    return models


def _curve_row(a: str, b: str, A: np.ndarray, B: np.ndarray, **fields) -> dict:
    curve = match_curve(A, B)
    row = {"study": "u1", "population": "trained", "layer": "fc1", "repeat": 0, "model_a": a, "model_b": b,
           "probe_id": "p1", "config_hash": "h1", "code_version": "0.2.0", "n_samples": curve.n_samples,
           "n_a": curve.n_a, "n_b": curve.n_b, "dead_a": len(curve.dead_a), "dead_b": len(curve.dead_b),
           "critical_a": curve.critical_a, "critical_b": curve.critical_b, "exact_tol": EXACT_TOL,
           "max_epsilon": curve.max_epsilon, "chance": 0.9, "cka": None, "seconds": 0.01, "status": "ok",
           "error": None}
    row.update(fields)
    return row


@pytest.fixture
def population_store(local_store):
    models = _population()
    local_store.write_json(layout.study_record_key("u1"), {"name": "u1", "config_hash": "h1", "eps": [0.2],
                                                           "layers": ["fc1"]})
    rows = [_curve_row(a, b, models[a], models[b]) for a, b in itertools.combinations(models, 2)]
    rows += [_curve_row(a, b, models[a], models[b][row_permutation(80, PERMUTATION_SEED)], population="permuted")
             for a, b in itertools.combinations(models, 2)]
    rows.append(_curve_row("m0", "m1", models["m0"], models["m1"], status="failed", error="x", layer="fc2",
                           critical_a=None, critical_b=None))  # a failed curve counts nowhere
    rows.append(_curve_row("m0", "m1", models["m0"], models["m1"], config_hash="old"))  # another configuration
    append_rows(local_store, "curves", rows)
    return local_store, models


def _expected(models: dict[str, np.ndarray], eps: float) -> dict[tuple[str, int], int]:
    """(model, neuron) → number of other models in whose maximum match with it the neuron lies (max_match)."""
    counts = {(name, neuron): 0 for name, matrix in models.items() for neuron in range(matrix.shape[1])}
    for a, b in itertools.combinations(models, 2):
        match = max_match(models[a], models[b], eps)
        for neuron in match.a:
            counts[a, int(neuron)] += 1
        for neuron in match.b:
            counts[b, int(neuron)] += 1
    return counts


def test_universality_equals_max_matches_computed_directly(population_store):
    store, models = population_store
    criticals = np.unique(np.concatenate([np.concatenate([c.critical_a, c.critical_b]) for c in (
        match_curve(models[a], models[b]) for a, b in itertools.combinations(models, 2))]))
    criticals = criticals[np.isfinite(criticals)]
    # between consecutive critical values (at one, the curve and max_match may differ by rounding), and the ends
    eps_values = [0.0, 1.0, *[float(x) for x in ((criticals[:-1] + criticals[1:]) / 2)[::3]]]
    con = connect(store)
    try:
        for eps in eps_values:
            table = con.sql(f"SELECT * FROM universality({eps!r}) WHERE population = 'trained' "
                            "ORDER BY model, neuron").to_arrow_table()
            assert table.schema.names == UNIVERSALITY.names
            assert table.cast(UNIVERSALITY).schema == UNIVERSALITY
            rows = table.to_pylist()
            assert len(rows) == sum(matrix.shape[1] for matrix in models.values())
            expected = _expected(models, eps)
            for row in rows:
                assert (row["study"], row["population"], row["layer"], row["repeat"]) == ("u1", "trained", "fc1", 0)
                assert row["eps"] == eps and row["others"] == len(models) - 1
                assert row["matched_in"] == expected[row["model"], row["neuron"]], (eps, row)
                assert row["share"] == pytest.approx(row["matched_in"] / row["others"])
    finally:
        con.close()


def test_dead_neurons_are_never_shared_and_every_neuron_is_shared_at_eps_one(population_store):
    store, _ = population_store
    dead = query(store, "SELECT matched_in FROM universality(0.999) WHERE model = 'm1' AND neuron = 4")
    assert dead["matched_in"].tolist() == [0, 0]  # trained and permuted
    everyone = query(store, "SELECT count(*) AS n FROM universality(1.0) WHERE share = 1 AND population = 'trained'")
    assert everyone["n"].item() == sum(m.shape[1] for m in _population().values()) - 1  # all but the dead one
    shared_by_all = query(store, "SELECT model, count(*) AS n FROM universality(0.3) WHERE share = 1 "
                                 "GROUP BY model ORDER BY model")
    assert set(shared_by_all["model"]) <= {"m0", "m1", "m2", "m3"}


@pytest.mark.parametrize("eps", ["-0.1", "1.5", "NULL"])
def test_universality_eps_out_of_range_is_a_clear_error(population_store, eps):
    store, _ = population_store
    with pytest.raises(ValueError, match=r"universality: eps must be a number in \[0, 1\]; got"):
        query(store, f"SELECT * FROM universality({eps})")


def test_report_eps_curve_is_the_exact_mean_of_max_matches_and_universality_counts_shared_neurons(population_store,
                                                                                                  tmp_path):
    store, models = population_store
    report = write_report(store, study="u1", out_dir=tmp_path / "report", eps=0.3)
    curve = report.figures["eps_curve.png"]
    assert curve.path.exists() and set(curve.data["population"]) == {"trained", "permuted"}
    # the drawn step function at any ε is the mean over pairs of max_match's similarity on the activations
    steps = pair_steps(load(store, "curves"))
    for population in ("trained", "permuted"):
        eps_steps, levels = mean_curve(steps[steps["population"] == population])
        assert np.all(np.diff(eps_steps) > 0) and np.all(np.diff(levels) >= -1e-12)
        for eps in (0.05, 0.2, 0.33, 0.6, 0.9):
            drawn = levels[np.searchsorted(eps_steps, eps, side="right") - 1]
            permutation = row_permutation(80, PERMUTATION_SEED)
            pairs = [(models[a], models[b] if population == "trained" else models[b][permutation])
                     for a, b in itertools.combinations(models, 2)]
            assert drawn == pytest.approx(np.mean([max_match(A, B, eps).similarity for A, B in pairs]), abs=1e-12)
    lines, bands = curve.artists["curves"], curve.artists["bands"]
    assert set(lines) == set(bands) == {("fc1", "trained"), ("fc1", "permuted")}
    assert lines["fc1", "permuted"].get_linestyle() == ":"
    # the permuted null: near zero well below the chance ratio, where trained pairs are not
    trained_at = levels_at(steps, "trained", 0.3)
    assert levels_at(steps, "permuted", 0.3) == 0.0 and trained_at > 0.2  # 3 shared of 6-7 neurons
    shared = report.figures["universality.png"].artists["all"]
    expected = _expected(models, 0.3)
    assert shared["fc1", "trained"] == sum(count == len(models) - 1 for count in expected.values())
    assert shared["fc1", "permuted"] == 0
    summary = report.summary
    assert "interval over models" in summary and "2000 resamples, seed 0" in summary
    assert "shared by every other model at ε = 0.3" in summary


def levels_at(steps, population: str, eps: float) -> float:
    eps_steps, levels = mean_curve(steps[steps["population"] == population])
    return float(levels[np.searchsorted(eps_steps, eps, side="right") - 1])
