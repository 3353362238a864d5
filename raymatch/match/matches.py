"""Result dataclasses: plain values that convert to dicts / table rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .inputs import check_eps, in_match


def _plain(value):
    """Convert numpy arrays, numpy scalars and tuples to plain Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


class _Row:
    """Equality by value (arrays compared element-wise) and conversion to a plain dict."""

    def to_dict(self) -> dict:
        """Return the fields (and derived values) as plain Python values (lists, ints, floats, strs).

        Returns
        -------
        dict
            One entry per dataclass field, then one per derived property (``_derived``), ready for
            a table row or JSON.
        """
        row = {field.name: _plain(getattr(self, field.name)) for field in fields(self)}
        row.update({name: _plain(getattr(self, name)) for name in self._derived})
        return row

    _derived: tuple[str, ...] = ()

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None


@dataclass(frozen=True, eq=False)
class Match(_Row):
    """A match between neurons of two layers (for :func:`max_match`, the maximum match).

    Attributes
    ----------
    a, b : numpy.ndarray, shape (size_a,), (size_b,), int64
        Sorted column indices of the matched neurons of A and of B.
    eps : float
        The ε of the match.
    n_samples : int
        Number of samples (rows) the activation vectors run over.
    n_a, n_b : int
        Number of neurons (columns) of A and of B, dead ones included.
    dead_a, dead_b : numpy.ndarray, int64
        Sorted indices of the dead neurons (in no match, counted in the similarity's denominator).

    Examples
    --------
    Two shared directions, a private neuron on each side and a dead neuron in A:

    >>> import numpy as np
    >>> from raymatch.match import max_match
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 4))
    >>> A[:, 3] = 0.0
    >>> B = np.hstack([A[:, :2] @ rng.standard_normal((2, 2)), rng.standard_normal((100, 1))])
    >>> m = max_match(A, B, eps=0.0)
    >>> m.a.tolist(), m.b.tolist(), m.dead_a.tolist(), (m.n_a, m.n_b, m.n_samples)
    ([0, 1], [0, 1], [3], (4, 3, 100))
    >>> m.size_a, m.size_b, round(m.similarity, 3)
    (2, 2, 0.571)

    :meth:`to_dict` gives plain values, derived ones included; equality compares by value:

    >>> row = m.to_dict()
    >>> row["a"], row["dead_b"], row["size_a"]
    ([0, 1], [], 2)
    >>> m == max_match(A, B, eps=0.0)
    True
    """

    a: np.ndarray
    b: np.ndarray
    eps: float
    n_samples: int
    n_a: int
    n_b: int
    dead_a: np.ndarray
    dead_b: np.ndarray

    _derived = ("size_a", "size_b", "similarity")

    @property
    def size_a(self) -> int:
        """Number of matched neurons of A."""
        return int(self.a.size)

    @property
    def size_b(self) -> int:
        """Number of matched neurons of B."""
        return int(self.b.size)

    @property
    def similarity(self) -> float:
        """``(len(a) + len(b)) / (n_a + n_b)``."""
        return (self.a.size + self.b.size) / (self.n_a + self.n_b)


@dataclass(frozen=True, eq=False)
class SimpleMatch(Match):
    """A v-minimal (hence simple) match.

    Attributes
    ----------
    neuron : tuple[str, int]
        The neuron v, as ``("a", j)`` or ``("b", j)``, that the match was searched for.
    order : str or int
        The deletion order used: ``"index"`` (A's neurons by index, then B's) or the integer seed
        of a random permutation. For ε > 0 v-minimal matches need not be unique.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import simple_matches
    >>> u, v, w = np.random.default_rng(0).standard_normal((3, 50))
    >>> A = np.column_stack([u, v, w])
    >>> B = np.column_stack([u + v, u - v, w])
    >>> small, large = simple_matches(A, B, 0.0, order=0)
    >>> small.a.tolist(), small.b.tolist(), large.a.tolist(), large.b.tolist()
    ([2], [2], [0, 1], [0, 1])
    >>> large.neuron, large.order, round(large.to_dict()["similarity"], 3)
    (('a', 0), 0, 0.667)
    """

    neuron: tuple[str, int] = ("a", 0)
    order: str | int = "index"


