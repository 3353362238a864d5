"""The standard measures of a match task, its ``measures`` and ``neurons`` rows, their views and universal_neurons."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from raymatch.engine.stages import stage_named
from raymatch.engine.tasks import block_tasks, match_task
from raymatch.match import measure_pair, neuron_correlations, pair_measures
from raymatch.match.factor import row_permutation
from raymatch.results import TableWriter, query, to_table
from raymatch.store import ActivationKey, layout, read_activations

from .test_pairs import all_pairs, stored_population

TABLE_MEASURES = ("cca", "svcca", "pwcca", "procrustes", "neuron_corr")


def _stored(store, model):
    return read_activations(store, ActivationKey("probe0", model, "relu1")).astype(np.float64)


def test_a_match_task_with_measures_returns_curves_measures_and_neurons_rows(local_store):
    models = stored_population(local_store, 3, dead=True)
    pairs = [*all_pairs(models), ("model0", "ghost")]
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, pairs, block=8, measures=TABLE_MEASURES, svcca_keep=0.9)
    result = match_task(local_store, task)
    rows = result["rows"]
    assert set(rows) == {"curves", "measures", "neurons"} and result["measure_seconds"] > 0
    now = datetime.datetime.now(datetime.timezone.utc)
    for table in ("measures", "neurons"):
        to_table(table, [{**row, "created_at": now} for row in rows[table]])  # every row fits its schema
    assert len(rows["curves"]) == 4 and len(rows["measures"]) == 4 * 5 and len(rows["neurons"]) == 4
    assert result["failed"] == 1 and result["failed_measures"] == 5  # the ghost's curve, and its five measures
    for a, b in all_pairs(models):
        A, B = _stored(local_store, a), _stored(local_store, b)
        want = pair_measures(A, B, measures=TABLE_MEASURES, svcca_keep=0.9)  # arrays: factored centred
        mine = [row for row in rows["measures"] if (row["model_a"], row["model_b"]) == (a, b)]
        assert {row["measure"]: row["value"] for row in mine} == pytest.approx(want, abs=1e-9)
        assert all(row["status"] == "ok" and row["n_samples"] == 400 for row in mine)
        assert [row["svcca_keep"] for row in mine] == [None, 0.9, None, None, None]
        assert {row["kept_a"] for row in mine} == {22 if a == "model0" else 24}  # model0 has 2 dead neurons
        (neurons,) = [row for row in rows["neurons"] if (row["model_a"], row["model_b"]) == (a, b)]
        nc = neuron_correlations(A, B)
        np.testing.assert_allclose(neurons["correlation_a"], nc.best_a, atol=1e-9)
        assert list(neurons["partner_b"]) == nc.partner_b.tolist()
    ghost = [row for row in rows["measures"] if row["model_b"] == "ghost"]
    assert {row["status"] for row in ghost} == {"failed"} and all("ghost" in row["error"] for row in ghost)
    (ghost_neurons,) = [row for row in rows["neurons"] if row["model_b"] == "ghost"]
    assert ghost_neurons["status"] == "failed" and ghost_neurons.get("correlation_a") is None


def test_a_measures_only_task_gives_the_same_rows_without_curves(local_store):
    models = stored_population(local_store, 3)
    (full,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=8, measures=("cca", "pwcca"))
    (only,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=8, measures=("cca", "pwcca"),
                          curve=False)
    assert full.task_id != only.task_id
    both, measured = match_task(local_store, full)["rows"], match_task(local_store, only)["rows"]
    assert set(measured) == {"measures"}
    assert [(r["measure"], r["value"]) for r in measured["measures"]] == [
        (r["measure"], r["value"]) for r in both["measures"]]


def test_the_permuted_null_measures_model_b_with_its_rows_permuted(local_store):
    models = stored_population(local_store, 2)
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=8, population="permuted",
                          permute_b_seed=0, measures=("cca", "neuron_corr"))
    rows = match_task(local_store, task)["rows"]
    A, B = _stored(local_store, models[0]), _stored(local_store, models[1])
    B = B[row_permutation(B.shape[0], 0)]
    want = measure_pair(A, B, measures=("cca", "neuron_corr"))
    assert {row["measure"]: row["value"] for row in rows["measures"]} == pytest.approx(want.values, abs=1e-9)
    np.testing.assert_allclose(rows["neurons"][0]["correlation_b"], want.neurons.best_b, atol=1e-9)


def test_default_tasks_keep_their_ids_and_return_a_list_of_curves_rows(local_store):
    models = stored_population(local_store, 2)
    (task,) = block_tasks("s", "h", "p", "relu1", 0, all_pairs(models), block=2)
    assert task.measures == () and task.curve
    assert task.task_id == block_tasks("s", "h", "p", "relu1", 0, all_pairs(models), block=2, svcca_keep=0.5)[0].task_id


def test_a_stage_sends_each_table_its_rows_and_refuses_tables_it_does_not_declare():
    match = stage_named("match")
    assert match.rows_by_table([{"x": 1}]) == {"curves": [{"x": 1}]}
    assert set(match.rows_by_table({"curves": [], "measures": [], "neurons": []})) == {"curves", "measures", "neurons"}
    with pytest.raises(ValueError, match="returned rows of table 'runs', which it does not declare"):
        match.rows_by_table({"runs": []})


# ------------------------------------------------------------------------------------------------ views


def _record(store, measures=("max_match", "cka", "cca", "svcca"), keep=0.9, name="s1", config_hash="h1"):
    store.write_json(layout.study_record_key(name), {"name": name, "config_hash": config_hash, "eps": [0.25],
                                                     "layers": ["l1"], "measures": list(measures),
                                                     "svcca_keep": keep})


def _base(population="trained", a="m0", b="m1", layer="l1", study="s1", config_hash="h1"):
    return {"study": study, "population": population, "layer": layer, "repeat": 0, "model_a": a, "model_b": b,
            "probe_id": "p", "config_hash": config_hash, "code_version": "test"}


def _measure_row(measure, value, keep=None, status="ok", **identity):
    row = {**_base(**identity), "measure": measure, "svcca_keep": keep, "status": status}
    if status == "ok":
        row.update(value=value, n_samples=100, n_a=3, n_b=3)
    else:
        row["error"] = "boom"
    return row


def test_the_measures_view_shows_the_current_measures_and_cka_from_curves(local_store):
    from .test_results import curve_row

    _record(local_store)
    rows = [_measure_row("cca", 0.5), _measure_row("svcca", 0.6, keep=0.9), _measure_row("svcca", 0.7, keep=0.99),
            _measure_row("pwcca", 0.8), _measure_row("cca", None, status="failed", a="m0", b="m2"),
            _measure_row("cca", 0.4, config_hash="old")]
    with TableWriter(local_store) as writer:
        writer.add("measures", rows)
        writer.add("curves", [curve_row(study="s1", config_hash="h1", layer="l1", model_a="m0", model_b="m1",
                                        cka=0.75)])
    view = query(local_store, "SELECT model_b, measure, value, svcca_keep, status FROM measures ORDER BY ALL")
    # pwcca is not among the study's measures, svcca of another svcca_keep and the old configuration are not shown
    assert view.fillna(-1).values.tolist() == [["m1", "cca", 0.5, -1, "ok"], ["m1", "cka", 0.75, -1, "ok"],
                                               ["m1", "svcca", 0.6, 0.9, "ok"], ["m2", "cca", -1, -1, "failed"]]
    studies = query(local_store, "SELECT measures, svcca_keep FROM studies")
    assert list(studies["measures"][0]) == ["max_match", "cka", "cca", "svcca"] and studies["svcca_keep"][0] == 0.9


def _neurons_row(population, a, b, corr_a, corr_b, partner_a=None, partner_b=None):
    partner_a = partner_a if partner_a is not None else [0] * len(corr_a)
    partner_b = partner_b if partner_b is not None else [0] * len(corr_b)
    return {**_base(population, a, b), "n_samples": 100, "n_a": len(corr_a), "n_b": len(corr_b),
            "correlation_a": np.array(corr_a, dtype=float), "partner_a": partner_a,
            "correlation_b": np.array(corr_b, dtype=float), "partner_b": partner_b, "status": "ok"}


def test_universal_neurons_beat_both_nulls_by_the_margin_in_most_other_seeds(local_store):
    _record(local_store, measures=("max_match", "neuron_corr"))
    nan = float("nan")
    rows = [  # three trained models of two neurons each; neuron 1 of m1 is flat (NaN)
        _neurons_row("trained", "m0", "m1", [0.9, 0.5], [0.9, nan], partner_b=[0, -1]),
        _neurons_row("trained", "m0", "m2", [0.9, 0.3], [0.7, 0.3]),
        _neurons_row("trained", "m1", "m2", [0.8, nan], [0.85, 0.65], partner_a=[0, -1]),
        _neurons_row("permuted", "m0", "m1", [0.75, 0.1], [0.1, nan], partner_b=[0, -1]),
        _neurons_row("untrained", "u0", "u1", [0.5, 0.4], [0.6, 0.5]),  # the layer's untrained mean: 0.5
    ]
    with TableWriter(local_store) as writer:
        writer.add("neurons", rows)
    neurons = query(local_store, "SELECT * FROM neurons WHERE population = 'trained' ORDER BY model, partner_model, "
                                 "neuron")
    assert len(neurons) == 12
    assert neurons["correlation"].isna().sum() == 2 and neurons["partner_neuron"].isna().sum() == 2
    got = query(local_store, "SELECT model, neuron, others, beats, universal FROM universal_neurons() ORDER BY ALL")
    # m0/0: 0.9 vs m1 (permuted 0.75 + 0.1 = 0.85: beats), 0.9 vs m2 (0.5 + 0.1: beats) → 2 of 2: universal
    # m0/1: 0.5 vs m1 (0.6 needed), 0.3 vs m2: 0 of 2; m1/0: 0.9 vs m0 (0.6), 0.8 vs m2: 2 of 2
    # m1/1: flat; m2/0: 0.7 vs m0, 0.85 vs m1: 2 of 2; m2/1: 0.3, 0.65: 1 of 2 (not more than half)
    assert got.values.tolist() == [["m0", 0, 2, 2, True], ["m0", 1, 2, 0, False], ["m1", 0, 2, 2, True],
                                   ["m1", 1, 2, 0, False], ["m2", 0, 2, 2, True], ["m2", 1, 2, 1, False]]
    loose = query(local_store, "SELECT model, neuron FROM universal_neurons(margin := 0.0, most := 0.4) "
                               "WHERE universal ORDER BY ALL")
    assert loose.values.tolist() == [["m0", 0], ["m1", 0], ["m2", 0], ["m2", 1]]
    for call, message in (("universal_neurons(margin := 2)", "universal_neurons: margin must be a number in [0, 1]"),
                          ("universal_neurons(most := 1)", "universal_neurons: most must be a number in [0, 1)")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            query(local_store, f"SELECT count(*) FROM {call}")
