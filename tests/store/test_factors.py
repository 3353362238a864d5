"""Stored factors: small (no basis), rebuilt from the stored activations, the same match and CKA as factor()."""

from __future__ import annotations

import os

import numpy as np
import pytest

import raymatch
from raymatch.match import compact_factor, factor, linear_cka, linear_cka_factors, match_curve
from raymatch.match.synthetic import relu_pair
from raymatch.store import ActivationKey, cached_factor, factor_prefix, read_factor, write_activations
from raymatch.store.factors import read_compact_factor, store_factor
from raymatch.store.layout import FACTOR_VERSION, manifest_key
from tests.match.test_reference_agreement import EPS_GRID, assert_agrees, planted

PROBE = "probe0"


def stored(store, name, matrix, center=False, *, factor_stage=True):
    """Store ``matrix`` as float32 activations; return its factor as a pair task gets it, and the float32 matrix."""
    key = ActivationKey(PROBE, name, "relu1")
    matrix = np.asarray(matrix, dtype=np.float32)
    write_activations(store, key, matrix, shard_rows=128)
    if factor_stage:
        store_factor(store, key, center=center)
    return cached_factor(store, key, center=center), matrix


def rank_deficient(rows=300, seed=0):
    """14 neurons spanning 10 dimensions, exactly even in float32 (values on a 1/8 grid, small integer mixes).

    Dependencies that float32 rounding breaks (a random mix) leave directions of relative size 1e-8: real in
    float64, and the peel's accuracy on such ill-conditioned spans, not the factor's, then decides.
    """
    rng = np.random.default_rng(seed)
    A = np.maximum(np.round(8 * rng.standard_normal((rows, 10))), 0) / 8
    mix = rng.integers(-2, 3, size=(4, 2))
    return np.hstack([A, 2.0 * A[:, [0]], A[:, [1]] + A[:, [2]], A[:, :4] @ mix])


def with_dead(matrix, columns):
    matrix = np.array(matrix, dtype=np.float64)
    matrix[:, columns] = 0.0
    return matrix


def relu_layers(rows=500, n_a=30, n_b=26, seed=0):
    return relu_pair(rows, n_a, n_b, seed=seed, dtype=np.float64)


CASES = {
    "relu": lambda: relu_layers(),
    "rank-deficient": lambda: (rank_deficient(seed=1), relu_layers(300, 5, 14, seed=2)[1]),
    "dead neurons": lambda: (with_dead(relu_layers(seed=3)[0], [0, 7]), with_dead(relu_layers(seed=3)[1], [25])),
    "rank-deficient and dead": lambda: (with_dead(rank_deficient(seed=4), [5]), rank_deficient(seed=5)),
    "fewer samples than neurons": lambda: relu_layers(20, 30, 26, seed=6),
}


