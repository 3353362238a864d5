"""The fast path against the plain float64 oracle (``raymatch.match.reference``).

The contract: both agree on every neuron whose float64 ratio is farther than 1e-6 from ε.
Where the matched sets differ, every differing neuron must therefore sit within 1e-6 of ε in
the oracle's own final state; anything else fails.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import raymatch
from raymatch.match import candidate_order, reference
from raymatch.match.synthetic import relu_pair

from .kernels import KERNELS, curve_function

EPS_GRID = (0.0, 0.05, 0.15, 0.2, 0.25, 0.3, 0.5, 0.8, 0.95, 1.0)
MARGIN = 1e-6


_ORACLE: dict = {}


def oracle_max_match(A, B, eps):
    """The oracle's maximum match, computed once per (A, B, ε) for every kernel and route checked against it."""
    key = (hashlib.sha1(np.ascontiguousarray(A).tobytes()).hexdigest(),
           hashlib.sha1(np.ascontiguousarray(B).tobytes()).hexdigest(), str(np.asarray(A).dtype), float(eps))
    if key not in _ORACLE:
        _ORACLE[key] = reference.max_match(A, B, eps)
    return _ORACLE[key]


def assert_agrees(A, B, eps, match):
    ref_a, ref_b = oracle_max_match(A, B, eps)
    if np.array_equal(match.a, ref_a) and np.array_equal(match.b, ref_b):
        return
    A64 = np.asarray(A, dtype=np.float64)
    B64 = np.asarray(B, dtype=np.float64)
    threshold = max(eps, raymatch.match.EXACT_TOL)
    for side, got, want, own, other, other_set in (
        ("a", match.a, ref_a, A64, B64, ref_b),
        ("b", match.b, ref_b, B64, A64, ref_a),
    ):
        differing = np.setxor1d(got, want)
        if differing.size:
            r = reference.ratios(own[:, differing], other[:, other_set])
            far = np.abs(r - threshold) > MARGIN
            assert not far.any(), (
                f"side {side}, eps={eps}: neurons {differing[far]} with ratios {r[far]} disagree with the oracle"
            )


def check_everything(A, B, eps_grid=EPS_GRID, match_curve=raymatch.match_curve):
    curve = match_curve(A, B)
    fa, fb = raymatch.factor(A), raymatch.factor(B)
    curve_from_factors = match_curve(fa, fb)
    for eps in eps_grid:
        assert_agrees(A, B, eps, raymatch.max_match(A, B, eps))
        assert_agrees(A, B, eps, raymatch.max_match(fa, fb, eps))
        assert_agrees(A, B, eps, curve.at(eps))
        assert_agrees(A, B, eps, curve_from_factors.at(eps))
    return curve


