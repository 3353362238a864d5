"""The measures from two factors and their cross product equal the float64 oracle on the raw activations.

Random, planted (known canonical correlations, a rotated copy, noisy copies) and ReLU-like layers at the size of
the paper's tables; raw and centred factors in every combination; dead, constant, dependent neurons and more
neurons than samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from raymatch.match import (
    MEASURES,
    canonical_correlations,
    compact_factor,
    cross_product,
    factor,
    measure_counts,
    measure_pair,
    neuron_correlations,
    pair_measures,
)
from raymatch.match import reference_measures as oracle
from raymatch.match.factor import permute_rows, row_permutation
from raymatch.match.synthetic import relu_pair

from .test_cka import offset, rank_deficient, with_dead
from .test_properties import FEW, PROPERTIES, layer_pairs

TOL = 1e-9


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The oracle's SVDs of n_samples × n_neurons matrices: two BLAS threads on a busy 2-core machine crawl."""
    with threadpool_limits(1, user_api="blas"):
        yield


def oracle_measures(A, B, keep: float = 0.99) -> dict[str, float]:
    return {"cka": oracle.linear_cka(A, B), "cca": oracle.cca(A, B), "svcca": oracle.svcca(A, B, keep),
            "pwcca": oracle.pwcca(A, B), "procrustes": oracle.procrustes(A, B),
            "neuron_corr": oracle.neuron_corr(A, B)["mean"]}


def assert_neurons_agree(fa, fb, A, B, tol=TOL):
    """Best correlations equal the oracle's; partners too wherever the best is ahead of the runner-up by > tol."""
    got, want = neuron_correlations(fa, fb), oracle.neuron_corr(A, B)
    corr = np.abs(oracle.correlations(A, B)[0])
    for side, matrix in (("a", corr), ("b", corr.T)):
        best, partner = getattr(got, f"best_{side}"), getattr(got, f"partner_{side}")
        np.testing.assert_allclose(best, want[f"best_{side}"], rtol=0, atol=tol, err_msg=f"best_{side}")
        np.testing.assert_array_equal(partner < 0, want[f"partner_{side}"] < 0)
        if matrix.size and matrix.shape[1] > 1:
            top2 = np.sort(matrix, axis=1)[:, -2:]
            clear = np.flatnonzero(want[f"partner_{side}"] >= 0)[top2[:, 1] - top2[:, 0] > tol]
            np.testing.assert_array_equal(partner[clear], want[f"partner_{side}"][clear], err_msg=f"partner_{side}")
    assert abs(got.mean - want["mean"]) <= tol


def centring_tolerance(f) -> float:
    """The accuracy raymatch.match.centred states, with a margin of 100: a raw factor loses about 1e-16 · cond / √λ.

    λ is the squared sine of the angle between the constant vector and the span (read here from the basis, which
    the measures never touch); a centred factor loses nothing.
    """
    if f.centered or f.rank == 0:
        return 0.0
    ones = f.basis.T @ np.ones(f.n_samples)
    lam = max(1.0 - ones @ ones / f.n_samples, 1e-30)
    return 0.0 if lam <= 1e-10 else 1e-14 * np.linalg.cond(f.coords) / np.sqrt(lam)


def assert_agree(A, B, *, center_a=False, center_b=False, tol=TOL, fa=None, fb=None):
    fa = factor(A, center=center_a) if fa is None else fa
    fb = factor(B, center=center_b) if fb is None else fb
    tol += centring_tolerance(fa) + centring_tolerance(fb)
    got = pair_measures(fa, fb, cross_product(fa, fb))
    want = oracle_measures(A, B)
    assert list(got) == list(MEASURES)
    for name in MEASURES:
        assert abs(got[name] - want[name]) <= tol, f"{name}: {got[name]!r} against the oracle's {want[name]!r}"
    rho, rho_want = canonical_correlations(fa, fb), oracle.canonical_correlations(A, B)
    assert rho.shape == rho_want.shape
    np.testing.assert_allclose(rho, rho_want, rtol=0, atol=tol)
    assert_neurons_agree(fa, fb, A, B, tol)


def known_correlations(rng, n_samples: int, rho: list[float], n_private: int = 2):
    """Two layers whose canonical correlations are exactly ``rho`` (plus zeros), mixed and offset."""
    m = len(rho)
    raw = rng.standard_normal((n_samples, 2 * m + 2 * n_private))
    q, _ = np.linalg.qr(raw - raw.mean(axis=0))  # orthonormal, centred columns
    u, w, private = q[:, :m], q[:, m:2 * m], q[:, 2 * m:]
    v = u * rho + w * np.sqrt(1.0 - np.square(rho))
    X = np.hstack([u, private[:, :n_private]])
    Y = np.hstack([v, private[:, n_private:]])
    mix = lambda Z: Z @ rng.standard_normal((Z.shape[1], Z.shape[1])) + rng.uniform(-5, 5, Z.shape[1])  # noqa: E731
    return mix(X), mix(Y)


