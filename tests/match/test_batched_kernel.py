"""The batched kernel (``match_curves``) gives, on blocks of pairs, what today's one-pair kernel gives on each pair.

Compared per pair: every critical ε (within ``CRITICAL_ATOL``: the two kernels take different float64 paths to
the same numbers), ``inf`` exactly for the dead neurons, and the maximum match at the paper's ε grid and at ε = 0.

Sets at a grid ε: a neuron whose critical ε lies within rounding (``ROUNDING``) of the grid value may fall on
either side of it in either kernel; such a neuron is left out of the comparison (and reported if it differs), every
other neuron must be in both sets or in neither. On the data here no critical ε comes that close, so in practice
the sets are compared whole.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import raymatch.match.batched as batched_module
from raymatch.match import (
    EXACT_TOL,
    cross_product,
    cross_products,
    exact_tolerance,
    factor,
    match_curve,
    match_curves,
)
from raymatch.match.factor import permute_rows, row_permutation
from raymatch.match.lockstep import LockstepPeel
from raymatch.match.synthetic import relu_pair

from .test_curve_degenerate import assert_curve_is_the_maximum_match, f32, make_pair, near_rank_threshold, relu

GRID = (0.0, 0.15, 0.2, 0.25, 0.3, 0.5)
CRITICAL_ATOL = 1e-9
ROUNDING = 1e-9


# --------------------------------------------------------------------------------------------
# Helpers


def within_block(layers, center: bool = False) -> list:
    """Every pair (i < j) of the factors of ``layers``."""
    factors = [factor(layer, center=center) for layer in layers]
    return [(factors[i], factors[j]) for i in range(len(factors)) for j in range(i + 1, len(factors))]


def assert_same_sets(got, want, eps: float, context: str = "", rounding: float = ROUNDING) -> None:
    """``got.at(eps)`` and ``want.at(eps)`` agree on every neuron whose critical ε is not within ``rounding`` of eps."""
    for side in ("a", "b"):
        mine, theirs = getattr(got, f"critical_{side}"), getattr(want, f"critical_{side}")
        in_mine = np.zeros(mine.size, dtype=bool)
        in_mine[getattr(got.at(eps), side)] = True
        in_theirs = np.zeros(theirs.size, dtype=bool)
        in_theirs[getattr(want.at(eps), side)] = True
        close = (np.abs(mine - eps) <= rounding) | (np.abs(theirs - eps) <= rounding)
        differ = (in_mine != in_theirs) & ~close
        assert not differ.any(), f"{context} eps={eps} side {side}: neurons {np.flatnonzero(differ)} differ"


def assert_same_curves(got: list, want: list, atol: float = CRITICAL_ATOL, rounding: float = ROUNDING) -> None:
    assert len(got) == len(want)
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        for side in ("a", "b"):
            mine, theirs = getattr(g, f"critical_{side}"), getattr(w, f"critical_{side}")
            assert mine.shape == theirs.shape, f"pair {p} side {side}"
            np.testing.assert_array_equal(np.isinf(mine), np.isinf(theirs), err_msg=f"pair {p} side {side}")
            finite = np.isfinite(theirs)
            gap = np.abs(mine[finite] - theirs[finite]).max(initial=0.0)
            assert gap <= atol, f"pair {p} side {side}: critical ε differ by {gap:.2e}"
            np.testing.assert_array_equal(getattr(g, f"dead_{side}"), getattr(w, f"dead_{side}"))
        assert g.n_samples == w.n_samples
        for eps in GRID:
            assert_same_sets(g, w, eps, f"pair {p}", rounding)


def one_at_a_time(pairs, exact_tol=EXACT_TOL) -> list:
    tolerances = exact_tol if isinstance(exact_tol, list) else [exact_tol] * len(pairs)
    return [match_curve(fa, fb, cross=cross_product(fa, fb), exact_tol=tol)
            for (fa, fb), tol in zip(pairs, tolerances, strict=True)]


def check_block(pairs, exact_tol=EXACT_TOL, **kw) -> list:
    curves = match_curves(pairs, exact_tol=exact_tol, **kw)
    assert_same_curves(curves, one_at_a_time(pairs, exact_tol))
    return curves


def planted_models(n_models: int, n_samples: int, shared: int, n_neurons, seed: int) -> list[np.ndarray]:
    """Layers that share a latent space of ``shared`` dimensions (mixed with private noise of varying size)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n_samples, shared))
    layers = []
    for m in range(n_models):
        n = n_neurons[m % len(n_neurons)]
        n_shared = min(n, shared + 2)
        signal = Z @ rng.standard_normal((shared, n_shared))
        noise = rng.choice([0.0, 0.01, 0.1, 0.5, 2.0], n_shared) * rng.standard_normal((n_samples, n_shared))
        private = rng.standard_normal((n_samples, n - n_shared))
        layer = np.hstack([signal + noise, private])
        layers.append(layer[:, rng.permutation(n)])
    return layers


