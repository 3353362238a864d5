"""The bootstrap over models: seeded, its weights as documented, and covering the true mean on synthetic populations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from raymatch.results.uncertainty import BOOTSTRAP_COLUMNS, bootstrap_table, model_bootstrap, pair_matrix


def _population(seed: int, n_models: int, mu: float = 0.5, model_sd: float = 0.05, noise_sd: float = 0.05):
    """Pair similarity = mu + u_a + u_b + noise: model effects shared by every pair of a model (true mean mu)."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.0, model_sd, n_models)
    pairs = list(itertools.combinations(range(n_models), 2))
    values = [mu + effects[a] + effects[b] + rng.normal(0.0, noise_sd) for a, b in pairs]
    return [f"m{a}" for a, _ in pairs], [f"m{b}" for _, b in pairs], values


def test_interval_covers_the_true_mean_in_most_trials():
    covered = []
    for seed in range(100):
        interval = model_bootstrap(*_population(seed, n_models=10), n_boot=400, seed=seed)
        covered.append(interval.low <= 0.5 <= interval.high)
    assert np.mean(covered) >= 0.88


def test_resampling_pairs_would_be_too_narrow():
    """The reason for resampling models: with model effects, pairs are not independent."""
    a, b, values = _population(3, n_models=10, noise_sd=0.0)
    by_models = model_bootstrap(a, b, values, n_boot=1000, seed=0)
    rng = np.random.default_rng(0)
    pair_means = [np.mean(rng.choice(values, len(values))) for _ in range(1000)]
    assert np.subtract(*np.quantile(pair_means, [0.975, 0.025])) < 0.6 * (by_models.high - by_models.low)


def test_seeded_recorded_and_weights_of_repeated_draws():
    a, b, values = _population(1, n_models=5)
    first, again = model_bootstrap(a, b, values, seed=7, n_boot=300), model_bootstrap(a, b, values, seed=7, n_boot=300)
    assert first == again and (first.seed, first.n_boot, first.level) == (7, 300, 0.95)
    assert first.mean == pytest.approx(np.mean(values)) and (first.n_models, first.n_pairs) == (5, 10)
    assert model_bootstrap(a, b, values, seed=8, n_boot=300) != first
    # a model drawn twice weighs twice in each of its pairs; two draws of one model make no pair
    _, matrix = pair_matrix(a, b, values)
    counts = np.array([2.0, 0.0, 1.0, 0.0, 2.0])
    pairs = [(i, j) for i, j in itertools.combinations(range(5), 2)]
    total = sum(counts[i] * counts[j] * matrix[i, j] for i, j in pairs)
    draws = [index for index, count in enumerate(counts) for _ in range(int(count))]
    distinct = [matrix[i, j] for x, y in itertools.combinations(range(len(draws)), 2)
                for i, j in [(draws[x], draws[y])] if i != j]
    assert np.mean(distinct) == pytest.approx(total / sum(counts[i] * counts[j] for i, j in pairs))


def test_reference_pairs_only_and_degenerate_inputs():
    # pairs: reference (a star): resamples without the reference have no pair and are drawn again
    interval = model_bootstrap(["r"] * 4, ["m1", "m2", "m3", "m4"], [0.2, 0.4, 0.6, 0.8], n_boot=200, seed=0)
    assert interval.redrawn > 0 and 0.2 <= interval.low <= interval.high <= 0.8
    single = model_bootstrap(["a"], ["b"], [0.3])
    assert single.mean == 0.3 and single.low == pytest.approx(0.3) and single.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="listed twice"):
        model_bootstrap(["a", "b"], ["b", "a"], [0.1, 0.2])
    with pytest.raises(ValueError, match="paired with itself"):
        model_bootstrap(["a"], ["a"], [0.1])
    with pytest.raises(ValueError, match="n_boot"):
        model_bootstrap(["a"], ["b"], [0.1], n_boot=0)


def test_bootstrap_table_averages_repeats_and_records_seed():
    a, b, values = _population(2, n_models=4)
    rows = []
    for population, shift in (("trained", 0.0), ("untrained", -0.3)):
        for eps in (0.5, 0.25):
            for repeat in (0, 1):
                rows += [{"study": "s", "population": population, "layer": "conv1", "eps": eps, "repeat": repeat,
                          "model_a": x, "model_b": y, "similarity": v + shift + (0.01 if repeat else -0.01),
                          "status": "ok"} for x, y, v in zip(a, b, values, strict=True)]
    rows.append({**rows[0], "status": "failed", "similarity": None})
    table = bootstrap_table(pd.DataFrame(rows), n_boot=100, seed=3)
    assert table.columns.tolist() == BOOTSTRAP_COLUMNS
    assert table[["population", "eps"]].values.tolist() == [["trained", 0.25], ["trained", 0.5],
                                                            ["untrained", 0.25], ["untrained", 0.5]]
    assert table["similarity_mean"].tolist() == pytest.approx([np.mean(values)] * 2 + [np.mean(values) - 0.3] * 2)
    assert (table["n_models"] == 4).all() and (table["n_pairs"] == 6).all()
    assert (table["seed"] == 3).all() and (table["n_boot"] == 100).all()
    assert (table["ci_low"] <= table["similarity_mean"]).all() and (table["similarity_mean"] <= table["ci_high"]).all()
