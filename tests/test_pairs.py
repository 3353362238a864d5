"""Pair tasks: blocked reads, one ε-curve row per pair equal to match_curve on the stored activations, failed rows."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import raymatch
from raymatch.engine import tasks as pairs_module
from raymatch.engine.tasks import (
    CURVE_KEYS,
    FactorTask,
    SimpleTask,
    block_tasks,
    chance_level,
    factor_and_store,
    match_task,
    run_curve_task,
    simple_task,
)
from raymatch.match import exact_tolerance, linear_cka
from raymatch.match.synthetic import relu_pair
from raymatch.store import ActivationKey, read_activations, write_activations


def stored_population(store, n_models, probe="probe0", layer="relu1", dead=False):
    models = [f"model{i}" for i in range(n_models)]
    layers = relu_pair(400, 24, 24, seed=100, shared_fraction=0.5)  # two layers with planted shared groups
    rng = np.random.default_rng(7)
    for i, model in enumerate(models):
        noisy = layers[i % 2] + 0.05 * np.maximum(rng.standard_normal((400, 24)), 0)
        if dead and i == 0:
            noisy[:, [3, 17]] = 0.0
        write_activations(store, ActivationKey(probe, model, layer), noisy.astype(np.float32))
    return models


def all_pairs(models):
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]


@pytest.mark.parametrize("n_models,block", [(5, 2), (8, 3), (6, 6), (4, 1)])
def test_each_matrix_is_read_about_m_over_block_times(local_store, monkeypatch, n_models, block):
    models = stored_population(local_store, n_models)
    reads = Counter()
    real = pairs_module.read_factor_inputs

    def counting(store, key, center=False):
        reads[key.model_id] += 1
        return real(store, key, center=center)

    monkeypatch.setattr(pairs_module, "read_factor_inputs", counting)
    tasks = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=block)
    rows = [row for task in tasks for row in match_task(local_store, task)["rows"]]
    assert len(rows) == len(all_pairs(models))  # one row per pair, whatever the ε grid
    assert {(r["model_a"], r["model_b"]) for r in rows} == set(all_pairs(models))
    assert max(reads.values()) <= math.ceil(n_models / block)
    assert len({task.task_id for task in tasks}) == len(tasks)


def test_curve_rows_equal_match_curve_and_cka_on_the_stored_activations(store):
    models = stored_population(store, 3, dead=True)
    for model in models:  # the factor stage first, as in a run: the pair task rebuilds from what it stored
        assert factor_and_store(store, FactorTask(ActivationKey("probe0", model, "relu1")))["rank"] > 0
    (task,) = block_tasks("study1", "cfg", "probe0", "relu1", 0, all_pairs(models), block=4)
    result = match_task(store, task)
    assert result["failed"] == 0 and set(result) >= {"rows", "match_seconds", "cka_seconds", "factor_seconds"}
    for row in result["rows"]:
        assert tuple(row) == CURVE_KEYS
        A = read_activations(store, ActivationKey("probe0", row["model_a"], "relu1"))
        B = read_activations(store, ActivationKey("probe0", row["model_b"], "relu1"))
        want = raymatch.match_curve(A, B)
        assert row["status"] == "ok" and row["error"] is None
        assert all(type(x) is float for x in row["critical_a"] + row["critical_b"])
        np.testing.assert_allclose(row["critical_a"], want.critical_a, rtol=0, atol=1e-9)
        np.testing.assert_allclose(row["critical_b"], want.critical_b, rtol=0, atol=1e-9)
        assert (row["n_samples"], row["n_a"], row["n_b"]) == (400, 24, 24)
        assert (row["dead_a"], row["dead_b"]) == (want.dead_a.size, want.dead_b.size)
        assert row["exact_tol"] == exact_tolerance(np.float32) == 2.0 ** -13  # float32 activations: 1024 epsilons
        assert row["chance"] == pytest.approx(chance_level(24, 400))
        assert row["max_epsilon"] == pytest.approx(want.max_epsilon, abs=1e-9)
        assert row["cka"] == pytest.approx(linear_cka(A, B), abs=1e-9)
        assert row["seconds"] > 0
        assert (row["study"], row["config_hash"], row["layer"], row["repeat"], row["probe_id"]) == (
            "study1", "cfg", "relu1", 0, "probe0")
        assert row["code_version"] == raymatch.__version__
    dead_row = next(row for row in result["rows"] if row["model_a"] == "model0")
    assert dead_row["dead_a"] == 2 and math.isinf(dead_row["critical_a"][3]) and math.isinf(dead_row["critical_a"][17])
    # the maximum match at any ε follows from the row
    for row in result["rows"]:
        A = read_activations(store, ActivationKey("probe0", row["model_a"], "relu1"))
        B = read_activations(store, ActivationKey("probe0", row["model_b"], "relu1"))
        for eps in (0.0, 0.22, 0.5):
            got = [i for i, c in enumerate(row["critical_a"]) if c <= max(eps, row["exact_tol"])]
            assert got == raymatch.max_match(A, B, eps).a.tolist()


def test_cka_is_none_when_the_task_asks_for_none(local_store):
    models = stored_population(local_store, 2)
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=4, cka=False)
    (row,) = run_curve_task(local_store, task)
    assert row["status"] == "ok" and row["cka"] is None and row["critical_a"]


def test_a_missing_matrix_becomes_failed_rows_and_the_other_pairs_complete(local_store):
    models = stored_population(local_store, 3)
    pairs = [*all_pairs(models), ("model0", "ghost")]
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, pairs, block=8)
    result = match_task(local_store, task)
    rows = result["rows"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert result["failed"] == 1 and len(failed) == 1 and failed[0]["model_b"] == "ghost"
    assert "ghost" in failed[0]["error"]
    assert tuple(failed[0]) == CURVE_KEYS
    measured = ("n_samples", "n_a", "n_b", "dead_a", "dead_b", "critical_a", "critical_b", "max_epsilon", "chance",
                "cka")
    assert all(failed[0][key] is None for key in measured)
    assert (failed[0]["study"], failed[0]["probe_id"], failed[0]["code_version"]) == (
        "s", "probe0", raymatch.__version__)
    assert sum(r["status"] == "ok" for r in rows) == 3


@pytest.mark.parametrize("failing", ["read_factor_inputs", "write_factor"])  # reading a matrix, storing a factor
def test_a_failing_store_fails_the_task(local_store, monkeypatch, failing):
    from raymatch.store import StoreError

    models = stored_population(local_store, 3)
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=4)

    def unreachable(*args, **kwargs):
        raise StoreError("store unreachable")

    monkeypatch.setattr(pairs_module, failing, unreachable)
    with pytest.raises(StoreError, match="store unreachable"):
        match_task(local_store, task)


def test_reads_stay_one_matrix_ahead_or_as_many_as_the_byte_budget_holds(local_store, monkeypatch):
    models = stored_population(local_store, 8)  # 400 × 24 float32: 38,400 bytes each
    keys = {model: ActivationKey("probe0", model, "relu1") for model in models}
    real, started = pairs_module.read_factor_inputs, []

    def tracked(store, key, center=False):
        started.append(key.model_id)
        return real(store, key, center=center)

    monkeypatch.setattr(pairs_module, "read_factor_inputs", tracked)
    real_factor = pairs_module.factor_from_inputs
    in_flight = []

    def factoring(key, *args, **kwargs):  # reads started but not consumed when a matrix is factored
        in_flight.append(len(started) - models.index(key.model_id) - 1)
        return real_factor(key, *args, **kwargs)

    monkeypatch.setattr(pairs_module, "factor_from_inputs", factoring)
    for budget, most in ((0, 1), (3 * 38_400, 3), (10**12, pairs_module.READ_AHEAD_MATRICES)):
        started.clear(), in_flight.clear()
        pairs_module.load_factors(local_store, keys, center=False, read_ahead_bytes=budget)
        assert sorted(started) == sorted(models) and max(in_flight) == most, (budget, in_flight)


@pytest.mark.parametrize("read_ahead_bytes", [0, 2 * 400 * 24 * 4, 10**12])  # 1, 2 and 4 matrices ahead
def test_read_ahead_gives_the_same_factors_and_stores_each_once(local_store, read_ahead_bytes):
    models = stored_population(local_store, 7, dead=True)
    keys = {model: ActivationKey("probe0", model, "relu1") for model in models}
    factors, tolerances, errors = pairs_module.load_factors(local_store, keys, center=False,
                                                            read_ahead_bytes=read_ahead_bytes)
    assert not errors and list(factors) == models
    again, _, _ = pairs_module.load_factors(local_store, keys, center=False,  # from the stored factors
                                            read_ahead_bytes=read_ahead_bytes)
    for model, key in keys.items():
        assert local_store.exists(f"{pairs_module.factor_prefix(key, False)}/_manifest.json")
        np.testing.assert_array_equal(factors[model].basis, again[model].basis)
        assert tolerances[model] == exact_tolerance(np.float32)


def test_task_ids_are_deterministic_and_blocks_must_be_positive():
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    first = block_tasks("s", "h", "p", "relu", 0, pairs, block=2)
    again = block_tasks("s", "h", "p", "relu", 0, pairs, block=2)
    assert [t.task_id for t in first] == [t.task_id for t in again]
    assert block_tasks("s", "h", "p", "relu", 1, pairs, block=2)[0].task_id != first[0].task_id
    assert block_tasks("s", "h", "p", "relu", 0, pairs, block=2, cka=False)[0].task_id != first[0].task_id
    with pytest.raises(ValueError, match="block must be a positive integer"):
        block_tasks("s", "h", "p", "relu", 0, pairs, block=0)


def test_simple_task_returns_its_rows(local_store):
    models = stored_population(local_store, 2)
    task = SimpleTask("s", "h", "probe0", "relu1", 0, (models[0], models[1]), 0.6)
    rows = simple_task(local_store, task)["rows"]
    A = read_activations(local_store, ActivationKey("probe0", models[0], "relu1"))
    B = read_activations(local_store, ActivationKey("probe0", models[1], "relu1"))
    want = raymatch.simple_matches(A, B, 0.6)
    assert [(r["neurons_a"], r["neurons_b"]) for r in rows] == [(m.a.tolist(), m.b.tolist()) for m in want]
    assert rows and all(r["probe_id"] == "probe0" and r["eps"] == 0.6 for r in rows)


def test_a_pair_task_imports_no_torch():
    code = ("import sys; import raymatch.engine.tasks; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_chance_level():
    assert chance_level(100, 10_000) == pytest.approx(np.sqrt(0.99))
    assert chance_level(500, 400) == 0.0


def test_the_batched_kernel_gives_the_rows_of_the_one_pair_kernel(local_store):
    """Issue 23: the pair tasks' batched kernel against the kernel before it, on the same stored matrices (dead
    neurons, the permuted-row null, pairs between two blocks and within one)."""
    import dataclasses

    models = stored_population(local_store, 7, dead=True)
    for permute in (None, 0):
        for task in block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=3, permute_b_seed=permute):
            batched = run_curve_task(local_store, task)
            one_pair = run_curve_task(local_store, dataclasses.replace(task, kernel="one_pair"))
            assert [row["status"] for row in batched] == ["ok"] * len(task.pairs)
            for mine, theirs in zip(batched, one_pair, strict=True):
                assert (mine["model_a"], mine["model_b"]) == (theirs["model_a"], theirs["model_b"])
                for key in ("critical_a", "critical_b"):
                    np.testing.assert_allclose(mine[key], theirs[key], rtol=0, atol=1e-12)
                for key in ("max_epsilon", "cka", "chance"):
                    assert mine[key] == pytest.approx(theirs[key], abs=1e-12)
                assert {k: v for k, v in mine.items() if k not in ("critical_a", "critical_b", "max_epsilon",
                                                                   "cka", "seconds")} == {
                    k: v for k, v in theirs.items() if k not in ("critical_a", "critical_b", "max_epsilon", "cka",
                                                                 "seconds")}
                assert mine["seconds"] > 0


def test_a_block_that_raises_is_computed_a_pair_at_a_time(local_store, monkeypatch):
    """The batched call failing for the block: each pair alone, and the one pair that fails alone is one failed row."""
    import raymatch.match as match_module

    models = stored_population(local_store, 5)
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=8)
    want = run_curve_task(local_store, task)

    def broken(*args, **kwargs):
        raise FloatingPointError("the block failed")

    real, first = match_module.match_curve, []

    def failing_for_model0(fa, fb, **kwargs):  # model a of the first pair is model0
        first[:] = first or [fa]
        if fa is first[0]:
            raise ValueError("this pair failed")
        return real(fa, fb, **kwargs)

    monkeypatch.setattr(match_module, "match_curves", broken)
    rows = run_curve_task(local_store, task)
    assert [row["status"] for row in rows] == ["ok"] * len(task.pairs)
    for mine, theirs in zip(rows, want, strict=True):
        np.testing.assert_allclose(mine["critical_a"], theirs["critical_a"], rtol=0, atol=1e-12)
    monkeypatch.setattr(match_module, "match_curve", failing_for_model0)
    rows = run_curve_task(local_store, task)
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 4 and all(row["error"] == "ValueError: this pair failed" for row in failed)  # model0's
    assert {row["model_a"] for row in failed} == {"model0"} and sum(row["status"] == "ok" for row in rows) == 6