# --------------------------------------------------------------------------------------------
# Blocks of pairs


def test_a_lone_pair_is_peeled_one_at_a_time():
    rng = np.random.default_rng(12)
    fa, fb = factor(rng.standard_normal((40, 6))), factor(rng.standard_normal((40, 5)))
    cross = cross_products([(fa, fb)])[0]
    assert match_curves([(fa, fb)], crosses=[cross]) == [match_curve(fa, fb, cross=cross)]
    timings = {}
    match_curves([(fa, fb)] * batched_module.LOCKSTEP_MIN_PAIRS, timings=timings)
    assert timings["one_pair"] == 0.0 and timings["steps"] > 0.0


def test_random_gaussian_block_with_different_widths():
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((60, n)) for n in (5, 12, 9, 12, 7, 10)]
    check_block(within_block(layers))


def test_planted_block_matches_the_shared_part():
    layers = planted_models(6, 120, shared=4, n_neurons=(10, 8, 11), seed=1)
    similarity = [curve.at(0.5).similarity for curve in check_block(within_block(layers))]
    assert 0.0 == min(similarity) < 0.3 < max(similarity) < 1.0  # partial matches and none


@pytest.mark.parametrize("center", [False, True])
def test_relu_like_block_and_the_pairs_between_two_blocks(center):
    layers = [relu_pair(1000, 48, 40, seed=seed)[seed % 2] for seed in range(6)]
    check_block(within_block(layers, center=center))
    factors = [factor(layer, center=center) for layer in layers]
    check_block([(fa, fb) for fa in factors[:3] for fb in factors[3:]])


def test_one_model_against_several_and_the_permuted_row_null():
    layers = [relu_pair(800, 32, 32, seed=3)[0], *relu_pair(800, 32, 30, seed=3)[1:], relu_pair(800, 24, 24, seed=4)[0]]
    fa, *others = [factor(layer) for layer in layers]
    permuted = permute_rows(others[0], row_permutation(800, 0))
    pairs = [(fa, fb) for fb in others] + [(fa, permuted)]
    curves = check_block(pairs)
    # the permuted-row null destroys the planted match that the unpermuted pair has
    assert curves[-1].at(0.5).similarity < curves[0].at(0.5).similarity


def test_dead_neurons_all_dead_and_empty_layers():
    rng = np.random.default_rng(5)
    layers = [rng.standard_normal((50, 8)) for _ in range(3)]
    layers[0][:, [1, 4]] = 0.0
    layers[1][:, 6] *= 1e-9  # below the dead tolerance
    layers.append(np.zeros((50, 5)))  # every neuron dead
    curves = check_block(within_block(layers))
    np.testing.assert_array_equal(curves[0].dead_a, [1, 4])
    np.testing.assert_array_equal(curves[0].dead_b, [6])
    against_nothing = curves[2]  # (layer 0, all dead): every ratio is 1
    np.testing.assert_array_equal(against_nothing.critical_b, np.inf)
    np.testing.assert_array_equal(against_nothing.critical_a, [1.0, np.inf, 1.0, 1.0, np.inf, 1.0, 1.0, 1.0])
    assert match_curves([]) == []


@pytest.mark.parametrize("kind", ["float32 dependencies", "shared and dependent", "dead neurons",
                                  "permuted twins", "noisy permuted twins", "duplicated neurons", "low rank exact"])
def test_degenerate_blocks(kind):
    """Near-degenerate groups (the batched kernel re-factors), and rank-deficient sides (one pair at a time)."""
    layers = []
    for seed in range(3):
        A, B = make_pair(kind, seed)
        layers += [A, B]
    check_block(within_block(layers))


