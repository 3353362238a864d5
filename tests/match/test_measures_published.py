"""The measures against independent published implementations: repsim (Kisung You's C++/Eigen library: CCA,
PWCCA, linear CKA) and SciPy's ``scipy.spatial.procrustes``.

repsim's ``cca(..., "pillai")`` is the nuclear norm of the centred spans' cross product over the smaller raw rank,
i.e. the mean canonical correlation when centring drops no direction; its ``pwcca`` averages the two directions'
weights, as raymatch does. SciPy's ``procrustes`` disparity is ``1 − ‖X̃ᵀ Ỹ‖²_*`` after centring and scaling to
unit Frobenius norm, so raymatch's distance is ``1 − √(1 − disparity)``. (repsim's SVCCA whitens before truncating,
unlike Raghu et al.; raymatch's SVCCA is checked against the oracle only. netrep is not on the package index; the
svcca authors' code is not packaged on its own.)
"""

from __future__ import annotations

import numpy as np
import pytest
import repsim
from scipy.spatial import procrustes as scipy_procrustes

from raymatch.match import cross_product, factor, pair_measures
from raymatch.match.synthetic import relu_pair

TOL = 1e-9


def cases():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((400, 4))
    A = np.hstack([Z @ rng.standard_normal((4, 6)), rng.standard_normal((400, 3))]) + 2.0
    B = np.hstack([Z[:, :2] @ rng.standard_normal((2, 3)) + 0.3 * rng.standard_normal((400, 3)),
                   rng.standard_normal((400, 2))])
    yield "planted", A, B
    A, B = relu_pair(600, 64, 32, seed=1, dtype=np.float64)  # repsim's CKA forms n_samples² kernels
    yield "relu 64/32", A, B
    A, B = relu_pair(400, 40, 40, seed=2, dtype=np.float64)
    yield "relu 40/40", A, B


CASES = list(cases())


@pytest.fixture(params=CASES, ids=[name for name, _, _ in CASES])
def pair(request):
    _, A, B = request.param
    fa, fb = factor(A), factor(B)  # raw factors, as a study's pair task has them
    return A, B, pair_measures(fa, fb, cross_product(fa, fb))


def test_cca_equals_repsims_pillai_cca(pair):
    A, B, values = pair
    assert abs(values["cca"] - repsim.cca([A, B], "pillai")[0, 1]) <= TOL


def test_pwcca_equals_repsims_pwcca(pair):
    A, B, values = pair
    assert abs(values["pwcca"] - repsim.pwcca([A, B])[0, 1]) <= TOL


def test_cka_equals_repsims_linear_cka(pair):
    A, B, values = pair
    assert abs(values["cka"] - repsim.cka([A, B], "linear", "gretton")[0, 1]) <= TOL


def test_procrustes_equals_scipys_procrustes_disparity(pair):
    A, B, values = pair
    width = max(A.shape[1], B.shape[1])
    pad = lambda X: np.hstack([X, np.zeros((X.shape[0], width - X.shape[1]))])  # noqa: E731
    _, _, disparity = scipy_procrustes(pad(A), pad(B))
    assert abs(values["procrustes"] - (1.0 - np.sqrt(1.0 - disparity))) <= TOL
