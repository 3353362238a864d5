"""Linear centred kernel alignment (Kornblith et al. 2019), the context metric beside the match similarity."""

from __future__ import annotations

import numpy as np

from .inputs import as_activation_matrix, check_same_samples


def linear_cka(A, B) -> float:
    """Compute the linear CKA of two layers: ``‖Bᵀ A‖²_F / (‖Aᵀ A‖_F ‖Bᵀ B‖_F)`` after centring every column.

    Parameters
    ----------
    A : array_like or torch.Tensor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like or torch.Tensor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.

    Returns
    -------
    float
        In [0, 1]; 0 when either layer is constant over the samples.

    Examples
    --------
    CKA is invariant to rotations and isotropic scaling of the neurons, but not to a general
    invertible mix, which the match similarity ignores:

    >>> import numpy as np
    >>> from raymatch.match import linear_cka, max_match
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 5))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    >>> round(linear_cka(A, 3.0 * A @ Q), 3)
    1.0
    >>> M = rng.standard_normal((5, 5))
    >>> round(linear_cka(A, A @ M), 3), max_match(A, A @ M, 0.0).similarity
    (0.619, 1.0)

    Unrelated layers give a small value, a constant layer 0:

    >>> round(linear_cka(A, rng.standard_normal((100, 5))), 3)
    0.09
    >>> linear_cka(A, np.ones((100, 3)))
    0.0
    """
    a = as_activation_matrix(A, "A")
    b = as_activation_matrix(B, "B")
    check_same_samples(a.shape[0], b.shape[0])
    a -= a.mean(axis=0)
    b -= b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    scale = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / scale) if scale > 0 else 0.0