def test_fewer_samples_than_neurons():
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((14, 4))
    layers = [np.hstack([Z @ rng.standard_normal((4, 6)), rng.standard_normal((14, n))]) for n in (14, 10, 2)]
    curves = check_block(within_block(layers))
    assert curves[0].max_epsilon == 0.0  # both span the whole sample space


def test_twins_with_permuted_neurons_match_exactly_at_eps_zero():
    """A layer and permuted copies, rounded apart in float32 (a changed summation order): exact at float32 tolerance."""
    rng = np.random.default_rng(8)
    A = np.maximum(rng.standard_normal((300, 10)) @ rng.standard_normal((10, 12)), 0.0)
    twins = [A[:, rng.permutation(12)] * (1.0 + 1e-6 * rng.standard_normal(A.shape)) for _ in range(3)]
    layers = [f32(x) for x in [A, *twins]]
    tol = exact_tolerance(np.float32)
    curves = check_block(within_block(layers), exact_tol=tol)
    for curve in curves:
        assert curve.max_epsilon == 0.0 and curve.at(0.0).similarity == 1.0
    assert all(curve.max_epsilon > 0.0 for curve in check_block(within_block(layers)))  # not at float64's


def test_per_pair_exact_tolerances():
    layers = [f32(relu(np.random.default_rng(9), 200, 10)) for _ in range(3)]
    layers.append(layers[0][:, ::-1] * (1.0 + 1e-5))
    pairs = within_block(layers)
    tolerances = [EXACT_TOL, 1e-4, 1e-3, 1e-2, 0.1, 0.5]
    check_block(pairs, exact_tol=tolerances)


# --------------------------------------------------------------------------------------------
# The lockstep machinery: chunks, compaction, re-factoring, cross products given or computed


def test_chunks_give_the_same_curves(monkeypatch):
    layers = [relu_pair(600, 20, 20, seed=seed)[0] for seed in range(5)]
    pairs = within_block(layers)
    whole = match_curves(pairs)
    monkeypatch.setattr(batched_module, "CHUNK_BYTES", batched_module.PAIR_BYTES * 20**2 * 4)  # 4 pairs a chunk
    chunks = batched_module._chunks(list(range(len(pairs))), pairs)
    assert [len(chunk) for chunk in chunks] == [4, 3, 3]  # not 4, 4, 2: a chunk of 2 would be peeled one at a time
    assert_same_curves(match_curves(pairs), whole)


def test_cross_products_are_the_pairs_gemms(monkeypatch):
    rng = np.random.default_rng(10)
    factors = [factor(rng.standard_normal((70, k))) for k in (4, 6, 5, 3)]
    pairs = [(factors[0], f) for f in factors[1:]] + [(factors[2], factors[1]), (factors[1], factors[3])]
    crosses = cross_products(pairs)
    for (fa, fb), cross in zip(pairs, crosses, strict=True):
        np.testing.assert_allclose(cross, cross_product(fa, fb), atol=1e-13)
    assert match_curves(pairs, crosses=crosses) == match_curves(pairs)
    monkeypatch.setattr(batched_module, "STACK_BYTES", 0)  # bases too large to stack: one GEMM per pair
    for got, want in zip(cross_products(pairs), crosses, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-13)