@pytest.mark.parametrize("center", [False, True], ids=["raw", "centered"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stored_factor_gives_the_critical_values_and_cka_of_the_array(local_store, case, center):
    A, B = CASES[case]()
    fa, A32 = stored(local_store, "a", A, center)
    fb, B32 = stored(local_store, "b", B, center)
    want = match_curve(factor(A32, center=center), factor(B32, center=center))
    got = match_curve(fa, fb)
    np.testing.assert_allclose(got.critical_a, want.critical_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.critical_b, want.critical_b, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.dead_a, want.dead_a)
    np.testing.assert_array_equal(got.dead_b, want.dead_b)
    assert abs(linear_cka_factors(fa, fb) - linear_cka(A32, B32)) <= 1e-9
    assert np.allclose(fa.basis.T @ fa.basis, np.eye(fa.rank), rtol=0, atol=1e-14)


def test_the_cases_cover_rank_deficiency_and_dead_neurons():
    A, _ = CASES["rank-deficient"]()
    small = compact_factor(A)
    assert small.singular is not None and small.rank == 10 < small.live.size == 14
    A, B = CASES["dead neurons"]()
    assert factor(A).dead.tolist() == [0, 7] and factor(B).dead.tolist() == [25]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rebuilt_factors_agree_with_the_float64_oracle(local_store, case):
    A, B = CASES[case]()
    fa, A32 = stored(local_store, "a", A)
    fb, B32 = stored(local_store, "b", B)
    A64, B64 = A32.astype(np.float64), B32.astype(np.float64)
    curve = match_curve(fa, fb)
    for eps in EPS_GRID:
        assert_agrees(A64, B64, eps, curve.at(eps))
        assert_agrees(A64, B64, eps, raymatch.max_match(fa, fb, eps))


@pytest.mark.parametrize("condition", [1e4, 1e6, 1e8])
def test_rebuilt_near_collinear_layers_agree_with_the_float64_oracle(local_store, condition):
    A, B, _, _ = planted(150, 5, 8, 8, seed=5)
    rng = np.random.default_rng(6)
    A = np.hstack([A, A[:, :3] + rng.standard_normal((150, 3)) * np.linalg.norm(A[:, :3], axis=0) / condition])
    B = np.hstack([B, B[:, 2:4] + rng.standard_normal((150, 2)) * np.linalg.norm(B[:, 2:4], axis=0) / condition])
    fa, A32 = stored(local_store, "a", A)
    fb, B32 = stored(local_store, "b", B)
    curve = match_curve(fa, fb)
    for eps in EPS_GRID:
        assert_agrees(A32.astype(np.float64), B32.astype(np.float64), eps, curve.at(eps))


def test_a_factor_made_in_the_pair_task_equals_the_stored_one_bit_for_bit(store):
    A, _ = CASES["rank-deficient and dead"]()
    made, _ = stored(store, "a", A, factor_stage=False)  # computed and stored by the pair task itself
    again = cached_factor(store, ActivationKey(PROBE, "a", "relu1"))
    read = read_factor(store, ActivationKey(PROBE, "a", "relu1"))
    for value in (again, read):
        for name in ("basis", "coords", "live", "norms", "means"):
            np.testing.assert_array_equal(getattr(value, name), getattr(made, name))


def test_the_store_keeps_the_compact_factor_exactly(store):
    A, _ = CASES["rank-deficient and dead"]()
    key = ActivationKey(PROBE, "a", "relu1")
    write_activations(store, key, A.astype(np.float32))
    manifest = store_factor(store, key)
    want = compact_factor(A.astype(np.float32))
    got = read_compact_factor(store, factor_prefix(key, False))
    assert manifest["version"] == FACTOR_VERSION == "v2" and f"/{FACTOR_VERSION}/" in factor_prefix(key, False)
    assert manifest["form"] == "svd" and manifest["rank"] == want.rank
    for name in ("coords", "singular", "live", "norms", "means"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert sorted(store.list(factor_prefix(key, False))) == [
        f"{factor_prefix(key, False)}/{name}" for name in ("_manifest.json", "columns.arrow", "coords.arrow",
                                                           "singular.arrow")]
    assert store_factor(store, key) == manifest  # stored already: nothing recomputed


def _bytes_under(root: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(root) for name in names)


@pytest.mark.slow
def test_factor_bytes_are_at_most_a_tenth_more_than_the_activations(local_store):
    rng = np.random.default_rng(0)
    matrix = np.maximum(rng.standard_normal((10_000, 512)) + 0.3 * rng.standard_normal((10_000, 1)), 0)
    key = ActivationKey(PROBE, "big", "relu1")
    write_activations(local_store, key, matrix.astype(np.float32))
    store_factor(local_store, key)
    activation_bytes = _bytes_under(local_store.path(key.prefix))
    factor_bytes = _bytes_under(local_store.path(factor_prefix(key, False)))
    float32_bytes = 10_000 * 512 * 4
    assert 0.5 * float32_bytes <= activation_bytes < float32_bytes  # LZ4 frames: ReLU zeros cost little
    assert factor_bytes <= 1.1 * activation_bytes
    assert factor_bytes <= 0.15 * float32_bytes  # the triangle: 512² float64, about a tenth


def test_a_layer_with_only_dead_neurons_round_trips(local_store):
    fa, A32 = stored(local_store, "a", np.zeros((50, 4)))
    assert fa.rank == 0 and fa.dead.tolist() == [0, 1, 2, 3]
    fb, B32 = stored(local_store, "b", relu_layers(50, 6, 6)[0])
    curve = match_curve(fa, fb)
    assert np.isinf(curve.critical_a).all() and linear_cka_factors(fa, fb) == linear_cka(A32, B32) == 0.0


def test_rebuilding_from_other_activations_is_refused():
    A, B = relu_layers()
    small = compact_factor(A)
    with pytest.raises(ValueError, match="has shape"):
        small.rebuild(A[:, :-1], name="conv3")
    with pytest.raises(ValueError, match="conv3 is not the matrix its factor was made from"):
        small.rebuild(B[:, : A.shape[1]] if B.shape[1] >= A.shape[1] else np.hstack([B, B])[:, : A.shape[1]],
                      name="conv3")


def test_a_missing_factor_or_matrix_is_a_file_not_found(local_store):
    key = ActivationKey(PROBE, "ghost", "relu1")
    with pytest.raises(FileNotFoundError):
        cached_factor(local_store, key)
    write_activations(local_store, key, np.ones((5, 2), np.float32))
    with pytest.raises(FileNotFoundError):
        read_factor(local_store, key)
    assert not local_store.exists(manifest_key(factor_prefix(key, False)))
