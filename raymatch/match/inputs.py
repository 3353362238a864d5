"""Input conversion, validation and the documented numerical tolerances.

Every public function of :mod:`raymatch.match` passes its arrays through
:func:`activation_array`, so bad input fails the same way everywhere: one ``ValueError``
that names the argument and the problem.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: A neuron is *dead* when the norm of its activation vector is at most ``DEAD_RTOL`` times the
#: largest activation norm of its layer. Dead neurons are in no match and still count in the
#: denominator of the similarity (the authors' convention). A layer whose largest norm is 0 is all dead.
DEAD_RTOL = 1e-6

#: Directions whose singular value is at most ``RANK_RTOL`` times the largest singular value of the
#: column-normalised activation matrix are treated as absent: exact (up to rounding) linear
#: dependencies such as duplicated neurons collapse, while genuinely near-collinear neurons with
#: condition numbers up to ~1e9 keep their own direction.
RANK_RTOL = 1e-10

#: ε = 0 asks for an *exact* match (equal spans), which floating point cannot decide without a
#: tolerance. Every match decision therefore keeps a neuron when its ratio is at most
#: ``max(eps, EXACT_TOL)``; critical ε values at or below ``EXACT_TOL`` are reported as 0.
EXACT_TOL = 1e-6


def activation_array(value: Any, name: str) -> np.ndarray:
    """Validate ``value`` as an activation matrix and return it as a numpy array (no copy if possible).

    Parameters
    ----------
    value : array_like or torch.Tensor, shape (n_samples, n_neurons)
        Activations, one row per sample and one column per neuron; any real dtype.
    name : str
        The argument's name, used in error messages.

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_neurons)
        In the input's own dtype (a torch tensor of integers comes back as float64, of
        float16/bfloat16 as float32).

    Raises
    ------
    ValueError
        When the value is not a non-empty 2-D matrix of finite real numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.inputs import activation_array
    >>> activation_array([[1, 2], [3, 4]], "A").dtype
    dtype('int64')
    >>> activation_array(np.ones(3), "A")
    Traceback (most recent call last):
    ...
    ValueError: A must be a 2-D activation matrix (n_samples, n_neurons); got shape (3,)
    >>> activation_array([[1.0, np.nan]], "B")
    Traceback (most recent call last):
    ...
    ValueError: B has 1 non-finite values (NaN or Inf) out of 2
    """
    if type(value).__module__.startswith("torch"):
        value = value.detach().to("cpu")
        if not value.dtype.is_floating_point and not value.dtype.is_complex:
            value = value.double()
        elif value.dtype.itemsize < 4:  # float16 / bfloat16 have no (or no exact) numpy twin
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value)
    except Exception as error:  # pragma: no cover - depends on the foreign object
        raise ValueError(f"{name} cannot be read as an array: {error}") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D activation matrix (n_samples, n_neurons); got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise ValueError(f"{name} has {bad} non-finite values (NaN or Inf) out of {array.size}")
    return array


def as_activation_matrix(value: Any, name: str) -> np.ndarray:
    """Validate ``value`` and return it as a fresh column-major float64 matrix (n_samples, n_neurons).

    Column-major (Fortran) order is LAPACK's: a QR reads it without another copy.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.inputs import as_activation_matrix
    >>> A = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> M = as_activation_matrix(A, "A")
    >>> M.dtype, M.flags.f_contiguous, M is A
    (dtype('float64'), True, False)
    """
    return np.array(activation_array(value, name), dtype=np.float64, order="F", copy=True)


def check_eps(eps: Any, name: str = "eps") -> float:
    """Return ``eps`` as a float in [0, 1], or raise a ``ValueError`` naming it.

    Examples
    --------
    >>> from raymatch.match.inputs import check_eps
    >>> check_eps(1)
    1.0
    >>> check_eps(1.5)
    Traceback (most recent call last):
    ...
    ValueError: eps must lie in [0, 1]; got 1.5
    """
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1]; got {eps!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {eps!r}")
    return value


def effective_eps(eps: float) -> float:
    """Return the threshold a ratio is compared with: ``max(eps, EXACT_TOL)``.

    Examples
    --------
    ε = 0 (an exact match) is decided with the tolerance ``EXACT_TOL``:

    >>> from raymatch.match.inputs import effective_eps
    >>> effective_eps(0.0), effective_eps(0.25)
    (1e-06, 0.25)
    """
    return max(eps, EXACT_TOL)


def check_same_samples(n_a: int, n_b: int) -> None:
    """Raise a ``ValueError`` unless both sides have the same number of samples (rows).

    Examples
    --------
    >>> from raymatch.match.inputs import check_same_samples
    >>> check_same_samples(10, 10)
    >>> check_same_samples(10, 12)
    Traceback (most recent call last):
    ...
    ValueError: A and B must have the same number of samples (rows): A has 10, B has 12
    """
    if n_a != n_b:
        raise ValueError(
            f"A and B must have the same number of samples (rows): A has {n_a}, B has {n_b}"
        )
