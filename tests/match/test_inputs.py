"""Bad input fails early with a ``ValueError`` that names the argument and the problem; good input
is never modified in place; results convert to plain Python values."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import raymatch

N_SAMPLES, N_A, N_B = 24, 5, 6


def layers(seed: int = 0):
    """A partially matched pair: three shared latent directions plus private neurons."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((N_SAMPLES, 3))
    A = np.hstack([Z @ rng.standard_normal((3, 3)), rng.standard_normal((N_SAMPLES, N_A - 3))])
    B = np.hstack([Z @ rng.standard_normal((3, 4)), rng.standard_normal((N_SAMPLES, N_B - 4))])
    return A, B


#: Every public entry point that takes both layers, with otherwise valid arguments.
PAIR_CALLS = {
    "max_match": lambda A, B: raymatch.max_match(A, B, 0.3),
    "match_curve": lambda A, B: raymatch.match_curve(A, B),
    "minimal_match": lambda A, B: raymatch.minimal_match(A, B, 0.3, ("a", 0)),
    "simple_matches": lambda A, B: raymatch.simple_matches(A, B, 0.3),
}
EPS_CALLS = {
    "max_match": lambda A, B, eps: raymatch.max_match(A, B, eps),
    "minimal_match": lambda A, B, eps: raymatch.minimal_match(A, B, eps, ("a", 0)),
    "simple_matches": lambda A, B, eps: raymatch.simple_matches(A, B, eps),
    "MatchCurve.at": lambda A, B, eps: raymatch.match_curve(A, B).at(eps),
}


def bad_pair(side: str, bad):
    A, B = layers()
    return (bad, B) if side == "A" else (A, bad)


def with_non_finite(values, count: int = 3):
    bad = np.array(values, dtype=np.float64, copy=True)
    flat = bad.reshape(-1)
    for i, value in zip((1, 7, 20, 33), (np.nan, np.inf, -np.inf, np.nan), strict=True):
        if count > 0:
            flat[i] = value
            count -= 1
    return bad


# --------------------------------------------------------------------------------------------
# Non-finite values


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("call", list(PAIR_CALLS), ids=str)
def test_non_finite_values_are_rejected_with_their_count(call, side, count):
    A, B = layers()
    bad = with_non_finite(A if side == "A" else B, count)
    args = (bad, B) if side == "A" else (A, bad)
    with pytest.raises(ValueError, match=rf"^{side} has {count} non-finite values \(NaN or Inf\)"):
        PAIR_CALLS[call](*args)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_each_kind_of_non_finite_value_is_rejected(value):
    A, B = layers()
    A[2, 3] = value
    with pytest.raises(ValueError, match=r"A has 1 non-finite values"):
        raymatch.max_match(A, B, 0.1)
    with pytest.raises(ValueError, match=r"A has 1 non-finite values"):
        raymatch.factor(A)


@pytest.mark.parametrize("dtype", [np.float32, torch.float32, torch.float64])
def test_non_finite_values_in_float32_and_torch_inputs_are_rejected(dtype):
    A, B = layers()
    bad = with_non_finite(B, 2)
    bad = torch.from_numpy(bad).to(dtype) if isinstance(dtype, torch.dtype) else bad.astype(dtype)
    with pytest.raises(ValueError, match=r"^B has 2 non-finite values"):
        raymatch.max_match(A, bad, 0.2)
    with pytest.raises(ValueError, match=r"^B has 2 non-finite values"):
        raymatch.match_curve(A, bad)


def test_factor_names_the_layer_in_its_messages():
    A, _ = layers()
    with pytest.raises(ValueError, match=r"^A has 3 non-finite values .* out of 120"):
        raymatch.factor(with_non_finite(A, 3))
    with pytest.raises(ValueError, match=r"^conv3 has 2 non-finite values"):
        raymatch.factor(with_non_finite(A, 2), name="conv3")
    with pytest.raises(ValueError, match=r"^conv3 must be a 2-D activation matrix"):
        raymatch.factor(A[:, 0], name="conv3")


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("call", list(PAIR_CALLS), ids=str)
@pytest.mark.parametrize("rows", [(24, 25), (25, 24), (1, 24)])
def test_different_numbers_of_samples_are_rejected(call, rows):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((rows[0], N_A))
    B = rng.standard_normal((rows[1], N_B))
    message = rf"A and B must have the same number of samples \(rows\): A has {rows[0]}, B has {rows[1]}"
    with pytest.raises(ValueError, match=message):
        PAIR_CALLS[call](A, B)
    with pytest.raises(ValueError, match=message):  # also when the layers come factored
        PAIR_CALLS[call](raymatch.factor(A), raymatch.factor(B, name="B"))
    with pytest.raises(ValueError, match=message):
        PAIR_CALLS[call](raymatch.factor(A), B)