@PROPERTIES
@given(pair=layer_pairs(), seed=st.integers(0, 2**32 - 1), center_a=st.booleans(), center_b=st.booleans(),
       shift=st.booleans())
def test_measures_from_factors_equal_the_oracle(pair, seed, center_a, center_b, shift):
    A, B = pair
    if shift:
        A, B = offset(A, seed), offset(B, seed + 1)
    assert_agree(A, B, center_a=center_a, center_b=center_b)


@FEW
@given(pair=layer_pairs(dead=False), seed=st.integers(0, 2**32 - 1), center=st.booleans(), tiny=st.booleans())
def test_measures_of_rank_deficient_layers_with_dead_and_constant_neurons(pair, seed, center, tiny):
    A, B = pair
    A = with_dead(rank_deficient(offset(A, seed), seed), seed, tiny)
    A = np.column_stack([A, np.full(A.shape[0], 2.5)])  # constant: live when raw, flat once centred
    B = rank_deficient(B, seed + 1)
    B = np.column_stack([B, B[:, 0] - 3.0 * B[:, 1] + 7.0])  # the constant vector enters B's raw span
    fa, fb = factor(A, center=center), factor(B, center=center)
    assert fa.dead.size >= 1
    assert_agree(A, B, fa=fa, fb=fb)
    assert oracle.kept_neurons(A).size <= A.shape[1] - 2
    np.testing.assert_array_equal(neuron_correlations(fa, fb).partner_a[-1], -1)


@pytest.mark.parametrize("center", [False, True])
def test_measures_when_neurons_outnumber_samples(center):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((30, 45)) + 1.0
    B = np.hstack([A[:, :10] @ rng.standard_normal((10, 10)), rng.standard_normal((30, 25))])
    assert_agree(A, B, center_a=center, center_b=center)
    counts = measure_counts(factor(A, center=center), factor(B, center=center))
    assert counts["rank_a"] == counts["rank_b"] == 29  # the centred span of 30 samples
    assert canonical_correlations(A, B).min() > 1.0 - 1e-9  # two 29-dimensional subspaces of R^29 coincide


@pytest.mark.parametrize("center", [False, True])
def test_planted_canonical_correlations_are_recovered(center):
    rng = np.random.default_rng(2)
    A, B = known_correlations(rng, 400, [0.9, 0.6, 0.3])
    rho = canonical_correlations(factor(A, center=center), factor(B, center=center))
    np.testing.assert_allclose(rho, [0.9, 0.6, 0.3, 0.0, 0.0], atol=TOL)
    assert_agree(A, B, center_a=center, center_b=center)


def test_a_rotated_scaled_shifted_copy_is_identical_to_every_rotation_invariant_measure():
    rng = np.random.default_rng(3)
    A = np.maximum(rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8)), 0.0)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    B = 3.0 * A @ Q + 4.0
    values = pair_measures(A, B)
    for name in ("cka", "cca", "svcca", "pwcca"):
        assert abs(values[name] - 1.0) <= TOL, name
    assert values["procrustes"] <= TOL
    assert values["neuron_corr"] < 0.9  # a rotation mixes the neurons
    assert_agree(A, B)


def test_noisier_copies_are_less_similar_by_every_measure():
    rng = np.random.default_rng(4)
    A = np.maximum(rng.standard_normal((800, 10)) @ rng.standard_normal((10, 12)), 0.0)
    noise = rng.standard_normal(A.shape)
    rows = [pair_measures(A, A + level * noise) for level in (0.05, 0.3, 1.0, 3.0)]
    for name in MEASURES:
        values = [row[name] for row in rows]
        steps = np.diff(values) if name == "procrustes" else -np.diff(values)
        assert (steps > 0).all(), f"{name}: {values}"
    for level in (0.05, 1.0):
        assert_agree(A, A + level * noise, center_b=True)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("widths", [(128, 64), (64, 64)])
def test_measures_at_table_scale_on_relu_layers(center, widths):
    A, B = relu_pair(1797, *widths, seed=5)  # float32, as a store keeps activations
    A[:, 3] = 0.0
    assert_agree(A, B, center_a=center, center_b=center)


