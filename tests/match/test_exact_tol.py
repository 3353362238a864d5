"""The exact (ε = 0) tolerance follows the precision of the activations (issue 15, defect 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymatch.match import (
    EXACT_TOL,
    EXACT_TOL_EPS,
    exact_tolerance,
    factor,
    max_match,
    minimal_match,
    simple_matches,
)

from .kernels import KERNELS, curve_function

FLOAT32_TOL = 1024 * 2.0**-23  # = 2⁻¹³ ≈ 1.22e-4


@pytest.mark.parametrize(("dtype", "expected"), [
    (np.float32, FLOAT32_TOL), ("float32", FLOAT32_TOL), (torch.float32, FLOAT32_TOL),
    (np.float16, FLOAT32_TOL), (torch.bfloat16, FLOAT32_TOL),  # narrower floats count as float32
    (np.float64, EXACT_TOL), (torch.float64, EXACT_TOL), (np.int64, EXACT_TOL), (np.uint8, EXACT_TOL),
])
def test_the_tolerance_of_each_dtype(dtype, expected):
    assert EXACT_TOL_EPS == 1024
    assert exact_tolerance(dtype) == expected


def twins(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ReLU layer (300 samples × 6 neurons) and its permuted columns, perturbed by ``noise`` relative to each."""
    rng = np.random.default_rng(seed)
    A = np.maximum(rng.standard_normal((300, 8)) @ rng.standard_normal((8, 6)), 0.0)
    B = A[:, rng.permutation(6)]
    B = B + noise * np.linalg.norm(B, axis=0) / np.sqrt(300) * rng.standard_normal(B.shape)
    return A, B


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_activations_match_exactly_through_their_rounding(kernel):
    """Ratios of ~1e-5 (rounding of a changed summation order, exaggerated) are exact for float32, not float64."""
    match_curve = curve_function(kernel)
    A, B = twins(1e-5)
    as_float64 = match_curve(A, B)
    assert 1e-6 < as_float64.max_epsilon < FLOAT32_TOL  # float64: the twin is no exact match ...
    assert max_match(A, B, 0.0).size_a < 6
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    for curve in (match_curve(A32, B32), match_curve(torch.from_numpy(A32), torch.from_numpy(B32)),
                  match_curve(A, B, exact_tol=FLOAT32_TOL),
                  match_curve(factor(A32), factor(B32), exact_tol=FLOAT32_TOL)):
        assert curve.critical_a.tolist() == [0.0] * 6 and curve.critical_b.tolist() == [0.0] * 6  # ... float32: it is
        assert curve.at(0.0).similarity == 1.0
    assert max_match(A32, B32, 0.0).similarity == 1.0
    assert max_match(A32, A, 0.0).similarity == 1.0  # the coarser of the two dtypes decides
    assert minimal_match(A32, B32, 0.0, ("a", 0)) is not None
    assert sum(m.size_a for m in simple_matches(A32, B32, 0.0)) == 6
    # factors are float64: without exact_tol they keep EXACT_TOL, like float64 arrays
    assert match_curve(factor(A32), factor(B32)).max_epsilon > 1e-6


@pytest.mark.parametrize("kernel", KERNELS)
def test_above_the_tolerance_nothing_changes(kernel):
    """Differences well above float32 rounding are no exact match at either precision; curve and max_match agree."""
    match_curve = curve_function(kernel)
    A, B = twins(1e-2)
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    curve = match_curve(A32, B32)
    assert curve.max_epsilon > 1e-3 and (curve.critical_a > 0).any()
    for eps in (0.0, 1e-4, 0.005, 0.02, 0.5):
        assert curve.at(eps) == max_match(A32, B32, eps)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [0.0, 1e-7, 1.0, float("nan"), "tight", -1e-3])
def test_a_bad_exact_tol_is_refused(kernel, bad):
    match_curve = curve_function(kernel)
    A, B = twins(0.0)
    with pytest.raises(ValueError, match=r"exact_tol must be a number in \[1e-06, 1\)"):
        match_curve(A, B, exact_tol=bad)