@pytest.mark.parametrize("shape", [(N_SAMPLES,), (2, N_SAMPLES, N_A), (1, 1, 1, 1), ()])
@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("call", list(PAIR_CALLS), ids=str)
def test_inputs_that_are_not_matrices_are_rejected(call, side, shape):
    bad = np.ones(shape)
    expected = rf"^{side} must be a 2-D activation matrix \(n_samples, n_neurons\); got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=expected):
        PAIR_CALLS[call](*bad_pair(side, bad))
    with pytest.raises(ValueError, match=expected):
        PAIR_CALLS[call](*bad_pair(side, torch.ones(shape)))


@pytest.mark.parametrize("shape", [(N_SAMPLES,), (2, N_SAMPLES, N_A)])
def test_factor_rejects_inputs_that_are_not_matrices(shape):
    with pytest.raises(ValueError, match=rf"A must be a 2-D .*got shape {re.escape(str(shape))}"):
        raymatch.factor(np.ones(shape))


@pytest.mark.parametrize("shape", [(0, N_A), (N_SAMPLES, 0), (0, 0)])
@pytest.mark.parametrize("side", ["A", "B"])
@pytest.mark.parametrize("call", [*PAIR_CALLS, "factor"], ids=str)
def test_empty_matrices_are_rejected(call, side, shape):
    expected = rf"^{side} is empty: shape {re.escape(str(shape))}"
    for empty in (np.zeros(shape), torch.zeros(shape)):
        with pytest.raises(ValueError, match=expected):
            if call == "factor":
                raymatch.factor(empty, name=side)
            else:
                PAIR_CALLS[call](*bad_pair(side, empty))


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((N_SAMPLES, N_A), dtype=complex),
        np.full((N_SAMPLES, N_A), "x"),
        np.full((N_SAMPLES, N_A), None, dtype=object),
    ],
    ids=["complex", "strings", "objects"],
)
def test_non_real_inputs_are_rejected(bad):
    with pytest.raises(ValueError, match=r"^A must hold real numbers; got dtype"):
        raymatch.max_match(bad, layers()[1], 0.1)
    with pytest.raises(ValueError, match=r"^B must hold real numbers; got dtype"):
        raymatch.match_curve(layers()[0], bad)


def test_integer_and_nested_list_inputs_are_accepted():
    rng = np.random.default_rng(2)
    A = rng.integers(-5, 6, (N_SAMPLES, N_A))
    B = rng.integers(-5, 6, (N_SAMPLES, N_B))
    want = raymatch.max_match(A.astype(np.float64), B.astype(np.float64), 0.6)
    assert raymatch.max_match(A, B, 0.6) == want
    assert raymatch.max_match(A.tolist(), B.tolist(), 0.6) == want
    assert raymatch.max_match(torch.from_numpy(A), torch.from_numpy(B), 0.6) == want


# --------------------------------------------------------------------------------------------
# ε


@pytest.mark.parametrize(
    "eps",
    [-0.1, -1e-12, 1.0000001, 1.5, np.inf, -np.inf, np.nan],
    ids=["-0.1", "-1e-12", "1+1e-7", "1.5", "inf", "-inf", "nan"],
)
@pytest.mark.parametrize("call", list(EPS_CALLS), ids=str)
def test_eps_outside_zero_one_is_rejected(call, eps):
    A, B = layers()
    with pytest.raises(ValueError, match=r"^eps must lie in \[0, 1\]; got"):
        EPS_CALLS[call](A, B, eps)


@pytest.mark.parametrize("eps", ["abc", None, [0.1], object()], ids=["str", "None", "list", "object"])
@pytest.mark.parametrize("call", list(EPS_CALLS), ids=str)
def test_eps_that_is_not_a_number_is_rejected(call, eps):
    A, B = layers()
    with pytest.raises(ValueError, match=r"^eps must be a number in \[0, 1\]; got"):
        EPS_CALLS[call](A, B, eps)


