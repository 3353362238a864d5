"""Linear centred kernel alignment (Kornblith et al. 2019), the context metric beside the match similarity."""

from __future__ import annotations

import numpy as np

from .inputs import as_activation_matrix, check_same_samples


def linear_cka(A, B) -> float:
    """Linear CKA of two layers: ``‖Bᵀ A‖²_F / (‖Aᵀ A‖_F ‖Bᵀ B‖_F)`` after centring every column.

    Parameters
    ----------
    A : array_like or torch.Tensor, shape (n_samples, n_a)
    B : array_like or torch.Tensor, shape (n_samples, n_b)

    Returns
    -------
    float in [0, 1]; 0 when either layer is constant over the samples.
    """
    a = as_activation_matrix(A, "A")
    b = as_activation_matrix(B, "B")
    check_same_samples(a.shape[0], b.shape[0])
    a -= a.mean(axis=0)
    b -= b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    scale = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / scale) if scale > 0 else 0.0
