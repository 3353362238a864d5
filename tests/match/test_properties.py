"""Property tests of the match core: the invariances and theorems of DESIGN.md §1.

Every test is named after the mathematical property it checks. Data is generated with planted
structure (a shared latent ``Z`` mixed into both layers with varying amounts of private noise,
plus independent neurons), so that maximum matches are neither empty nor full.

Floating point: a neuron whose float64 ratio is within ``MARGIN`` (1e-6) of ε may go either way.
Tests that compare two runs therefore use only ε values in the middle of a gap wider than
``2 * MARGIN`` between consecutive critical values (:func:`safe_eps`): there every neuron's ratio to
the final match is farther than ``MARGIN`` from ε. Tests against the float64 oracle
(:mod:`raymatch.match.reference`) sandwich the result between the oracle at ``ε - MARGIN`` and at
``ε + MARGIN`` instead (:func:`assert_between_reference`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import raymatch
from raymatch.match import EXACT_TOL, candidate_order, reference

from .kernels import KERNELS, curve_function

MARGIN = 1e-6
#: Critical values of two runs on transformed data differ only by rounding.
CRITICAL_ATOL = 1e-7

settings.register_profile(
    "raymatch-match-properties",
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTIES = settings.get_profile("raymatch-match-properties")
FEW = settings(PROPERTIES, max_examples=12)


# --------------------------------------------------------------------------------------------
# Data


def planted_pair(seed: int, n_samples: int, n_a: int, n_b: int, dead: bool = False):
    """Two layers sharing a latent ``Z``: some neurons mix ``Z`` with private noise of varying size
    (none, small, large), the rest are independent. Columns are shuffled and rescaled."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, min(n_a, n_b) + 1))
    Z = rng.standard_normal((n_samples, k))

    def side(n: int) -> np.ndarray:
        n_shared = int(rng.integers(1, n + 1))
        signal = Z @ rng.standard_normal((k, n_shared))
        noise = rng.standard_normal((n_samples, n_shared))
        level = rng.choice([0.0, 0.0, 0.01, 0.05, 0.2, 0.5, 1.0, 3.0], n_shared)
        shared = _unit(signal) + level * _unit(noise)
        private = rng.standard_normal((n_samples, n - n_shared))
        layer = np.hstack([shared, private]) * rng.uniform(0.3, 3.0, n)
        layer = layer[:, rng.permutation(n)]
        if dead:
            layer[:, rng.integers(n)] = 0.0
        return layer

    return side(n_a), side(n_b)


def _unit(columns: np.ndarray) -> np.ndarray:
    return columns / np.linalg.norm(columns, axis=0)


def random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


seeds = st.integers(0, 2**32 - 1)
n_samples_st = st.integers(20, 80)


@st.composite
def layer_pairs(draw, max_neurons: int = 12, dead: bool | None = None):
    n_samples = draw(n_samples_st)
    n_a = draw(st.integers(2, max_neurons))
    n_b = draw(st.integers(2, max_neurons))
    with_dead = draw(st.booleans()) if dead is None else dead
    return planted_pair(draw(seeds), n_samples, n_a, n_b, dead=with_dead)


# --------------------------------------------------------------------------------------------
# Helpers


def safe_eps(curve: raymatch.MatchCurve, margin: float = MARGIN, minimum: float = 0.0) -> list[float]:
    """ε values halfway between consecutive distinct critical values (with 0 and 1 as ends) whose gap
    exceeds ``2 * margin``; no neuron's ratio to the maximum match there is within ``margin`` of ε."""
    crit = np.concatenate([curve.critical_a, curve.critical_b])
    points = np.unique(np.concatenate([[0.0], crit[np.isfinite(crit)], [1.0]]))
    mids = [(lo + hi) / 2 for lo, hi in itertools.pairwise(points) if hi - lo > 2 * margin]
    return [eps for eps in mids if eps >= minimum]


def live(X: np.ndarray) -> np.ndarray:
    return reference.live_neurons(X)