@dataclass(frozen=True, eq=False)
class MatchCurve(_Row):
    """Every neuron's critical ε: the maximum match at every ε at once.

    Attributes
    ----------
    critical_a, critical_b : numpy.ndarray, shape (n_a,), (n_b,), float64
        Smallest ε at which each neuron belongs to the maximum match; ``inf`` for dead neurons,
        0 for neurons in the exact match (ratios at most the exact tolerance the curve was computed with:
        :func:`~raymatch.match.exact_tolerance` of the activations' dtype, or the ``exact_tol`` given).
    n_samples : int
        Number of samples (rows) the activation vectors run over.
    dead_a, dead_b : numpy.ndarray, int64
        Sorted indices of the dead neurons.

    Examples
    --------
    Two shared directions, a private neuron on each side and a dead neuron in A:

    >>> import numpy as np
    >>> from raymatch.match import match_curve
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 4))
    >>> A[:, 3] = 0.0
    >>> B = np.hstack([A[:, :2] @ rng.standard_normal((2, 2)), rng.standard_normal((100, 1))])
    >>> curve = match_curve(A, B)
    >>> curve.critical_a.round(3).tolist(), curve.critical_b.round(3).tolist()
    ([0.0, 0.0, 0.98, inf], [0.0, 0.0, 0.98])
    >>> curve.at(0.0).a.tolist(), curve.at(0.99).a.tolist(), round(curve.max_epsilon, 3)
    ([0, 1], [0, 1, 2], 0.98)
    >>> curve.min_epsilon(2), round(curve.min_epsilon(3), 3), curve.min_epsilon(4)
    (0.0, 0.98, inf)
    """

    critical_a: np.ndarray
    critical_b: np.ndarray
    n_samples: int
    dead_a: np.ndarray
    dead_b: np.ndarray

    _derived = ("n_a", "n_b", "max_epsilon")

    @property
    def n_a(self) -> int:
        """Number of neurons of A, dead ones included."""
        return int(self.critical_a.size)

    @property
    def n_b(self) -> int:
        """Number of neurons of B, dead ones included."""
        return int(self.critical_b.size)

    def at(self, eps: float) -> Match:
        """Return the maximum match at ``eps`` (the same :class:`Match` as ``max_match(A, B, eps)``).

        Parameters
        ----------
        eps : float in [0, 1]
            The ε of the match; a neuron is in it when its critical ε is at most ``max(eps, EXACT_TOL)``
            (:func:`~raymatch.match.inputs.in_match`; the neurons of the exact match have critical ε 0, whatever
            exact tolerance the curve was computed with).

        Returns
        -------
        Match
            The maximum match at ``eps``.
        """
        eps = check_eps(eps)
        return Match(
            a=np.flatnonzero(in_match(self.critical_a, eps)).astype(np.int64),
            b=np.flatnonzero(in_match(self.critical_b, eps)).astype(np.int64),
            eps=eps,
            n_samples=self.n_samples,
            n_a=self.n_a,
            n_b=self.n_b,
            dead_a=self.dead_a,
            dead_b=self.dead_b,
        )

    @property
    def max_epsilon(self) -> float:
        """Smallest ε at which every live neuron of both sides is matched (0 with none live)."""
        finite = np.concatenate([self.critical_a, self.critical_b])
        finite = finite[np.isfinite(finite)]
        return float(finite.max()) if finite.size else 0.0

    def min_epsilon(self, size: int) -> float:
        """Return the smallest ε with ``min(|X*|, |Y*|) >= size``; ``inf`` when no ε reaches it.

        Parameters
        ----------
        size : int
            Number of neurons the maximum match must hold on each side; 0 gives 0.

        Returns
        -------
        float
            The smallest such ε, or ``inf`` when a side has fewer than ``size`` live neurons.

        Raises
        ------
        ValueError
            When ``size`` is not a non-negative integer.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"size must be a non-negative integer; got {size!r}")
        if size == 0:
            return 0.0
        sides = [np.sort(c[np.isfinite(c)]) for c in (self.critical_a, self.critical_b)]
        if any(side.size < size for side in sides):
            return math.inf
        return float(max(side[size - 1] for side in sides))