@pytest.mark.parametrize("eps", [0, 0.0, 1, 1.0, np.float32(0.5), np.float64(0.25)])
def test_eps_at_the_ends_and_numpy_scalars_are_accepted(eps):
    A, B = layers()
    m = raymatch.max_match(A, B, eps)
    assert m.eps == float(eps) and isinstance(m.eps, float)
    assert raymatch.match_curve(A, B).at(eps) == m


def test_bad_eps_is_rejected_before_bad_arrays_are_read():
    # the cheap scalar check comes first; either way the message names the argument
    with pytest.raises(ValueError, match=r"^eps must lie"):
        raymatch.max_match(np.full((3, 3), np.nan), np.ones((3, 3)), 2.0)


# --------------------------------------------------------------------------------------------
# neuron, order, size, center


@pytest.mark.parametrize(
    ("neuron", "expected"),
    [
        (("c", 0), r"^neuron side must be 'a' or 'b'; got 'c'"),
        (("A", 0), r"^neuron side must be 'a' or 'b'; got 'A'"),
        ((0, 1), r"^neuron side must be 'a' or 'b'; got 0"),
        (("a", N_A), rf"^neuron index must be an integer in \[0, {N_A}\) for side 'a'; got {N_A}"),
        (("b", N_B), rf"^neuron index must be an integer in \[0, {N_B}\) for side 'b'; got {N_B}"),
        (("b", 100), rf"^neuron index must be an integer in \[0, {N_B}\) for side 'b'; got 100"),
        (("a", -1), r"^neuron index must be an integer in \[0, 5\) for side 'a'; got -1"),
        (("a", 1.0), r"^neuron index must be an integer .* got 1.0"),
        (("a", True), r"^neuron index must be an integer .* got True"),
        (("a", "0"), r"^neuron index must be an integer .* got '0'"),
        (("a", None), r"^neuron index must be an integer .* got None"),
        ("a", r"^neuron must be \('a', j\) or \('b', j\); got 'a'"),
        (None, r"^neuron must be \('a', j\) or \('b', j\); got None"),
        (3, r"^neuron must be \('a', j\) or \('b', j\); got 3"),
        (("a", 0, 1), r"^neuron must be \('a', j\) or \('b', j\); got \('a', 0, 1\)"),
    ],
)
def test_bad_neuron_is_rejected(neuron, expected):
    A, B = layers()
    with pytest.raises(ValueError, match=expected):
        raymatch.minimal_match(A, B, 0.3, neuron)
    with pytest.raises(ValueError, match=expected):  # also with factors and with a seeded order
        raymatch.minimal_match(raymatch.factor(A), raymatch.factor(B), 0.3, neuron, order=4)


@pytest.mark.parametrize("neuron", [("a", 0), ("b", N_B - 1), ("a", np.int64(2)), ["b", 1], ("b", np.int32(0))])
def test_good_neuron_forms_are_accepted(neuron):
    A, B = layers()
    m = raymatch.minimal_match(A, B, 0.3, neuron)
    assert m is None or m.neuron == (str(neuron[0]), int(neuron[1]))


@pytest.mark.parametrize("order", ["random", "", "INDEX", 1.5, 2.0, True, False, [1], (1,), -1, np.int64(-3)], ids=repr)
@pytest.mark.parametrize("call", ["minimal_match", "simple_matches", "candidate_order"], ids=str)
def test_bad_order_is_rejected(call, order):
    A, B = layers()
    with pytest.raises(ValueError, match=r"^order must be"):
        if call == "minimal_match":
            raymatch.minimal_match(A, B, 0.3, ("a", 0), order=order)
        elif call == "simple_matches":
            raymatch.simple_matches(A, B, 0.3, order=order)
        else:
            raymatch.match.candidate_order(np.arange(2), np.arange(3), order)


@pytest.mark.parametrize("order", [None, "index", 0, 7, np.int64(9), 2**40])
def test_good_orders_are_accepted(order):
    A, B = layers()
    label = "index" if order in (None, "index") else int(order)
    assert all(m.order == label for m in raymatch.simple_matches(A, B, 0.3, order=order))
    m = raymatch.minimal_match(A, B, 1.0, ("a", 0), order=order)
    assert m.order == label and type(m.order) is type(label)


@pytest.mark.parametrize("size", [-1, 1.5, True, "2", None], ids=repr)
def test_bad_min_epsilon_size_is_rejected(size):
    A, B = layers()
    with pytest.raises(ValueError, match=r"^size must be a non-negative integer; got"):
        raymatch.match_curve(A, B).min_epsilon(size)


