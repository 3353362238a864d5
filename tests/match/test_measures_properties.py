"""Property tests of the standard measures, each named after the property it checks (docs/measures.md).

Invariances: neuron permutation (all), orthogonal transforms (CKA, CCA, SVCCA, Procrustes), any invertible map
(CCA), isotropic scaling (all); identical layers are fully similar; every measure is symmetric in (A, B); values
lie in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from raymatch.match import MEASURES, factor, neuron_correlations, pair_measures

from .test_cka import offset
from .test_properties import PROPERTIES, layer_pairs, random_orthogonal

TOL = 1e-9
ROTATION_INVARIANT = ("cka", "cca", "svcca", "procrustes")


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


def assert_same(got: dict, want: dict, names=MEASURES, tol=TOL, context=""):
    for name in names:
        assert abs(got[name] - want[name]) <= tol, f"{name}: {got[name]!r} != {want[name]!r} {context}"


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_permuting_neurons_changes_no_measure_and_permutes_the_partners(pair, seed, data):
    A, B = offset(pair[0], seed), pair[1]
    pa = np.array(data.draw(st.permutations(range(A.shape[1])), label="perm_a"))
    pb = np.array(data.draw(st.permutations(range(B.shape[1])), label="perm_b"))
    assert_same(pair_measures(A[:, pa], B[:, pb]), pair_measures(A, B))
    got, want = neuron_correlations(A[:, pa], B[:, pb]), neuron_correlations(A, B)
    np.testing.assert_allclose(got.best_a, want.best_a[pa], rtol=0, atol=TOL)
    np.testing.assert_allclose(got.best_b, want.best_b[pb], rtol=0, atol=TOL)


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), shift=st.floats(-5.0, 5.0))
def test_rotating_neurons_changes_no_rotation_invariant_measure(pair, seed, shift):
    A, B = pair
    rng = np.random.default_rng(seed)
    Qa, Qb = random_orthogonal(rng, A.shape[1]), random_orthogonal(rng, B.shape[1])
    assert_same(pair_measures(A @ Qa + shift, B @ Qb), pair_measures(A, B), ROTATION_INVARIANT)


@PROPERTIES
@given(pair=layer_pairs(dead=False), seed=st.integers(0, 2**32 - 1))
def test_any_invertible_map_of_the_neurons_changes_no_cca(pair, seed):
    A, B = pair
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((A.shape[1], A.shape[1])) + 3.0 * np.eye(A.shape[1])
    assert_same(pair_measures(A @ mix, B, measures=["cca"]), pair_measures(A, B, measures=["cca"]), ["cca"], 1e-7)


@PROPERTIES
@given(pair=layer_pairs(), scale_a=st.sampled_from([1e-3, 0.5, 7.0, 1e3]),
       scale_b=st.sampled_from([1e-3, -1.0, 2.0, 1e3]))
def test_isotropic_scaling_changes_no_measure(pair, scale_a, scale_b):
    A, B = pair
    assert_same(pair_measures(scale_a * A, scale_b * B), pair_measures(A, B))


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), center=st.booleans())
def test_a_layer_is_fully_similar_to_itself(pair, seed, center):
    A = offset(pair[0], seed)
    values = pair_measures(factor(A, center=center), factor(A.copy(), center=center))
    for name in MEASURES:
        want = 0.0 if name == "procrustes" else 1.0
        assert abs(values[name] - want) <= TOL, f"{name}: {values[name]!r}"
    nc = neuron_correlations(A, A)
    kept = nc.partner_a >= 0
    np.testing.assert_allclose(nc.best_a[kept], 1.0, atol=TOL)


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1))
def test_every_measure_is_symmetric(pair, seed):
    A, B = offset(pair[0], seed), pair[1]
    assert_same(pair_measures(B, A), pair_measures(A, B))
    ab, ba = neuron_correlations(A, B), neuron_correlations(B, A)
    np.testing.assert_allclose(ab.best_a, ba.best_b, rtol=0, atol=TOL)
    np.testing.assert_allclose(ab.best_b, ba.best_a, rtol=0, atol=TOL)


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1))
def test_every_measure_lies_in_the_unit_interval(pair, seed):
    A, B = offset(pair[0], seed), pair[1]
    for name, value in pair_measures(A, B).items():
        assert 0.0 <= value <= 1.0, f"{name}: {value!r}"
