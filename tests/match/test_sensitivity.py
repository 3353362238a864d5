"""Ding et al.'s tests of what each measure sees: principal-component deletion, depth and specificity statistics."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from raymatch.match import match_curve, reference_measures
from raymatch.match.sensitivity import (
    delete_components,
    depth_test,
    dissimilarity,
    match_key,
    measure_table,
    pc_deletion,
    specificity_test,
)
from raymatch.match.synthetic import relu_pair


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def layer():
    return relu_pair(1000, 48, 16, seed=3, dtype=np.float64)[0]


@pytest.fixture(scope="module")
def deletion(layer):
    with threadpool_limits(1, user_api="blas"):
        return pc_deletion(layer, [0, 1, 3, 8, 20, 40], eps=[0.25, 0.5])


def test_deleting_components_subtracts_the_top_of_the_svd_and_keeps_the_means(layer):
    X = layer - layer.mean(axis=0)
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    for k in (0, 5, 48):
        D = delete_components(layer, k)
        np.testing.assert_allclose(D, layer.mean(axis=0) + (u[:, k:] * s[k:]) @ vt[k:], atol=1e-10)
        low = delete_components(layer, k, from_top=False)
        np.testing.assert_allclose(low, layer.mean(axis=0) + (u[:, :48 - k] * s[:48 - k]) @ vt[:48 - k], atol=1e-10)
    with pytest.raises(ValueError, match=r"k must be in \[0, 48\]"):
        delete_components(layer, 49)


def test_deletion_values_are_each_measure_of_the_layer_against_its_deleted_copy(layer, deletion):
    assert deletion.ks.tolist() == [0, 1, 3, 8, 20, 40]
    for i, k in enumerate(deletion.ks.tolist()):
        D = delete_components(layer, k)
        assert deletion.values["cka"][i] == pytest.approx(reference_measures.linear_cka(layer, D), abs=1e-9)
        assert deletion.values["procrustes"][i] == pytest.approx(reference_measures.procrustes(layer, D), abs=1e-9)
        assert deletion.values["svcca"][i] == pytest.approx(reference_measures.svcca(layer, D), abs=1e-9)
        assert deletion.values[match_key(0.25)][i] == match_curve(layer, D).at(0.25).similarity


def test_measures_that_see_the_top_components_grow_dissimilar_with_every_deletion(deletion):
    for name in ("cka", "procrustes", "neuron_corr"):
        assert deletion.spearman[name] == 1.0, name
        assert deletion.stops_noticing[name] == 40, name  # still moving at the last k
    assert deletion.values["cka"][0] == pytest.approx(1.0) and deletion.values["procrustes"][0] == pytest.approx(0.0)
    # SVCCA misses the first deletion (the copy's kept directions lie inside the layer's), then sees the rest
    svcca = deletion.values["svcca"]
    assert svcca[1] == pytest.approx(1.0) and (np.diff(svcca[1:]) < 0).all() and deletion.spearman["svcca"] > 0.95


def test_span_measures_see_no_deletion_of_principal_components(deletion):
    for name in ("cca", "pwcca"):  # the deleted copy's span lies inside the layer's: every correlation is 1
        np.testing.assert_allclose(deletion.values[name], 1.0, atol=1e-9)
        assert np.isnan(deletion.spearman[name]) and deletion.stops_noticing[name] == 0


def test_cka_hardly_sees_the_lowest_variance_components_go(layer):
    low = pc_deletion(layer, [0, 4, 8, 16], measures=["cka", "svcca"], eps=[], from_top=False)
    cka = low.values["cka"]
    assert cka[-1] > 0.99 and (np.diff(cka) <= 1e-12).all()  # a third of the components, a sliver of the variance
    np.testing.assert_allclose(low.values["svcca"], 1.0, atol=1e-9)  # SVCCA had truncated them anyway
    assert low.stops_noticing["cka"] == 0 and low.spearman["cka"] > 0.9


def test_the_default_grid_stops_short_of_deleting_every_component(layer):
    result = pc_deletion(layer[:200, :10], measures=["cka"], eps=[])
    assert result.ks[0] == 0 and result.ks[-1] == 9
    assert (np.diff(result.ks) > 0).all()


def test_depth_test_is_the_rank_correlation_of_depth_gap_and_dissimilarity():
    rng = np.random.default_rng(0)
    gap = np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    tracks = 1.0 - 0.15 * gap + 0.01 * rng.standard_normal((3, 5, 5))  # three pairs of seeds
    blind = rng.uniform(0.4, 0.6, (3, 5, 5))
    rho = depth_test({"cka": tracks, "cca": blind, "procrustes": 0.1 * gap + 0.0})
    assert rho["cka"] > 0.95 and rho["procrustes"] == pytest.approx(1.0) and abs(rho["cca"]) < 0.3
    with_gaps = tracks.copy()
    with_gaps[0, 1, 2] = np.nan
    assert depth_test({"cka": with_gaps})["cka"] == pytest.approx(rho["cka"], abs=0.02)
    depths = [0, 1, 2, 4, 8]  # a non-uniform depth changes the gaps, not the monotone order along a row
    assert depth_test({"procrustes": np.abs(np.subtract.outer(depths, depths))}, depths)["procrustes"] == 1.0
    with pytest.raises(ValueError, match="layer × layer"):
        depth_test({"cka": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"depths must have shape \(5,\)"):
        depth_test({"cka": tracks}, depths=[0, 1])


def test_specificity_is_the_chance_that_another_seed_beats_the_next_layer():
    separated = specificity_test({"cka": [[0.9, 0.95], [0.8, 0.85]]}, {"cka": [[0.5, 0.6, 0.7], [0.4, 0.5, 0.6]]})
    assert separated == {"cka": 1.0}
    reversed_ = specificity_test({"procrustes": [[0.9, 0.8]]}, {"procrustes": [[0.1, 0.2]]})  # a distance
    assert reversed_ == {"procrustes": 0.0}
    assert specificity_test({"cca": [[0.5, 0.5]]}, {"cca": [[0.5]]}) == {"cca": 0.5}
    assert specificity_test({"cca": [[0.7, np.nan]]}, {"cca": [[0.6]]}) == {"cca": 1.0}
    with pytest.raises(ValueError, match="one row per layer"):
        specificity_test({"cka": [[0.9], [0.8]]}, {"cka": [[0.5]]})


def test_measure_table_has_one_row_per_measure_and_test(deletion):
    rows = measure_table(deletion, depth={"cka": 0.8, match_key(0.25): 0.6}, specificity={"cka": 0.9})
    assert [row["measure"] for row in rows][:3] == ["cka", "cca", "svcca"]
    assert [row["measure"] for row in rows][-2:] == [match_key(0.25), match_key(0.5)]
    cka = rows[0]
    assert cka == {"measure": "cka", "deletion_spearman": 1.0, "deletion_stops_noticing": 40, "depth_spearman": 0.8,
                   "specificity": 0.9}
    assert measure_table(depth={"cca": 0.1}) == [{"measure": "cca", "deletion_spearman": None,
                                                  "deletion_stops_noticing": None, "depth_spearman": 0.1,
                                                  "specificity": None}]
    assert dissimilarity("procrustes", 0.3) == 0.3 and dissimilarity(match_key(0.15), 0.25) == 0.75