@pytest.fixture
def one_thread():
    """One torch thread, as :func:`match_curves` runs its peels (many small operations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_compaction_and_refactoring_are_exercised(one_thread):
    """A wide block compacts its arrays as it peels; float32-broken dependencies make it re-factor spans."""
    layers = [relu_pair(900, 40, 40, seed=seed)[0] for seed in range(3)]
    pairs = within_block(layers)
    peel = LockstepPeel([f.coords for f in (pairs[0][0], pairs[0][1], pairs[1][1])], [0, 0, 1], [1, 2, 2],
                        [cross_product(fa, fb) for fa, fb in pairs], [EXACT_TOL] * 3)
    peel.run()
    assert peel.stats["compactions"] >= 2 and peel.stats["flushes"] >= 3
    A, B = make_pair("shared and dependent", 3, n_samples=600, n=40)
    assert not (near_rank_threshold(A) or near_rank_threshold(B))
    fa, fb = factor(A), factor(B)
    peel = LockstepPeel([fa.coords, fb.coords], [0], [1], [cross_product(fa, fb)], [EXACT_TOL])
    peel.run()
    assert peel.stats["rebases"] >= 1
    assert_curve_is_the_maximum_match(A, B, match_curves([(fa, fb)])[0], grid=5, every=8)


# --------------------------------------------------------------------------------------------
# Precision and devices


@pytest.mark.parametrize("kind", ["relu", "float32 dependencies", "shared and dependent", "low rank float32",
                                  "permuted twins"])
def test_float32_peels_keep_the_sets(kind):
    """A float32 peel (float64 cross products and set-up) against float64: measured |Δ critical ε| < 5e-7 on
    ReLU-like layers, up to 3e-5 on near-degenerate ones; the sets at ε = 0 and the grid are the same (neurons
    within 1e-4 of a grid ε aside: none here)."""
    if kind == "relu":
        layers = [relu_pair(1000, 40, 40, seed=seed)[0] for seed in range(4)]
    else:
        layers = [layer for seed in range(3) for layer in make_pair(kind, seed)]
    pairs = within_block(layers)
    exact, single = match_curves(pairs), match_curves(pairs, dtype=torch.float32)
    assert_same_curves(single, exact, atol=1e-6 if kind == "relu" else 1e-4, rounding=1e-4)
    tol = exact_tolerance(np.float32)  # twins stay exact at float32's tolerance: ratios are set up in float64
    single = match_curves(pairs, dtype=torch.float32, exact_tol=tol)
    assert_same_curves(single, match_curves(pairs, exact_tol=tol), atol=1e-6 if kind == "relu" else 1e-4,
                       rounding=1e-4)
    if kind == "permuted twins":  # layers 2s and 2s + 1 are twins
        assert all(single[p].at(0.0).similarity > 0.5 for p in (0, 9, 14))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_curves():
    layers = [relu_pair(1000, 40, 40, seed=seed)[0] for seed in range(4)]
    pairs = within_block(layers)
    assert_same_curves(match_curves(pairs, device="cuda"), match_curves(pairs))


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_one_clear_error():
    rng = np.random.default_rng(11)
    fa, fb = factor(rng.standard_normal((30, 4))), factor(rng.standard_normal((30, 3)))
    other = factor(rng.standard_normal((31, 3)))
    centred = factor(rng.standard_normal((30, 3)), center=True)
    cases = [
        ([(fa, fb), (fa,)], {}, r"pairs\[1\] must be a pair \(fa, fb\) of Factors"),
        ([(fa, np.zeros((30, 3)))], {}, r"pairs\[0\]: fb must be a Factor; got ndarray"),
        ([(fa, other)], {}, r"pairs\[0\]: A and B must have the same number of samples"),
        ([(fa, centred)], {}, r"pairs\[0\]: A and B must both be centered or both not"),
        ([(fa, fb)], {"crosses": [np.zeros((3, 4))]}, r"crosses\[0\] must have shape \(4, 3\)"),
        ([(fa, fb)], {"crosses": []}, r"crosses must hold one cross product per pair \(1\); got 0"),
        ([(fa, fb)], {"exact_tol": [1e-6, 1e-6]}, r"exact_tol must be one number or one per pair \(1\); got 2"),
        ([(fa, fb)], {"exact_tol": 0.0}, r"exact_tol must be a number in \[1e-06, 1\)"),
    ]
    for pairs, kw, message in cases:
        with pytest.raises(ValueError, match=message):
            match_curves(pairs, **kw)


# --------------------------------------------------------------------------------------------
# Property: any block, any widths, dead neurons


@st.composite
def blocks(draw):
    n_samples = draw(st.integers(8, 60))
    n_models = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    widths = draw(st.lists(st.integers(1, 12), min_size=n_models, max_size=n_models))
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n_samples, draw(st.integers(1, 6))))
    layers = []
    for n in widths:
        mixed = Z @ rng.standard_normal((Z.shape[1], n)) + rng.choice([0.0, 0.05, 0.5, 2.0]) * rng.standard_normal(
            (n_samples, n))
        if draw(st.booleans()):
            mixed[:, rng.integers(n)] = 0.0
        layers.append(mixed * rng.uniform(0.3, 3.0, n))
    return layers


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=blocks(), star=st.booleans())
def test_any_block_gives_the_one_pair_curves(layers, star):
    """Every ordered pair of a block (self-pairs too), or one model against the others and itself twice."""
    factors = [factor(layer) for layer in layers]
    if star:
        pairs = [(factors[0], fb) for fb in [*factors, factors[0]]]
    else:
        pairs = [(fa, fb) for fa in factors for fb in factors]
    check_block(pairs)