def test_mixing_centered_and_uncentered_factors_is_rejected():
    A, B = layers()
    with pytest.raises(ValueError, match=r"^A is a Factor with center=True, but center=False was asked"):
        raymatch.max_match(raymatch.factor(A, center=True), B, 0.3, center=False)
    with pytest.raises(ValueError, match=r"^B is a Factor with center=False, but center=True was asked"):
        raymatch.match_curve(A, raymatch.factor(B), center=True)
    with pytest.raises(ValueError, match=r"^A and B must both be centered or both not"):
        raymatch.simple_matches(raymatch.factor(A, center=True), raymatch.factor(B), 0.3)


# --------------------------------------------------------------------------------------------
# Inputs are never modified; results are plain values


def _run_everything(A, B, center=None):
    kw = {} if center is None else {"center": center}
    out = [raymatch.max_match(A, B, 0.3, **kw), raymatch.match_curve(A, B, **kw)]
    out.append(raymatch.minimal_match(A, B, 0.6, ("b", 0), order=3, **kw))
    out.extend(raymatch.simple_matches(A, B, 0.6, **kw))
    out.append(raymatch.factor(A, center=bool(center)))
    return out


@pytest.mark.parametrize("center", [None, False, True])
@pytest.mark.parametrize(
    "form",
    ["float64", "float32", "fortran", "strided view", "torch float64", "torch float32", "with dead neuron"],
)
def test_inputs_are_not_modified_in_place(form, center):
    A, B = layers(3)
    if form == "with dead neuron":
        A[:, 1] = 0.0
    if form == "float32":
        A, B = A.astype(np.float32), B.astype(np.float32)
    elif form == "fortran":
        A, B = np.asfortranarray(A), np.asfortranarray(B)
    elif form == "strided view":
        A, B = np.hstack([A, A])[:, ::2], np.hstack([B, B])[:, ::2]
    elif form.startswith("torch"):
        dtype = torch.float32 if form.endswith("32") else torch.float64
        A, B = torch.from_numpy(A).to(dtype), torch.from_numpy(B).to(dtype)
    copy_a = A.clone() if isinstance(A, torch.Tensor) else A.copy()
    copy_b = B.clone() if isinstance(B, torch.Tensor) else B.copy()
    _run_everything(A, B, center)
    if isinstance(A, torch.Tensor):
        assert torch.equal(A, copy_a) and torch.equal(B, copy_b)
    else:
        np.testing.assert_array_equal(A, copy_a)
        np.testing.assert_array_equal(B, copy_b)
        assert A.dtype == copy_a.dtype


def _assert_plain(value, path="row"):
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, f"{path}: key {key!r}"
            _assert_plain(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_plain(item, f"{path}[{i}]")
    else:
        assert type(value) in (int, float, str, bool, type(None)), f"{path}: {type(value)} {value!r}"


def test_results_convert_to_plain_python_values():
    A, B = layers()
    A[:, 2] = 0.0  # a dead neuron: an infinite critical ε
    match = raymatch.max_match(A, B, 0.3)
    curve = raymatch.match_curve(A, B)
    simple = raymatch.simple_matches(A, B, 1.0, order=5)
    minimal = raymatch.minimal_match(A, B, 1.0, ("b", 1))
    assert simple and minimal is not None
    for result in (match, curve, curve.at(0.5), minimal, *simple):
        row = result.to_dict()
        _assert_plain(row)
        assert json.loads(json.dumps(row)) == row
    row = match.to_dict()
    assert row["a"] == match.a.tolist() and row["b"] == match.b.tolist()
    assert row["dead_a"] == [2] and row["dead_b"] == []
    assert row["size_a"] == match.size_a and row["size_b"] == match.size_b
    assert row["similarity"] == match.similarity
    assert (row["n_samples"], row["n_a"], row["n_b"], row["eps"]) == (N_SAMPLES, N_A, N_B, 0.3)
    row = curve.to_dict()
    assert row["critical_a"][2] == float("inf")
    assert (row["n_a"], row["n_b"]) == (N_A, N_B)
    assert row["max_epsilon"] == curve.max_epsilon
    row = minimal.to_dict()
    assert row["neuron"] == ["b", 1] and row["order"] == "index"
    assert simple[0].to_dict()["order"] == 5