def mapped(perm: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Indices into the original columns of those ``indices`` into the permuted columns ``X[:, perm]``."""
    return np.sort(perm[indices])


def assert_same_match(got: raymatch.Match, want: raymatch.Match, context=""):
    np.testing.assert_array_equal(got.a, want.a, err_msg=f"a differs {context}")
    np.testing.assert_array_equal(got.b, want.b, err_msg=f"b differs {context}")


def assert_between_reference(A, B, eps: float, a: np.ndarray, b: np.ndarray, context=""):
    """``reference(ε - MARGIN) ⊆ (a, b) ⊆ reference(ε + MARGIN)``: the oracle's answer up to neurons
    whose ratio lies within MARGIN of ε (and equal to it wherever no ratio does)."""
    lo_a, lo_b = reference.max_match(A, B, max(eps - MARGIN, 0.0))
    hi_a, hi_b = reference.max_match(A, B, min(eps + MARGIN, 1.0))
    for side, got, lo, hi in (("a", a, lo_a, hi_a), ("b", b, lo_b, hi_b)):
        got = set(got.tolist())
        assert set(lo.tolist()) <= got, (
            f"eps={eps} side {side}: oracle keeps {sorted(set(lo.tolist()) - got)} (even at eps-{MARGIN}) "
            f"but the result drops them {context}"
        )
        assert got <= set(hi.tolist()), (
            f"eps={eps} side {side}: result keeps {sorted(got - set(hi.tolist()))} which the oracle drops "
            f"(even at eps+{MARGIN}) {context}"
        )


def all_neurons(a: np.ndarray, b: np.ndarray) -> list[tuple[str, int]]:
    return [("a", int(j)) for j in a] + [("b", int(j)) for j in b]


# --------------------------------------------------------------------------------------------
# 1. Permutation equivariance


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs(), data=st.data())
def test_permuting_neurons_permutes_the_match(kernel, pair, data):
    match_curve = curve_function(kernel)
    A, B = pair
    pa = np.array(data.draw(st.permutations(range(A.shape[1])), label="perm_a"))
    pb = np.array(data.draw(st.permutations(range(B.shape[1])), label="perm_b"))
    Ap, Bp = A[:, pa], B[:, pb]

    curve = match_curve(A, B)
    curve_p = match_curve(Ap, Bp)
    np.testing.assert_allclose(curve_p.critical_a, curve.critical_a[pa], rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(curve_p.critical_b, curve.critical_b[pb], rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_array_equal(mapped(pa, curve_p.dead_a), curve.dead_a)
    np.testing.assert_array_equal(mapped(pb, curve_p.dead_b), curve.dead_b)

    for eps in [*safe_eps(curve), 1.0]:
        m, mp = raymatch.max_match(A, B, eps), raymatch.max_match(Ap, Bp, eps)
        np.testing.assert_array_equal(mapped(pa, mp.a), m.a, err_msg=f"eps={eps}")
        np.testing.assert_array_equal(mapped(pb, mp.b), m.b, err_msg=f"eps={eps}")
        assert mp.similarity == m.similarity


# --------------------------------------------------------------------------------------------
# 2. Scale invariance


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs(), data=st.data())
def test_rescaling_neurons_by_nonzero_scalars_changes_nothing(kernel, pair, data):
    match_curve = curve_function(kernel)
    A, B = pair
    # Per-neuron magnitudes spread over three decades, reaching 1e-3 or 1e3, with any sign. (The
    # spread stays below 1e6 so that no neuron crosses the relative dead-neuron threshold.)
    low = data.draw(st.sampled_from([-3, 0]), label="lowest decade")

    def scales(n):
        exponents = np.array(data.draw(st.lists(st.integers(low, low + 3), min_size=n, max_size=n)))
        signs = np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)))
        return signs * 10.0**exponents

    sa, sb = scales(A.shape[1]), scales(B.shape[1])
    As, Bs = A * sa, B * sb

    curve, curve_s = match_curve(A, B), match_curve(As, Bs)
    np.testing.assert_allclose(curve_s.critical_a, curve.critical_a, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(curve_s.critical_b, curve.critical_b, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_array_equal(curve_s.dead_a, curve.dead_a)
    np.testing.assert_array_equal(curve_s.dead_b, curve.dead_b)
    for eps in [*safe_eps(curve), 1.0]:
        assert_same_match(raymatch.max_match(As, Bs, eps), raymatch.max_match(A, B, eps), f"eps={eps}")


@pytest.mark.parametrize("kernel", KERNELS)
@FEW
@given(
    pair=layer_pairs(),
    scale_a=st.sampled_from([1e-3, -1e-3, 1e3, -1e3, -1.0]),
    scale_b=st.sampled_from([1e-3, -1e-3, 1e3, -1e3, -1.0]),
)
def test_rescaling_a_whole_layer_changes_nothing(kernel, pair, scale_a, scale_b):
    match_curve = curve_function(kernel)
    A, B = pair
    curve, curve_s = match_curve(A, B), match_curve(scale_a * A, scale_b * B)
    np.testing.assert_allclose(curve_s.critical_a, curve.critical_a, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(curve_s.critical_b, curve.critical_b, rtol=0, atol=CRITICAL_ATOL)
    for eps in safe_eps(curve):
        assert_same_match(raymatch.max_match(scale_a * A, scale_b * B, eps), raymatch.max_match(A, B, eps))


# --------------------------------------------------------------------------------------------
# 3. Invariance under orthogonal transforms of the sample axis


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs(), seed=seeds, kind=st.sampled_from(["orthogonal", "row permutation", "reflection"]))
def test_orthogonal_transform_of_the_samples_changes_nothing(kernel, pair, seed, kind):
    match_curve = curve_function(kernel)
    A, B = pair
    n = A.shape[0]
    rng = np.random.default_rng(seed)
    if kind == "orthogonal":
        Q = random_orthogonal(rng, n)
    elif kind == "row permutation":
        Q = np.eye(n)[rng.permutation(n)]
    else:
        v = _unit(rng.standard_normal((n, 1)))
        Q = np.eye(n) - 2.0 * v @ v.T
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e-12)
    QA, QB = Q @ A, Q @ B

    curve, curve_q = match_curve(A, B), match_curve(QA, QB)
    np.testing.assert_allclose(curve_q.critical_a, curve.critical_a, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(curve_q.critical_b, curve.critical_b, rtol=0, atol=CRITICAL_ATOL)
    for eps in [*safe_eps(curve), 1.0]:
        assert_same_match(raymatch.max_match(QA, QB, eps), raymatch.max_match(A, B, eps), f"eps={eps}")


# --------------------------------------------------------------------------------------------
# 4, 5. Equal spans match exactly


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(
    seed=seeds,
    n_samples=n_samples_st,
    n_a=st.integers(2, 12),
    kind=st.sampled_from(["planted", "gaussian"]),
    dead_a=st.booleans(),
    dead_b=st.booleans(),
)
def test_invertible_mixing_of_a_layer_matches_it_fully_at_eps_zero(kernel, seed, n_samples, n_a, kind, dead_a, dead_b):
    match_curve = curve_function(kernel)
    rng = np.random.default_rng(seed)
    if kind == "planted":  # correlated neurons, full column rank
        A, _ = planted_pair(seed, n_samples, n_a, 2)
        A = A + 0.05 * rng.standard_normal(A.shape) * np.linalg.norm(A, axis=0) / np.sqrt(n_samples)
    else:
        A = rng.standard_normal((n_samples, n_a))
    # M = U diag(s) V with singular values in [0.1, 10]: condition number at most 100.
    M = random_orthogonal(rng, n_a) @ np.diag(rng.uniform(0.1, 10.0, n_a)) @ random_orthogonal(rng, n_a)
    B = A @ M
    if dead_a:  # a dead neuron of A does not change span(A)
        A = np.insert(A, int(rng.integers(n_a + 1)), 0.0, axis=1)
    if dead_b:
        B = np.insert(B, int(rng.integers(n_a + 1)), 0.0, axis=1)

    match = raymatch.max_match(A, B, 0.0)
    np.testing.assert_array_equal(match.a, live(A))
    np.testing.assert_array_equal(match.b, live(B))
    assert match.size_a == n_a and match.size_b == n_a
    curve = match_curve(A, B)
    assert curve.max_epsilon == 0.0
    np.testing.assert_array_equal(curve.critical_a[live(A)], 0.0)
    np.testing.assert_array_equal(curve.critical_b[live(B)], 0.0)


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(
    seed=seeds,
    n_samples=n_samples_st,
    n_neurons=st.integers(2, 12),
    rank=st.integers(1, 12),
    dead=st.booleans(),
    duplicate=st.booleans(),
)
def test_a_layer_matches_itself_fully_at_eps_zero(kernel, seed, n_samples, n_neurons, rank, dead, duplicate):
    match_curve = curve_function(kernel)
    rng = np.random.default_rng(seed)
    rank = min(rank, n_neurons)  # rank < n_neurons: linearly dependent neurons
    A = rng.standard_normal((n_samples, rank)) @ rng.standard_normal((rank, n_neurons))
    if duplicate:
        A = np.hstack([A, -2.5 * A[:, [0]]])
    if dead:
        A[:, int(rng.integers(A.shape[1]))] = 0.0
    live_a = live(A)

    match = raymatch.max_match(A, A, 0.0)
    np.testing.assert_array_equal(match.a, live_a)
    np.testing.assert_array_equal(match.b, live_a)
    assert match.similarity == 2 * live_a.size / (2 * A.shape[1])
    curve = match_curve(A, A)
    assert curve.max_epsilon == 0.0
    np.testing.assert_array_equal(curve.critical_a, curve.critical_b)
    np.testing.assert_array_equal(curve.critical_a[live_a], 0.0)
    simple = raymatch.simple_matches(A, A, 0.0)
    np.testing.assert_array_equal(np.unique(np.concatenate([m.a for m in simple])), live_a)


# --------------------------------------------------------------------------------------------
# 6. Symmetry


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs())
def test_swapping_the_layers_swaps_the_match(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    curve, swapped = match_curve(A, B), match_curve(B, A)
    np.testing.assert_allclose(swapped.critical_a, curve.critical_b, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(swapped.critical_b, curve.critical_a, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_array_equal(swapped.dead_a, curve.dead_b)
    np.testing.assert_array_equal(swapped.dead_b, curve.dead_a)
    assert swapped.max_epsilon == curve.max_epsilon or abs(swapped.max_epsilon - curve.max_epsilon) < CRITICAL_ATOL
    for eps in [*safe_eps(curve), 1.0]:
        m, ms = raymatch.max_match(A, B, eps), raymatch.max_match(B, A, eps)
        np.testing.assert_array_equal(ms.a, m.b, err_msg=f"eps={eps}")
        np.testing.assert_array_equal(ms.b, m.a, err_msg=f"eps={eps}")
        assert ms.similarity == m.similarity


# --------------------------------------------------------------------------------------------
# 7. Monotonicity in ε


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs(), eps=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8))
def test_maximum_match_is_monotone_in_eps(kernel, pair, eps):
    match_curve = curve_function(kernel)
    A, B = pair
    eps = sorted(eps)
    curve = match_curve(A, B)
    for source in ("max_match", "curve"):
        matches = [raymatch.max_match(A, B, e) if source == "max_match" else curve.at(e) for e in eps]
        for (e0, m0), (e1, m1) in itertools.pairwise(zip(eps, matches, strict=True)):
            assert set(m0.a.tolist()) <= set(m1.a.tolist()), f"{source}: a at eps={e0} not within eps={e1}"
            assert set(m0.b.tolist()) <= set(m1.b.tolist()), f"{source}: b at eps={e0} not within eps={e1}"
    assert all(crit >= 0.0 for crit in curve.critical_a) and all(crit >= 0.0 for crit in curve.critical_b)
    finite = np.concatenate([curve.critical_a, curve.critical_b])
    assert np.all(finite[np.isfinite(finite)] <= 1.0)


# --------------------------------------------------------------------------------------------
# 8. The curve is the maximum match at every ε


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs())
def test_match_curve_at_every_eps_is_the_reference_maximum_match(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    curve = match_curve(A, B)
    for eps in np.linspace(0.0, 1.0, 50):
        eps = float(eps)
        at = curve.at(eps)
        assert_between_reference(A, B, eps, at.a, at.b, "(match_curve.at)")
        assert at.eps == eps


@pytest.mark.parametrize("kernel", KERNELS)
@FEW
@given(pair=layer_pairs())
def test_max_match_is_the_reference_maximum_match(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    curve = match_curve(A, B)
    for eps in np.linspace(0.0, 1.0, 21):
        m = raymatch.max_match(A, B, float(eps))
        assert_between_reference(A, B, float(eps), m.a, m.b, "(max_match)")
    for eps in safe_eps(curve):  # the two fast paths agree exactly away from critical values
        assert_same_match(raymatch.max_match(A, B, eps), curve.at(eps), f"eps={eps}")


# --------------------------------------------------------------------------------------------
# 9, 10. Simple matches


def check_is_match_and_v_minimal(A, B, eps: float, m: raymatch.SimpleMatch):
    threshold = max(eps, EXACT_TOL) + MARGIN
    side, v = m.neuron
    assert m.size_a + m.size_b > 0
    assert v in (m.a if side == "a" else m.b), f"{m.neuron} not in its own simple match {m}"
    # A match: every neuron within ε of the span of the other side's neurons in the match.
    ra = reference.ratios(A[:, m.a], B[:, m.b]) if m.size_a else np.zeros(0)
    rb = reference.ratios(B[:, m.b], A[:, m.a]) if m.size_b else np.zeros(0)
    assert np.all(ra <= threshold), f"eps={eps}: ratios {ra} of a={m.a.tolist()} exceed eps"
    assert np.all(rb <= threshold), f"eps={eps}: ratios {rb} of b={m.b.tolist()} exceed eps"
    # v-minimal: without any single other neuron u, the maximum match of what is left loses v.
    low = max(eps - MARGIN, 0.0)
    for u_side, u in all_neurons(m.a, m.b):
        if (u_side, u) == (side, v):
            continue
        a = m.a[m.a != u] if u_side == "a" else m.a
        b = m.b[m.b != u] if u_side == "b" else m.b
        if a.size == 0 or b.size == 0:
            continue  # a one-sided set is no match with v (ratio 1 > eps unless eps = 1)
        ka, kb = reference.max_match(A[:, a], B[:, b], low)
        left = a[ka] if side == "a" else b[kb]
        assert v not in left, (
            f"eps={eps}: simple match a={m.a.tolist()} b={m.b.tolist()} for {m.neuron} is not v-minimal: "
            f"without {(u_side, u)} the oracle's maximum match a={a[ka].tolist()} b={b[kb].tolist()} keeps v"
        )


@PROPERTIES
@given(pair=layer_pairs(max_neurons=9), pick=st.floats(0.0, 1.0), order=st.sampled_from([None, "index", 0, 7]))
def test_every_simple_match_is_a_v_minimal_match(pair, pick, order):
    A, B = pair
    curve = raymatch.match_curve(A, B)
    candidates = safe_eps(curve, minimum=0.0)
    for eps in {candidates[0], candidates[int(pick * (len(candidates) - 1))]}:
        simple = raymatch.simple_matches(A, B, eps, order=order)
        assert len({(tuple(m.a), tuple(m.b)) for m in simple}) == len(simple), "duplicates"
        for m in simple:
            assert m.eps == eps
            assert m.order == ("index" if order in (None, "index") else order)
            check_is_match_and_v_minimal(A, B, eps, m)


@PROPERTIES
@given(pair=layer_pairs(), order=st.sampled_from([None, 3, 12345]))
def test_union_of_simple_matches_is_the_maximum_match(pair, order):
    A, B = pair
    curve = raymatch.match_curve(A, B)
    for eps in [0.0, *safe_eps(curve), 1.0]:
        simple = raymatch.simple_matches(A, B, eps, order=order)
        maximum = raymatch.max_match(A, B, eps)
        union_a = np.unique(np.concatenate([np.zeros(0, np.int64), *(m.a for m in simple)]))
        union_b = np.unique(np.concatenate([np.zeros(0, np.int64), *(m.b for m in simple)]))
        np.testing.assert_array_equal(union_a, maximum.a, err_msg=f"eps={eps}")
        np.testing.assert_array_equal(union_b, maximum.b, err_msg=f"eps={eps}")
        # every neuron of the maximum match has a simple match found for it (or contains it)
        for neuron in all_neurons(maximum.a, maximum.b):
            assert any(neuron[1] in (m.a if neuron[0] == "a" else m.b) for m in simple)


# --------------------------------------------------------------------------------------------
# 11. Planted independent groups are the simple matches

GROUP_DIMS = (1, 2, 3)
#: Orthogonal matrices whose entries are all at least 1/3 in magnitude: no proper subset of the
#: B-neurons of a group comes within 1/3 of a proper subset of its A-neurons.
SPREAD = {
    1: np.array([[1.0]]),
    2: np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0),
    3: np.eye(3) - 2.0 / 3.0,
}


def planted_groups(seed: int, n_samples: int, noise_a: int, noise_b: int, orthonormal: bool):
    """Groups of latent dims 1, 2, 3, each giving exactly that many neurons to each side, plus
    independent noise neurons. Returns A, B and the groups as (a indices, b indices)."""
    rng = np.random.default_rng(seed)
    total = sum(GROUP_DIMS)
    if orthonormal:  # orthogonal group subspaces: ratios decompose per group
        Z, _ = np.linalg.qr(rng.standard_normal((n_samples, total)))
    else:
        Z = rng.standard_normal((n_samples, total))
    cols_a, cols_b, members = [], [], []
    start = 0
    for d in GROUP_DIMS:
        Zg = Z[:, start : start + d]
        if orthonormal:
            R = random_orthogonal(rng, d)
            Ma = R * rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 2.0, d)
            Mb = R @ SPREAD[d] * rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 2.0, d)
        else:
            Ma, Mb = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        cols_a.append(Zg @ Ma)
        cols_b.append(Zg @ Mb)
        members.append((np.arange(start, start + d), np.arange(start, start + d)))
        start += d
    scale = np.linalg.norm(cols_a[0])
    A = np.hstack([*cols_a, scale * _unit(rng.standard_normal((n_samples, noise_a)))])
    B = np.hstack([*cols_b, scale * _unit(rng.standard_normal((n_samples, noise_b)))])
    pa, pb = rng.permutation(A.shape[1]), rng.permutation(B.shape[1])
    inv_a, inv_b = np.argsort(pa), np.argsort(pb)
    groups = [(np.sort(inv_a[ga]), np.sort(inv_b[gb])) for ga, gb in members]
    return A[:, pa], B[:, pb], groups


@PROPERTIES
@given(
    seed=seeds,
    n_samples=n_samples_st,
    noise_a=st.integers(0, 6),
    noise_b=st.integers(0, 6),
    orthonormal=st.booleans(),
    order=st.sampled_from([None, 5]),
)
def test_planted_independent_groups_are_exactly_the_simple_matches(
    seed, n_samples, noise_a, noise_b, orthonormal, order
):
    A, B, groups = planted_groups(seed, n_samples, noise_a, noise_b, orthonormal)
    expected = [(g[0].tolist(), g[1].tolist()) for g in groups]
    # Generic (non-orthogonal) groups are independent only exactly: test them at ε = 0 alone.
    for eps in (0.0, 0.05) if orthonormal else (0.0,):
        simple = raymatch.simple_matches(A, B, eps, order=order)
        assert [(m.a.tolist(), m.b.tolist()) for m in simple] == expected, f"eps={eps}"
        maximum = raymatch.max_match(A, B, eps)
        np.testing.assert_array_equal(maximum.a, np.sort(np.concatenate([g[0] for g in groups])))
        np.testing.assert_array_equal(maximum.b, np.sort(np.concatenate([g[1] for g in groups])))
        for ga, gb in groups:
            for neuron in all_neurons(ga, gb):
                m = raymatch.minimal_match(A, B, eps, neuron, order=order)
                assert (m.a.tolist(), m.b.tolist()) == (ga.tolist(), gb.tolist()), f"eps={eps} {neuron}"


# --------------------------------------------------------------------------------------------
# 12. minimal_match is the authors' procedure


@PROPERTIES
@given(pair=layer_pairs(max_neurons=8), pick=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_minimal_match_is_the_reference_v_minimal_procedure(pair, pick, seed):
    A, B = pair
    curve = raymatch.match_curve(A, B)
    candidates_eps = safe_eps(curve)
    eps_values = sorted({0.0, candidates_eps[int(pick * (len(candidates_eps) - 1))]})
    n_a, n_b = A.shape[1], B.shape[1]
    for eps in eps_values:
        ref_a, ref_b = reference.max_match(A, B, eps)
        for order in (None, seed):
            candidates, label = candidate_order(ref_a, ref_b, order)
            for neuron in all_neurons(range(n_a), range(n_b)):
                want = reference.minimal_match(A, B, eps, neuron, candidates)
                got = raymatch.minimal_match(A, B, eps, neuron, order=order)
                if want is None:
                    assert got is None, f"eps={eps} {neuron}: oracle finds no match, got {got}"
                    continue
                assert got is not None, f"eps={eps} {neuron}: oracle finds {want}, got None"
                assert (got.a.tolist(), got.b.tolist()) == (want[0].tolist(), want[1].tolist()), (
                    f"eps={eps} neuron={neuron} order={order}: got a={got.a.tolist()} b={got.b.tolist()}, "
                    f"oracle a={want[0].tolist()} b={want[1].tolist()}"
                )
                assert got.order == label == ("index" if order is None else seed)
                assert got.neuron == neuron
                assert got.eps == eps


@FEW
@given(pair=layer_pairs(max_neurons=8), seed=st.integers(0, 2**31 - 1))
def test_minimal_match_records_the_order(pair, seed):
    A, B = pair
    match = raymatch.max_match(A, B, 0.5)
    for neuron in all_neurons(match.a, match.b)[:3]:
        assert raymatch.minimal_match(A, B, 0.5, neuron).order == "index"
        assert raymatch.minimal_match(A, B, 0.5, neuron, order="index").order == "index"
        assert raymatch.minimal_match(A, B, 0.5, neuron, order=seed).order == seed
        assert raymatch.minimal_match(A, B, 0.5, neuron, order=np.int64(seed)).order == seed
    assert all(m.order == seed for m in raymatch.simple_matches(A, B, 0.5, order=seed))


# --------------------------------------------------------------------------------------------
# 13. Critical values, dead neurons, similarity


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs())
def test_min_epsilon_is_the_smallest_eps_reaching_a_match_size(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    curve = match_curve(A, B)
    n_live = min(live(A).size, live(B).size)
    assert curve.min_epsilon(0) == 0.0
    for size in range(1, max(A.shape[1], B.shape[1]) + 2):
        eps = curve.min_epsilon(size)
        if size > n_live:
            assert eps == np.inf, f"size {size} > live neurons {n_live} yet min_epsilon = {eps}"
            m = curve.at(1.0)
            assert min(m.size_a, m.size_b) < size
            continue
        assert 0.0 <= eps <= 1.0
        m = curve.at(eps)
        assert min(m.size_a, m.size_b) >= size, f"size {size}: at(min_epsilon={eps}) gives {m.size_a}, {m.size_b}"
        if eps > EXACT_TOL:
            below = curve.at(float(np.nextafter(eps, 0.0)))
            assert min(below.size_a, below.size_b) < size, f"size {size}: a smaller eps than {eps} reaches it"
            ref = reference.max_match(A, B, eps - MARGIN)
            assert min(ref[0].size, ref[1].size) < size, f"size {size}: oracle reaches it below {eps}"
        ref = reference.max_match(A, B, min(eps + MARGIN, 1.0))
        assert min(ref[0].size, ref[1].size) >= size, f"size {size}: oracle does not reach it at {eps}"
    assert curve.min_epsilon(n_live) <= curve.max_epsilon


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs())
def test_max_epsilon_is_the_smallest_eps_matching_every_live_neuron(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    curve = match_curve(A, B)
    top = curve.max_epsilon
    live_a, live_b = live(A), live(B)
    full = curve.at(top)
    np.testing.assert_array_equal(full.a, live_a)
    np.testing.assert_array_equal(full.b, live_b)
    assert_same_match(raymatch.max_match(A, B, top + MARGIN if top + MARGIN <= 1 else 1.0), full)
    if top > EXACT_TOL:
        below = curve.at(float(np.nextafter(top, 0.0)))
        assert below.size_a + below.size_b < live_a.size + live_b.size
        ref_a, ref_b = reference.max_match(A, B, top - MARGIN)
        assert ref_a.size + ref_b.size < live_a.size + live_b.size, f"oracle matches everything below {top}"
    ref_a, ref_b = reference.max_match(A, B, min(top + MARGIN, 1.0))
    np.testing.assert_array_equal(ref_a, live_a)
    np.testing.assert_array_equal(ref_b, live_b)


@pytest.mark.parametrize("kernel", KERNELS)
@PROPERTIES
@given(pair=layer_pairs(dead=False), data=st.data())
def test_dead_neurons_are_never_matched_and_count_in_the_similarity(kernel, pair, data):
    match_curve = curve_function(kernel)
    A0, B0 = pair
    rng = np.random.default_rng(data.draw(seeds, label="seed"))

    def add_dead(X, n_dead):
        """Insert zero and numerically-zero (below DEAD_RTOL of the largest norm) columns."""
        largest = np.linalg.norm(X, axis=0).max()
        positions = []
        for _ in range(n_dead):
            j = int(rng.integers(X.shape[1] + 1))
            tiny = rng.choice([0.0, 1e-9, 1e-12]) * largest * _unit(rng.standard_normal((X.shape[0], 1)))
            X = np.insert(X, j, tiny[:, 0], axis=1)
            positions = [p + (p >= j) for p in positions] + [j]
        return X, np.array(sorted(positions), dtype=np.int64)

    A, dead_a = add_dead(A0, data.draw(st.integers(0, 3), label="dead in A"))
    B, dead_b = add_dead(B0, data.draw(st.integers(1, 3), label="dead in B"))
    keep_a = np.setdiff1d(np.arange(A.shape[1]), dead_a)
    keep_b = np.setdiff1d(np.arange(B.shape[1]), dead_b)

    curve = match_curve(A, B)
    curve0 = match_curve(A0, B0)
    np.testing.assert_array_equal(curve.dead_a, dead_a)
    np.testing.assert_array_equal(curve.dead_b, dead_b)
    assert np.all(np.isinf(curve.critical_a[dead_a])) and np.all(np.isinf(curve.critical_b[dead_b]))
    assert np.all(np.isfinite(curve.critical_a[keep_a])) and np.all(np.isfinite(curve.critical_b[keep_b]))
    # the live neurons' critical values are those without the dead columns
    np.testing.assert_allclose(curve.critical_a[keep_a], curve0.critical_a, rtol=0, atol=CRITICAL_ATOL)
    np.testing.assert_allclose(curve.critical_b[keep_b], curve0.critical_b, rtol=0, atol=CRITICAL_ATOL)
    assert curve.n_a == A.shape[1] and curve.n_b == B.shape[1]

    for eps in [0.0, *safe_eps(curve), 1.0]:
        for m in (raymatch.max_match(A, B, eps), curve.at(eps)):
            assert not set(m.a.tolist()) & set(dead_a.tolist())
            assert not set(m.b.tolist()) & set(dead_b.tolist())
            np.testing.assert_array_equal(m.dead_a, dead_a)
            np.testing.assert_array_equal(m.dead_b, dead_b)
            assert m.n_a == A.shape[1] and m.n_b == B.shape[1]
            assert m.similarity == (m.size_a + m.size_b) / (A.shape[1] + B.shape[1])
        m0 = raymatch.max_match(A0, B0, eps)
        m = raymatch.max_match(A, B, eps)
        np.testing.assert_array_equal(m.a, keep_a[m0.a])
        np.testing.assert_array_equal(m.b, keep_b[m0.b])
        for s in raymatch.simple_matches(A, B, eps):
            assert not set(s.a.tolist()) & set(dead_a.tolist())
            assert not set(s.b.tolist()) & set(dead_b.tolist())
    everything = curve.at(1.0)
    assert everything.similarity == (keep_a.size + keep_b.size) / (A.shape[1] + B.shape[1]) < 1.0
    for j in dead_a:
        assert raymatch.minimal_match(A, B, 1.0, ("a", int(j))) is None
    for j in dead_b:
        assert raymatch.minimal_match(A, B, 1.0, ("b", int(j))) is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_layer_with_only_dead_neurons_matches_nothing(kernel):
    match_curve = curve_function(kernel)
    rng = np.random.default_rng(0)
    A = np.zeros((30, 4))
    B = rng.standard_normal((30, 5))
    curve = match_curve(A, B)
    np.testing.assert_array_equal(curve.dead_a, np.arange(4))
    assert np.all(np.isinf(curve.critical_a))
    # against an empty span every ratio is 1: B's neurons match only at ε = 1 (where anything does)
    np.testing.assert_array_equal(curve.critical_b, 1.0)
    for m in (raymatch.max_match(A, B, 0.99), curve.at(0.99)):
        assert m.size_a == 0 and m.size_b == 0
        assert m.similarity == 0.0
    for m in (raymatch.max_match(A, B, 1.0), curve.at(1.0)):
        assert m.size_a == 0 and m.size_b == 5
        assert m.similarity == 5 / 9
    assert raymatch.simple_matches(A, B, 0.99) == []


# --------------------------------------------------------------------------------------------
# 14. Input types


def _all_results(A, B, eps_values, match_curve=raymatch.match_curve):
    curve = match_curve(A, B)
    out = [curve]
    for eps in eps_values:
        out.append(raymatch.max_match(A, B, eps))
        out.extend(raymatch.simple_matches(A, B, eps, order=3))
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@FEW
@given(pair=layer_pairs(max_neurons=8))
def test_numpy_and_torch_float32_and_float64_inputs_give_the_same_result(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    # The same values in every representation: float32 numbers, held as float32 or float64.
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    A64, B64 = A32.astype(np.float64), B32.astype(np.float64)
    curve = match_curve(A64, B64)
    eps_values = [0.0, *safe_eps(curve)[:: max(1, len(safe_eps(curve)) // 4)], 1.0]
    want = _all_results(A64, B64, eps_values, match_curve)
    for name, (a_in, b_in) in {
        "numpy float32": (A32, B32),
        "torch float32": (torch.from_numpy(A32), torch.from_numpy(B32)),
        "torch float64": (torch.from_numpy(A64), torch.from_numpy(B64)),
        "torch float32 requiring grad": (torch.from_numpy(A32).requires_grad_(), torch.from_numpy(B32)),
        "numpy Fortran order": (np.asfortranarray(A64), np.asfortranarray(B64)),
        "numpy float64 A, torch float32 B": (A64, torch.from_numpy(B32)),
    }.items():
        got = _all_results(a_in, b_in, eps_values, match_curve)
        assert len(got) == len(want), name
        for g, w in zip(got, want, strict=True):
            assert g == w, f"{name}: {g} != {w}"


@pytest.mark.parametrize("kernel", KERNELS)
@FEW
@given(pair=layer_pairs(max_neurons=8))
def test_float32_rounding_of_the_data_changes_nothing_away_from_critical_values(kernel, pair):
    match_curve = curve_function(kernel)
    A, B = pair
    # float32 rounding moves each neuron by ~1e-7 of its norm. Exactly dependent neurons would gain a
    # spurious ~1e-7 direction (a rank change): give every neuron 1% independent noise so that the
    # layers are well conditioned, use a wide margin, and stay away from ε = 0.
    rng = np.random.default_rng(A.shape[0] * 1000 + A.shape[1])
    A = A + 0.01 * rng.standard_normal(A.shape) * np.linalg.norm(A, axis=0) / np.sqrt(A.shape[0])
    B = B + 0.01 * rng.standard_normal(B.shape) * np.linalg.norm(B, axis=0) / np.sqrt(B.shape[0])
    curve = match_curve(A, B)
    curve32 = match_curve(A.astype(np.float32), B.astype(np.float32))
    for eps in safe_eps(curve, margin=1e-3, minimum=1e-2):
        assert_same_match(curve32.at(eps), curve.at(eps), f"eps={eps}")


@pytest.mark.parametrize("kernel", KERNELS)
@FEW
@given(pair=layer_pairs(), center=st.booleans())
def test_factor_inputs_give_the_same_result_as_arrays(kernel, pair, center):
    match_curve = curve_function(kernel)
    A, B = pair
    fa, fb = raymatch.factor(A, center=center), raymatch.factor(B, center=center, name="B")
    assert fa.n_samples == A.shape[0] and fa.n_neurons == A.shape[1] and fa.centered == center
    np.testing.assert_array_equal(fa.live, live(A - A.mean(axis=0)) if center else live(A))
    kw = {} if not center else {"center": True}
    curve = match_curve(A, B, **kw)
    # Arrays share one QR of [A B]; factors are made one side at a time: same numbers up to rounding.
    for other in (match_curve(fa, fb), match_curve(fa, B, **kw), match_curve(A, fb, **kw)):
        np.testing.assert_allclose(other.critical_a, curve.critical_a, rtol=0, atol=1e-9)
        np.testing.assert_allclose(other.critical_b, curve.critical_b, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(other.dead_a, curve.dead_a)
        np.testing.assert_array_equal(other.dead_b, curve.dead_b)
    for eps in [0.0, *safe_eps(curve), 1.0]:
        want = raymatch.max_match(A, B, eps, **kw)
        assert raymatch.max_match(fa, fb, eps) == want
        assert raymatch.max_match(fa, B, eps, **kw) == want
        assert raymatch.simple_matches(fa, fb, eps) == raymatch.simple_matches(A, B, eps, **kw)
        for neuron in all_neurons(want.a, want.b)[:2]:
            assert raymatch.minimal_match(fa, fb, eps, neuron, order=1) == raymatch.minimal_match(
                A, B, eps, neuron, order=1, **kw
            )
    # a factor is reusable: the same factor in many pairs gives the same results
    assert match_curve(fa, fb) == match_curve(fa, fb)


def test_linear_cka_is_one_for_a_layer_and_its_rotation_and_invariant_to_isotropic_scaling():
    from raymatch.match import linear_cka

    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 12))
    Q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert linear_cka(A, A @ Q * 3.0) == pytest.approx(1.0)
    B = rng.standard_normal((200, 9))
    value = linear_cka(A, B)
    assert 0.0 < value < 0.5
    assert linear_cka(B, A) == pytest.approx(value)
    assert linear_cka(A, np.ones((200, 3))) == 0.0
