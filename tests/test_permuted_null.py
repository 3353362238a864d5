"""The permuted-row null: model b's rows permuted by a fixed seed, from the study file to the report."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

import raymatch
from raymatch.cli import main
from raymatch.engine.tasks import PERMUTATION_SEED, MatchTask, run_curve_task
from raymatch.match import factor, match_curve
from raymatch.match.factor import permute_rows, row_permutation
from raymatch.results import load, query
from raymatch.store import ActivationKey, read_activations, write_activations
from raymatch.study import Study, StudyError

from .extract.helpers import put_checkpoint


def test_permuting_a_factor_is_factoring_the_permuted_matrix():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((70, 5))
    B = np.hstack([A[:, :2] @ rng.standard_normal((2, 2)), rng.standard_normal((70, 3))])
    B[:, 3] = 0.0  # a dead neuron
    B[:, 4] = B[:, 2] * 2.0  # a rank deficiency
    rows = row_permutation(70, PERMUTATION_SEED)
    assert np.array_equal(rows, row_permutation(70, PERMUTATION_SEED)) and sorted(rows) == list(range(70))
    fast, plain = match_curve(factor(A), permute_rows(factor(B), rows)), match_curve(A, B[rows])
    np.testing.assert_allclose(fast.critical_a, plain.critical_a, atol=1e-10)
    np.testing.assert_allclose(fast.critical_b, plain.critical_b, atol=1e-10)
    with pytest.raises(ValueError, match="permutation"):
        permute_rows(factor(B), np.zeros(70, dtype=int))


def _planted(n_samples: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two layers sharing a 4-dimensional signal (mixed differently, little noise), each with 3 own neurons."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n_samples, 4))
    A = np.hstack([signal @ rng.standard_normal((4, 4)), rng.standard_normal((n_samples, 3))])
    B = np.hstack([signal @ rng.standard_normal((4, 4)) + 0.01 * rng.standard_normal((n_samples, 4)),
                   rng.standard_normal((n_samples, 3))])
    return A.astype(np.float32), B.astype(np.float32)


def test_the_permuted_null_sits_near_zero_where_the_trained_pair_does_not(local_store):
    A, B = _planted()
    for model, matrix in (("ma", A), ("mb", B)):
        write_activations(local_store, ActivationKey("probe", model, "fc"), matrix)
    task = MatchTask("planted", "h", "probe", "fc", 0, (("ma", "mb"),))
    (trained,) = run_curve_task(local_store, task)
    (permuted,) = run_curve_task(local_store, dataclasses.replace(task, population="permuted",
                                                                  permute_b_seed=PERMUTATION_SEED))
    assert permuted["population"] == "permuted" and permuted["status"] == "ok"
    # the stored row is match_curve of (A, B[perm]), computed here from the stored activations
    stored_a = read_activations(local_store, ActivationKey("probe", "ma", "fc"))
    stored_b = read_activations(local_store, ActivationKey("probe", "mb", "fc"))
    plain = match_curve(stored_a.astype(np.float64), stored_b.astype(np.float64)[row_permutation(200, 0)])
    np.testing.assert_allclose(permuted["critical_a"], plain.critical_a, atol=1e-9)
    np.testing.assert_allclose(permuted["critical_b"], plain.critical_b, atol=1e-9)
    assert permuted["chance"] == trained["chance"] == pytest.approx(np.sqrt(1 - 7 / 200))

    def similarity(row, eps):
        return (np.sum(np.asarray(row["critical_a"]) <= eps) + np.sum(np.asarray(row["critical_b"]) <= eps)) / 14

    for eps in (0.1, 0.3, 0.5):  # well below the chance ratio 0.98
        assert similarity(trained, eps) >= 8 / 14  # the 4 + 4 shared neurons
        assert similarity(permuted, eps) == 0.0
        assert raymatch.max_match(stored_a, stored_b[row_permutation(200, 0)], eps).similarity == 0.0


@pytest.mark.parametrize(("given", "stored"), [(True, ("untrained",)), (False, ()), ([], ()),
                                               (["permuted"], ("permuted",)),
                                               (["permuted", "untrained"], ("untrained", "permuted"))])
def test_null_baseline_values(example_study, given, stored):
    study = example_study.replace(null_baseline=given)
    assert study.null_baseline == stored and study.config_hash == example_study.config_hash
    assert Study.from_dict(study.to_dict()).null_baseline == stored


@pytest.mark.parametrize(("given", "message"), [
    ("untrained", "null_baseline: must be true, false or a list"),
    (["shuffled"], r"null_baseline: \[0\]: must be one of untrained, permuted; got 'shuffled'"),
    (["permuted", "permuted"], "null_baseline: must list each baseline once"),
    (1, "null_baseline: must be true, false or a list"),
])
def test_bad_null_baseline_is_one_clear_error(example_study, given, message):
    with pytest.raises(StudyError, match=message):
        example_study.replace(null_baseline=given)


@pytest.fixture
def example_study(tmp_path):
    return Study.from_dict({
        "name": "nulls", "store": {"uri": f"file://{tmp_path}/store"},
        "population": {"checkpoints": ["checkpoints/seed0.safetensors", "checkpoints/seed1.safetensors"]},
        "architecture": {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 120, "seed": 0, "rows": "all"},
        "layers": ["relu1"], "eps": [0.25]})


STUDY = """
name: nulls-e2e
store: {{uri: "{uri}"}}
population:
  checkpoints: [checkpoints/seed10.safetensors, checkpoints/seed11.safetensors, checkpoints/seed12.safetensors]
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 120, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.15, 0.25, 0.5]
cka: false
null_baseline: [untrained, permuted]
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_study_with_both_nulls_runs_queries_and_reports(local_store, tmp_path, capsys):
    for seed in (10, 11, 12):  # not the untrained null's initialisations (seeds 0, 1, 2)
        put_checkpoint(local_store, seed)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}"))
    assert main(["run", str(study_file), "--quiet"]) == 0
    capsys.readouterr()
    curves = load(local_store, "curves")
    assert curves.groupby("population").size().to_dict() == {"permuted": 6, "trained": 6, "untrained": 6}
    assert set(curves["status"]) == {"ok"}
    models = load(local_store, "models")
    assert sorted(models["population"]) == ["trained"] * 3 + ["untrained"] * 3  # the permuted null has none
    (probe,) = {key.split("/")[1] for key in local_store.list("activations")}
    matrices = {(model, layer): read_activations(local_store, ActivationKey(probe, model, layer)).astype(np.float64)
                for model in set(curves["model_a"]) | set(curves["model_b"]) for layer in ("relu1", "relu3")}
    trained = curves[curves["population"] == "trained"]
    for row in curves[curves["population"] == "permuted"].itertuples():
        B = matrices[row.model_b, row.layer]
        plain = match_curve(matrices[row.model_a, row.layer], B[row_permutation(B.shape[0], PERMUTATION_SEED)])
        np.testing.assert_allclose(row.critical_a, plain.critical_a, atol=1e-7)
        np.testing.assert_allclose(row.critical_b, plain.critical_b, atol=1e-7)
        same = (trained.model_a == row.model_a) & (trained.model_b == row.model_b) & (trained.layer == row.layer)
        assert same.any()  # the same pairs as the trained population

    # universality against max_match on the stored activations (trained population, one layer)
    shares = query(local_store, "SELECT * FROM universality(0.3) WHERE population = 'trained' AND layer = 'relu3'")
    ids = sorted(set(trained["model_a"]) | set(trained["model_b"]))
    expected = {}
    for a, b in itertools.combinations(ids, 2):
        match = raymatch.max_match(matrices[a, "relu3"], matrices[b, "relu3"], 0.3)
        for model, neurons in ((a, match.a), (b, match.b)):
            for neuron in neurons:
                expected[model, int(neuron)] = expected.get((model, int(neuron)), 0) + 1
    assert len(shares) == sum(matrices[m, "relu3"].shape[1] for m in ids) and set(shares["others"]) == {2}
    for row in shares.itertuples():
        assert row.matched_in == expected.get((row.model, row.neuron), 0)
    assert main(["query", local_store.root, "SELECT population, count_if(share = 1) AS n FROM universality(0.3) "
                 "WHERE layer = 'relu3' GROUP BY ALL ORDER BY ALL", "--format", "json"]) == 0
    by_population = {row["population"]: row["n"] for row in json.loads(capsys.readouterr().out)}
    assert by_population["trained"] == sum(count == 2 for count in expected.values())

    out_dir = tmp_path / "report"
    assert main(["report", local_store.root, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "(perm " in printed and "(null " in printed
    assert {"eps_curve.png", "universality.png"} <= {path.name for path in out_dir.iterdir()}
    summary = (out_dir / "summary.md").read_text()
    assert "interval over models" in summary and "shared by every other model" in summary