def planted(n_samples, shared, private_a, private_b, seed, extra_a=0, extra_b=0):
    """A and B share a ``shared``-dimensional subspace spanned by ``shared + extra`` neurons."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n_samples, shared))
    A = np.hstack([Z @ rng.standard_normal((shared, shared + extra_a)),
                   rng.standard_normal((n_samples, private_a))])
    B = np.hstack([Z @ rng.standard_normal((shared, shared + extra_b)),
                   rng.standard_normal((n_samples, private_b))])
    pa, pb = rng.permutation(A.shape[1]), rng.permutation(B.shape[1])
    shared_a = np.sort(np.argsort(pa)[: shared + extra_a])
    shared_b = np.sort(np.argsort(pb)[: shared + extra_b])
    return A[:, pa], B[:, pb], shared_a, shared_b


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", range(3))
def test_random_gaussian_layers_agree_with_the_oracle(kernel, seed):
    match_curve = curve_function(kernel)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((60, 24))
    B = rng.standard_normal((60, 20))
    check_everything(A, B, match_curve=match_curve)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", range(3))
def test_relu_like_layers_agree_with_the_oracle(kernel, seed):
    match_curve = curve_function(kernel)
    A, B = relu_pair(1500, 72, 64, seed=seed)
    curve = check_everything(A, B, match_curve=match_curve)
    sizes = [curve.at(eps).similarity for eps in (0.15, 0.5)]
    assert 0.0 < sizes[0] < sizes[1] < 1.0  # the generator plants a partial match


@pytest.mark.parametrize("kernel", KERNELS)
def test_planted_shared_subspace_is_the_exact_match(kernel):
    match_curve = curve_function(kernel)
    A, B, shared_a, shared_b = planted(200, 6, 10, 12, seed=1, extra_a=2, extra_b=1)
    match = raymatch.max_match(A, B, 0.0)
    np.testing.assert_array_equal(match.a, shared_a)
    np.testing.assert_array_equal(match.b, shared_b)
    check_everything(A, B, match_curve=match_curve)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rank_deficient_and_duplicated_neurons_agree_with_the_oracle(kernel):
    match_curve = curve_function(kernel)
    A, B, _, _ = planted(120, 5, 8, 8, seed=2)
    rng = np.random.default_rng(3)
    A = np.hstack([A, 3.0 * A[:, [0]], -A[:, [4]], A[:, :3] @ rng.standard_normal((3, 2))])
    B = np.hstack([B, 0.5 * B[:, [1]], B[:, [2]], B[:, 5:9] @ rng.standard_normal((4, 3))])
    check_everything(A, B, match_curve=match_curve)
    # duplicated neurons are interchangeable: both or neither are matched
    for eps in EPS_GRID:
        m = raymatch.max_match(A, B, eps)
        n_a = A.shape[1]
        assert (0 in m.a) == (n_a - 4 in m.a)


@pytest.mark.parametrize("kernel", KERNELS)
def test_dead_neurons_are_excluded_and_counted(kernel):
    match_curve = curve_function(kernel)
    A, B, _, _ = planted(100, 4, 6, 6, seed=4)
    A[:, 2] = 0.0
    B[:, [0, 5]] = 0.0
    B[:, 7] *= 1e-9  # below the dead tolerance (1e-6 of the largest norm)
    curve = check_everything(A, B, match_curve=match_curve)
    np.testing.assert_array_equal(curve.dead_a, [2])
    np.testing.assert_array_equal(curve.dead_b, [0, 5, 7])
    assert np.isinf(curve.critical_a[2]) and np.isinf(curve.critical_b[[0, 5, 7]]).all()
    full = curve.at(1.0)
    assert full.similarity == (A.shape[1] - 1 + B.shape[1] - 3) / (A.shape[1] + B.shape[1])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("condition", [1e4, 1e6, 1e8])
def test_near_collinear_neurons_agree_with_the_oracle(kernel, condition):
    match_curve = curve_function(kernel)
    A, B, _, _ = planted(150, 5, 8, 8, seed=5)
    rng = np.random.default_rng(6)
    near_a = A[:, :3] + rng.standard_normal((150, 3)) * np.linalg.norm(A[:, :3], axis=0) / condition
    near_b = B[:, 2:4] + rng.standard_normal((150, 2)) * np.linalg.norm(B[:, 2:4], axis=0) / condition
    A = np.hstack([A, near_a])
    B = np.hstack([B, near_b])
    check_everything(A, B, match_curve=match_curve)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_samples", [12, 20, 28, 60])
def test_samples_below_equal_and_above_the_neuron_count(kernel, n_samples):
    match_curve = curve_function(kernel)
    rng = np.random.default_rng(n_samples)
    Z = rng.standard_normal((n_samples, 4))
    A = np.hstack([Z @ rng.standard_normal((4, 6)), rng.standard_normal((n_samples, 14))])
    B = np.hstack([Z @ rng.standard_normal((4, 5)), rng.standard_normal((n_samples, 15))])
    curve = check_everything(A, B, match_curve=match_curve)
    if n_samples <= 18:  # both sides span the whole sample space (ranks 18, 19): all match exactly
        assert curve.max_epsilon == 0.0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, torch.float32, torch.float64])
def test_float32_float64_numpy_and_torch_inputs_agree_with_the_oracle(kernel, dtype):
    match_curve = curve_function(kernel)
    A, B = relu_pair(800, 40, 36, seed=7, dtype=np.float64)
    if isinstance(dtype, torch.dtype):
        A_in, B_in = torch.from_numpy(A).to(dtype), torch.from_numpy(B).to(dtype)
        A_ref, B_ref = A_in.double().numpy(), B_in.double().numpy()
    else:
        A_in, B_in = A.astype(dtype), B.astype(dtype)
        A_ref, B_ref = A_in.astype(np.float64), B_in.astype(np.float64)
    curve = match_curve(A_in, B_in)
    for eps in EPS_GRID:
        assert_agrees(A_ref, B_ref, eps, raymatch.max_match(A_in, B_in, eps))
        assert_agrees(A_ref, B_ref, eps, curve.at(eps))


@pytest.mark.parametrize("order", [None, 11])
def test_minimal_matches_agree_with_the_oracle_with_dependent_neurons(order):
    A, B, _, _ = planted(80, 4, 3, 3, seed=8, extra_a=1, extra_b=2)
    A = np.hstack([A, 2.0 * A[:, [1]]])
    for eps in (0.0, 0.3):
        ref_a, ref_b = reference.max_match(A, B, eps)
        candidates, _ = candidate_order(ref_a, ref_b, order)
        for neuron in [("a", int(j)) for j in ref_a] + [("b", int(j)) for j in ref_b]:
            want = reference.minimal_match(A, B, eps, neuron, candidates)
            got = raymatch.minimal_match(A, B, eps, neuron, order=order)
            np.testing.assert_array_equal(got.a, want[0])
            np.testing.assert_array_equal(got.b, want[1])
