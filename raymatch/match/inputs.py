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
#: ``max(eps, exact_tol)``; critical ε values at or below ``exact_tol`` are reported as 0. ``EXACT_TOL``
#: is the smallest tolerance, the one of float64 (and integer) activations: the computation's own floor.
EXACT_TOL = 1e-6

#: The exact tolerance of activations stored in a floating dtype is ``EXACT_TOL_EPS`` machine epsilons of
#: that dtype, at least ``EXACT_TOL`` (see :func:`exact_tolerance`): 1024 × 2⁻²³ ≈ 1.22e-4 for float32.
EXACT_TOL_EPS = 1024

#: The range of ε, both ends included: a ratio is the sine of an angle, so at ε = 1 every live neuron matches.
EPS_MIN, EPS_MAX = 0.0, 1.0
#: What an ε must be, as the messages of :func:`check_eps` and of the SQL macros that take an ε say it.
EPS_RULE = f"a number in [{EPS_MIN:g}, {EPS_MAX:g}]"


def exact_tolerance(dtype: Any) -> float:
    """The tolerance of an exact (ε = 0) match between activations stored in ``dtype``.

    ``max(EXACT_TOL, EXACT_TOL_EPS · eps(dtype))``: 1.22e-4 for float32, ``EXACT_TOL`` = 1e-6 for float64
    and integers. Narrower floats (float16, bfloat16) count as float32, the precision networks compute in.

    Parameters
    ----------
    dtype : numpy dtype, torch dtype or anything :class:`numpy.dtype` accepts

    Returns
    -------
    float

    Notes
    -----
    Two networks computing the same function — a network and its twin with the channels or units of a
    layer permuted — give the same activations only up to the rounding of a changed summation order:
    each activation is a sum over the layer's fan-in ``K``, whose rounding error grows like ``√K · u``
    relative to the activation (``u`` = eps / 2), and it carries on through the layers above. Measured
    on ``small_cnn`` and its permuted twin (conv1's channels and fc1's units; 360 digits, widths 0.5–4,
    fan-ins 72–2,048): the ratios of the twin's neurons against the original's span reach 0.3e-6–2.2e-6,
    about 3–18 float32 epsilons; relu3 of a width-1 twin had two of its 58 live neurons at 1.009e-6 and
    1.017e-6, just above the old fixed ``EXACT_TOL = 1e-6``. 1024 epsilons leave a factor of ~50 above
    the largest of those for deeper networks and wider fan-ins (a VGG's 4,608) while staying far below
    any ε a study asks about (1.22e-4). float64 activations would need far less (1024 × 2⁻⁵² ≈ 2.3e-13),
    but the algorithm's own float64 arithmetic (QR factors, rank decisions at ``RANK_RTOL``) keeps the
    floor ``EXACT_TOL``.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.inputs import exact_tolerance
    >>> exact_tolerance(np.float32), exact_tolerance("float64"), exact_tolerance(np.int64)
    (0.0001220703125, 1e-06, 1e-06)
    """
    if type(dtype).__module__.startswith("torch"):
        dtype = "float64" if dtype.itemsize >= 8 or not dtype.is_floating_point else "float32"
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return EXACT_TOL
    return max(EXACT_TOL, EXACT_TOL_EPS * float(np.finfo(np.promote_types(dtype, np.float32)).eps))