def test_measures_from_rebuilt_and_row_permuted_factors():
    A, B = relu_pair(600, 24, 16, seed=6, dtype=np.float64)
    fa = compact_factor(A).rebuild(A)
    fb = compact_factor(B, center=True).rebuild(B)
    assert_agree(A, B, fa=fa, fb=fb)
    rows = row_permutation(600, 1)
    permuted = pair_measures(fa, permute_rows(fb, rows))
    want = pair_measures(fa, factor(B[rows], center=True))
    for name in MEASURES:
        assert abs(permuted[name] - want[name]) <= TOL, name
    assert_agree(A, B[rows], fa=fa, fb=permute_rows(fb, rows))


@pytest.mark.parametrize("other", ["constant", "dead"])
def test_a_layer_without_kept_neurons_is_unrelated_to_everything(other):
    rng = np.random.default_rng(7)
    A = rng.standard_normal((100, 5))
    B = np.full((100, 3), 2.0) if other == "constant" else np.zeros((100, 3))
    want = {"cka": 0.0, "cca": 0.0, "svcca": 0.0, "pwcca": 0.0, "procrustes": 1.0, "neuron_corr": 0.0}
    for center in (False, True):
        assert pair_measures(factor(A, center=center), factor(B, center=center)) == want
    assert oracle_measures(A, B) == want
    nc = neuron_correlations(A, B)
    assert np.isnan(nc.best_a).all() and (nc.partner_a == -1).all() and nc.assignment.shape == (0, 2)
    assert measure_counts(A, B)["kept_b"] == 0 and measure_counts(A, B)["rank_b"] == 0


def test_neuron_rows_give_every_neuron_its_partner_and_leave_flat_ones_without():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((300, 3))
    A[:, 1] = 0.0
    B = np.column_stack([-A[:, 2] + 0.1 * rng.standard_normal(300), np.full(300, 5.0), A[:, 0]])
    rows = neuron_correlations(A, B).rows()
    assert [(r["side"], r["neuron"], r["partner"]) for r in rows] == [
        ("a", 0, 2), ("a", 1, None), ("a", 2, 0), ("b", 0, 2), ("b", 1, None), ("b", 2, 0)]
    assert rows[0]["correlation"] == pytest.approx(1.0) and rows[1]["correlation"] is None
    assert rows[2]["correlation"] == pytest.approx(abs(np.corrcoef(A[:, 2], B[:, 0])[0, 1]))


def test_svcca_keeping_all_variance_is_cca_and_keeping_little_keeps_the_top_direction():
    rng = np.random.default_rng(9)
    Z = rng.standard_normal((500, 3))
    A = np.column_stack([10.0 * Z[:, 0], Z[:, 1], rng.standard_normal(500)])
    B = np.column_stack([Z[:, 0] + 0.1 * rng.standard_normal(500), 10.0 * Z[:, 2], rng.standard_normal(500)])
    assert pair_measures(A, B, svcca_keep=1.0)["svcca"] == pytest.approx(pair_measures(A, B)["cca"], abs=TOL)
    top = pair_measures(A, B, measures=["svcca"], svcca_keep=0.5)["svcca"]  # A's Z0 against B's Z2
    assert top == pytest.approx(oracle.svcca(A, B, 0.5), abs=TOL) and top < 0.1
    assert oracle.svcca(A, B, 1.0) == pytest.approx(oracle.cca(A, B), abs=TOL)


def test_bad_arguments_are_named():
    rng = np.random.default_rng(10)
    fa, fb = factor(rng.standard_normal((50, 4))), factor(rng.standard_normal((50, 3)))
    with pytest.raises(ValueError, match="unknown measure 'max_match'"):
        pair_measures(fa, fb, measures=["cka", "max_match"])
    for keep in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=r"svcca_keep must be in \(0, 1\]"):
            pair_measures(fa, fb, svcca_keep=keep)
    with pytest.raises(ValueError, match=r"cross must have shape \(4, 3\)"):
        pair_measures(fa, fb, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same number of samples"):
        pair_measures(fa, factor(rng.standard_normal((40, 3))))


def test_measure_pair_gives_the_values_and_the_neuron_rows_of_one_computation():
    A, B = relu_pair(400, 12, 9, seed=11, dtype=np.float64)
    fa, fb = factor(A), factor(B)
    cross = cross_product(fa, fb)
    result = measure_pair(fa, fb, cross)
    assert result.values == pair_measures(fa, fb, cross)
    assert result.neurons.rows() == neuron_correlations(fa, fb, cross).rows()
    assert result.values["neuron_corr"] == result.neurons.mean
    only = measure_pair(fa, fb, cross, measures=["pwcca", "cca"])
    assert list(only.values) == ["pwcca", "cca"] and only.neurons is None
    assert only.values["cca"] == result.values["cca"]
