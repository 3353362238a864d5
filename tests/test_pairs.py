"""Pair tasks: blocked reads, and rows equal to max_match on the stored activations."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

import raymatch
from raymatch.engine import tasks as pairs_module
from raymatch.engine.tasks import block_tasks, chance_level, run_match_task
from raymatch.match.synthetic import relu_pair
from raymatch.store import ActivationKey, read_activations, write_activations

EPS = (0.15, 0.25, 0.5)


def stored_population(store, n_models, probe="probe0", layer="relu1"):
    models = [f"model{i}" for i in range(n_models)]
    layers = relu_pair(400, 24, 24, seed=100, shared_fraction=0.5)  # two layers with planted shared groups
    rng = np.random.default_rng(7)
    for i, model in enumerate(models):
        noisy = layers[i % 2] + 0.05 * np.maximum(rng.standard_normal((400, 24)), 0)
        write_activations(store, ActivationKey(probe, model, layer), noisy.astype(np.float32))
    return models


def all_pairs(models):
    return [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]


@pytest.mark.parametrize("n_models,block", [(5, 2), (8, 3), (6, 6), (4, 1)])
def test_each_matrix_is_read_about_m_over_block_times(local_store, monkeypatch, n_models, block):
    models = stored_population(local_store, n_models)
    reads = Counter()
    real = pairs_module.cached_factor

    def counting(store, key, center=False):
        reads[key.model_id] += 1
        return real(store, key, center=center)

    monkeypatch.setattr(pairs_module, "cached_factor", counting)
    tasks = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), EPS, block=block)
    rows = [row for task in tasks for row in run_match_task(local_store, task)]
    assert len(rows) == len(all_pairs(models)) * len(EPS)
    assert {(r["model_a"], r["model_b"]) for r in rows} == set(all_pairs(models))
    assert max(reads.values()) <= math.ceil(n_models / block)
    assert len({task.task_id for task in tasks}) == len(tasks)


def test_rows_equal_max_match_on_the_stored_activations(store):
    models = stored_population(store, 3)
    (task,) = block_tasks("study1", "cfg", "probe0", "relu1", 0, all_pairs(models), EPS, block=4)
    rows = run_match_task(store, task)
    for row in rows:
        A = read_activations(store, ActivationKey("probe0", row["model_a"], "relu1"))
        B = read_activations(store, ActivationKey("probe0", row["model_b"], "relu1"))
        want = raymatch.max_match(A, B, row["eps"])
        assert row["status"] == "ok" and row["error"] is None
        assert row["neurons_a"] == want.a.tolist() and row["neurons_b"] == want.b.tolist()
        assert row["similarity"] == pytest.approx(want.similarity)
        assert (row["n_samples"], row["n_a"], row["n_b"]) == (400, 24, 24)
        assert row["chance"] == pytest.approx(chance_level(24, 400))
        assert row["max_epsilon"] == pytest.approx(raymatch.match_curve(A, B).max_epsilon)
        assert (row["study"], row["config_hash"], row["layer"], row["repeat"]) == ("study1", "cfg", "relu1", 0)
    assert any(0 < row["similarity"] < 1 for row in rows)


def test_a_missing_matrix_becomes_failed_rows_and_the_other_pairs_complete(local_store):
    models = stored_population(local_store, 3)
    pairs = [*all_pairs(models), ("model0", "ghost")]
    (task,) = block_tasks("s", "h", "probe0", "relu1", 0, pairs, EPS, block=8)
    rows = run_match_task(local_store, task)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == len(EPS) and all(r["model_b"] == "ghost" for r in failed)
    assert all("ghost" in r["error"] for r in failed)
    assert sum(r["status"] == "ok" for r in rows) == 3 * len(EPS)


def test_task_ids_are_deterministic_and_blocks_must_be_positive():
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    first = block_tasks("s", "h", "p", "relu", 0, pairs, EPS, block=2)
    again = block_tasks("s", "h", "p", "relu", 0, pairs, EPS, block=2)
    assert [t.task_id for t in first] == [t.task_id for t in again]
    assert block_tasks("s", "h", "p", "relu", 1, pairs, EPS, block=2)[0].task_id != first[0].task_id
    with pytest.raises(ValueError, match="block must be a positive integer"):
        block_tasks("s", "h", "p", "relu", 0, pairs, EPS, block=0)


def test_chance_level():
    assert chance_level(100, 10_000) == pytest.approx(np.sqrt(0.99))
    assert chance_level(500, 400) == 0.0