def source_dtype(value: Any) -> np.dtype | None:
    """The dtype activations come in, before any conversion; None for a factor (already float64).

    Parameters
    ----------
    value : array_like, torch.Tensor, Factor or Prepared

    Returns
    -------
    numpy.dtype or None
        What :func:`exact_tolerance` is given for ``value``; nothing is validated or copied (lists are
        read with :func:`numpy.asarray`).
    """
    if type(value).__module__.startswith("torch"):
        floating = value.dtype.is_floating_point
        return np.dtype("float64" if not floating or value.dtype.itemsize >= 8 else "float32")
    if hasattr(value, "coords") and hasattr(value, "live"):  # a Factor or a CompactFactor
        return None
    if hasattr(value, "columns") and hasattr(value, "live"):  # a Prepared
        return None
    dtype = getattr(value, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def resolve_exact_tol(exact_tol: Any, *values: Any) -> float:
    """The exact tolerance of a pair: ``exact_tol`` when given, else that of the coarser dtype of ``values``.

    Parameters
    ----------
    exact_tol : float or None
        A tolerance in [``EXACT_TOL``, 1) chosen by the caller (e.g. from the dtype of the stored activations a
        factor was made from), or None.
    *values
        The pair's inputs (arrays, tensors or factors); a factor alone gives ``EXACT_TOL``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``exact_tol`` not a number in [``EXACT_TOL``, 1).
    """
    if exact_tol is None:
        return max((exact_tolerance(dtype) for dtype in map(source_dtype, values) if dtype is not None),
                   default=EXACT_TOL)
    try:
        value = float(exact_tol)
    except (TypeError, ValueError):
        raise ValueError(f"exact_tol must be a number in [{EXACT_TOL}, 1); got {exact_tol!r}") from None
    if math.isnan(value) or not EXACT_TOL <= value < 1.0:
        raise ValueError(f"exact_tol must be a number in [{EXACT_TOL}, 1); got {exact_tol!r}")
    return value


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
    """Return ``eps`` as a float in [``EPS_MIN``, ``EPS_MAX``] = [0, 1], or raise a ``ValueError`` naming it.

    The one ε range check: the SQL macros that take an ε (``matches_at``, ``universality``) state the same rule
    (:func:`raymatch.results.views.eps_check_sql`, tested against this function).

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
        raise ValueError(f"{name} must be {EPS_RULE}; got {eps!r}") from None
    if math.isnan(value) or not EPS_MIN <= value <= EPS_MAX:
        raise ValueError(f"{name} must lie in [{EPS_MIN:g}, {EPS_MAX:g}]; got {eps!r}")
    return value


def in_match(critical: Any, eps: Any, exact_tol: Any = EXACT_TOL) -> Any:
    """Whether a neuron of critical ε ``critical`` is in the maximum match at ``eps``: the one membership rule.

    A neuron is in the maximum match at ε iff its critical ε is at most ``max(eps, exact_tol)``; a dead neuron
    (critical ε ``inf``) never is. ``matches``, ``matches_at(eps)`` and ``universality(eps)`` state it in SQL
    (:func:`raymatch.results.views.membership_sql`, tested against this function); :meth:`MatchCurve.at
    <raymatch.match.MatchCurve.at>` and the report's step functions call this function.

    Parameters
    ----------
    critical : float or numpy.ndarray
        Critical ε of one neuron, or of several (any shape).
    eps : float or numpy.ndarray
        The ε of the match, in [0, 1] (not checked here: see :func:`check_eps`); broadcast against ``critical``.
    exact_tol : float or numpy.ndarray, default ``EXACT_TOL``
        The exact tolerance of the pair (``exact_tol`` of its curve row).

    Returns
    -------
    bool or numpy.ndarray of bool
        A bool for scalars, else an array of the broadcast shape.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match.inputs import in_match
    >>> in_match(0.25, 0.25), in_match(0.2500001, 0.25), in_match(1e-4, 0.0, exact_tol=1.22e-4)
    (True, False, True)
    >>> in_match(np.array([0.0, 0.3, np.inf]), 1.0).tolist()
    [True, True, False]
    """
    member = np.less_equal(critical, np.maximum(eps, exact_tol))
    return bool(member) if np.ndim(member) == 0 else member


def effective_eps(eps: float, exact_tol: float = EXACT_TOL) -> float:
    """Return the threshold a ratio is compared with: ``max(eps, exact_tol)``.

    Examples
    --------
    ε = 0 (an exact match) is decided with the exact tolerance (``EXACT_TOL`` unless given):

    >>> from raymatch.match.inputs import effective_eps
    >>> effective_eps(0.0), effective_eps(0.25), effective_eps(0.0, 1.2e-4)
    (1e-06, 0.25, 0.00012)
    """
    return max(eps, exact_tol)


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
