"""Linear CKA from factors and the shared cross product equals linear_cka on the activations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raymatch.match import compact_factor, cross_product, factor, linear_cka, linear_cka_factors, match_curve

from .test_properties import FEW, PROPERTIES, layer_pairs

TOL = 1e-9


def offset(X: np.ndarray, seed: int) -> np.ndarray:
    """Columns with non-zero means of varying size (raw factors must centre with them)."""
    return X + np.random.default_rng(seed).uniform(-2.0, 2.0, X.shape[1]) * np.abs(X).mean()


def rank_deficient(X: np.ndarray, seed: int) -> np.ndarray:
    """``X`` with dependent neurons appended: a scaled duplicate and mixes of the others."""
    rng = np.random.default_rng(seed)
    return np.hstack([X, -2.0 * X[:, [0]], X @ rng.standard_normal((X.shape[1], 2))])


def with_dead(X: np.ndarray, seed: int, tiny: bool) -> np.ndarray:
    X = X.copy()
    column = int(np.random.default_rng(seed).integers(X.shape[1]))
    X[:, column] = 1e-9 * X[:, column] if tiny else 0.0  # below DEAD_RTOL either way
    return X


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), center_a=st.booleans(), center_b=st.booleans(),
       shift=st.booleans())
def test_cka_from_factors_equals_cka_of_the_activations(pair, seed, center_a, center_b, shift):
    A, B = pair
    if shift:
        A, B = offset(A, seed), offset(B, seed + 1)
    fa, fb = factor(A, center=center_a), factor(B, center=center_b)
    want = linear_cka(A, B)
    assert abs(linear_cka_factors(fa, fb) - want) <= TOL
    assert abs(linear_cka_factors(fa, fb, cross_product(fa, fb)) - want) <= TOL
    assert abs(linear_cka_factors(fb, fa) - want) <= TOL


@FEW
@given(pair=layer_pairs(dead=False), seed=st.integers(0, 2**32 - 1), center=st.booleans(), tiny=st.booleans())
def test_cka_from_factors_of_rank_deficient_layers_with_dead_neurons(pair, seed, center, tiny):
    A, B = pair
    A = with_dead(rank_deficient(offset(A, seed), seed), seed, tiny)
    B = rank_deficient(B, seed + 1)
    fa, fb = factor(A, center=center), factor(B, center=center)
    assert fa.dead.size == 1 and fa.rank < fa.live.size
    assert abs(linear_cka_factors(fa, fb) - linear_cka(A, B)) <= TOL


@FEW
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), center=st.booleans())
def test_cka_from_rebuilt_compact_factors_equals_cka_of_the_activations(pair, seed, center):
    A, B = pair
    A = rank_deficient(offset(A, seed), seed)
    fa = compact_factor(A, center=center).rebuild(A)
    fb = compact_factor(B, center=center).rebuild(B)
    assert abs(linear_cka_factors(fa, fb) - linear_cka(A, B)) <= TOL


@pytest.mark.parametrize("center", [False, True])
def test_cka_from_factors_at_paper_sizes(center):
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((10_000, 40))
    A = np.maximum(shared @ rng.standard_normal((40, 256)) + rng.standard_normal((10_000, 256)), 0)
    B = np.maximum(shared @ rng.standard_normal((40, 128)) + 2 * rng.standard_normal((10_000, 128)), 0)
    A[:, 5] = 0.0
    fa, fb = factor(A.astype(np.float32), center=center), factor(B.astype(np.float32), center=center)
    assert abs(linear_cka_factors(fa, fb) - linear_cka(A.astype(np.float32), B.astype(np.float32))) <= TOL


def test_one_cross_product_serves_the_match_curve_and_the_cka():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((300, 12))
    B = np.hstack([A[:, :5] @ rng.standard_normal((5, 5)), rng.standard_normal((300, 6))])
    fa, fb = factor(A), factor(B)
    cross = cross_product(fa, fb)
    assert cross.shape == (fa.rank, fb.rank)
    assert match_curve(fa, fb, cross=cross) == match_curve(fa, fb)
    np.testing.assert_allclose(match_curve(fa, fb, cross=cross).critical_a, match_curve(A, B).critical_a, atol=1e-9)
    assert linear_cka_factors(fa, fb, cross) == linear_cka_factors(fa, fb)


def test_a_cross_product_of_the_wrong_shape_or_without_factors_is_rejected():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    fa, fb = factor(A), factor(B)
    with pytest.raises(ValueError, match=r"cross must have shape \(4, 3\)"):
        linear_cka_factors(fa, fb, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"cross must have shape \(4, 3\)"):
        match_curve(fa, fb, cross=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="cross= needs A and B as Factors"):
        match_curve(A, fb, cross=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same number of samples"):
        linear_cka_factors(fa, factor(rng.standard_normal((40, 3))))


def test_constant_and_all_dead_layers_have_zero_cka():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((100, 5))
    for other in (np.ones((100, 3)), np.zeros((100, 3))):
        for center in (False, True):
            assert linear_cka_factors(factor(A, center=center), factor(other, center=center)) == 0.0
            assert linear_cka(A, other) == 0.0


def test_factors_carry_norms_and_means():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((80, 6)) + 5.0
    A[:, 2] = 0.0
    for center in (False, True):
        f = factor(A, center=center)
        X = A - A.mean(axis=0) if center else A
        np.testing.assert_allclose(f.means, A.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(f.norms, np.linalg.norm(X[:, f.live], axis=0), rtol=1e-13)
        np.testing.assert_allclose(f.basis @ f.coords * f.norms, X[:, f.live], atol=1e-12)
