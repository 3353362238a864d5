"""The public functions of the match core: arrays (or factors) in, dataclasses out."""

from __future__ import annotations

import numbers

import numpy as np

from .factor import Factor, Prepared, factor
from .inputs import check_eps, check_same_samples, effective_eps, resolve_exact_tol
from .matches import Match, MatchCurve, SimpleMatch
from .peel import Pair, PairState


def _pair(A, B, center: bool | None, cross=None) -> tuple[Pair, Factor | Prepared, Factor | Prepared]:
    """Validate both sides and bring them to reduced coordinates.

    Two arrays share one in-place QR of the joint ``[A B]``; when either side is already a
    :class:`Factor`, the other is factored too and the pair needs only the cross GEMM (or none,
    when ``cross`` gives it).
    """
    if cross is not None and not (isinstance(A, Factor) and isinstance(B, Factor)):
        raise ValueError("cross= needs A and B as Factors (it is A.basis.T @ B.basis)")
    if not isinstance(A, Factor) and not isinstance(B, Factor):
        return Pair.from_arrays(A, B, center=bool(center))
    sides = []
    for value, name, other in ((A, "A", B), (B, "B", A)):
        if isinstance(value, Factor):
            if center is not None and value.centered != center:
                raise ValueError(f"{name} is a Factor with center={value.centered}, but center={center} was asked")
            sides.append(value)
        else:
            sides.append(factor(value, center=other.centered if center is None else center, name=name))
    fa, fb = sides
    check_same_samples(fa.n_samples, fb.n_samples)
    if fa.centered != fb.centered:
        raise ValueError("A and B must both be centered or both not: factor them with the same center=")
    return Pair.from_factors(fa, fb, cross), fa, fb


def _match(fa, fb, eps: float, keep_a, keep_b, cls=Match, **extra) -> Match:
    """Build a result from positions among the live neurons of both sides."""
    return cls(
        a=fa.live[keep_a].astype(np.int64),
        b=fb.live[keep_b].astype(np.int64),
        eps=eps,
        n_samples=fa.n_samples,
        n_a=fa.n_neurons,
        n_b=fb.n_neurons,
        dead_a=fa.dead,
        dead_b=fb.dead,
        **extra,
    )


def max_match(A, B, eps: float, *, center: bool | None = None, exact_tol: float | None = None) -> Match:
    """Find the maximum ε-match between the neurons of two layers (Algorithm 1).

    A neuron is kept when its ratio to the span of the other side's kept neurons is at most
    ``max(eps, exact_tol)``; dead neurons are in no match.

    Parameters
    ----------
    A : array_like, torch.Tensor or Factor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like, torch.Tensor or Factor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.
    eps : float in [0, 1]
        Largest ratio (sine of the angle to the other side's span) a matched neuron may have.
    center : bool, optional
        Subtract column means first (default False; factors keep the choice they were made with).
    exact_tol : float, optional
        The tolerance of an exact (ε = 0) match, in [``EXACT_TOL``, 1). Default: that of the inputs' dtype,
        :func:`~raymatch.match.inputs.exact_tolerance` (1.22e-4 for float32, 1e-6 for float64; factors count
        as float64: pass the tolerance of the activations they were made from).

    Returns
    -------
    Match
        The maximum match: sorted column indices ``a`` and ``b``, the counts and the dead neurons.

    See Also
    --------
    match_curve : The maximum match at every ε in one pass.

    Examples
    --------
    A layer and any invertible mix of its neurons span the same space: the whole of both layers
    is an exact (ε = 0) match.

    >>> import numpy as np
    >>> from raymatch.match import max_match
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 5))
    >>> B = A @ rng.standard_normal((5, 5))
    >>> m = max_match(A, B, eps=0.0)
    >>> m.a.tolist(), m.b.tolist(), m.similarity
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 1.0)

    Two unrelated layers: a random vector is far from a random 5-dimensional subspace of R^100
    (ratio about √(1 − 5/100) ≈ 0.97), so even ε = 0.5 matches nothing.

    >>> C = rng.standard_normal((100, 5))
    >>> max_match(A, C, eps=0.5).similarity
    0.0

    A dead (all-zero) neuron is in no match but still counts in the similarity's denominator.

    >>> A[:, 2] = 0.0
    >>> m = max_match(A, A @ rng.standard_normal((5, 5)), eps=0.0)
    >>> m.a.tolist(), m.dead_a.tolist(), m.size_b, m.similarity
    ([0, 1, 3, 4], [2], 5, 0.9)
    """
    eps = check_eps(eps)
    exact_tol = resolve_exact_tol(exact_tol, A, B)
    pair, fa, fb = _pair(A, B, center)
    state = PairState(pair)
    state.cascade(effective_eps(eps, exact_tol))
    return _match(fa, fb, eps, state.alive_a, state.alive_b)


def match_curve(A, B, *, center: bool | None = None, cross=None, exact_tol: float | None = None) -> MatchCurve:
    """Compute every neuron's critical ε in one peeling pass: the maximum match at every ε.

    A neuron's critical ε is the smallest ε at which it belongs to the maximum match, so
    ``match_curve(A, B).at(eps)`` equals ``max_match(A, B, eps)`` for every ``eps``.

    Parameters
    ----------
    A : array_like, torch.Tensor or Factor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like, torch.Tensor or Factor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.
    center : bool, optional
        Subtract column means first (default False; factors keep the choice they were made with).
    cross : numpy.ndarray, shape (A.rank, B.rank), optional
        With two factors: ``A.basis.T @ B.basis`` when already computed
        (:func:`~raymatch.match.cross_product`), e.g. for the same pair's
        :func:`~raymatch.match.cka.linear_cka_factors`; the pair then does no work over the samples.
    exact_tol : float, optional
        The tolerance of an exact (ε = 0) match, in [``EXACT_TOL``, 1). Default: that of the inputs' dtype,
        :func:`~raymatch.match.inputs.exact_tolerance` (1.22e-4 for float32, 1e-6 for float64; factors count
        as float64: pass the tolerance of the activations they were made from).

    Returns
    -------
    MatchCurve
        ``critical_a`` has shape (n_a,), ``critical_b`` shape (n_b,); ``inf`` marks dead neurons, 0 the
        neurons of the exact match (ratios at most ``exact_tol``).

    Examples
    --------
    Two layers sharing a planted 3-dimensional part, each with 2 private neurons: the shared
    neurons match exactly (critical ε 0), the private ones only at a near-chance ε.

    >>> import numpy as np
    >>> from raymatch.match import match_curve, max_match
    >>> rng = np.random.default_rng(0)
    >>> S = rng.standard_normal((200, 3))
    >>> A = np.hstack([S, rng.standard_normal((200, 2))])
    >>> B = np.hstack([S @ rng.standard_normal((3, 3)), rng.standard_normal((200, 2))])
    >>> curve = match_curve(A, B)
    >>> curve.critical_a.round(3).tolist()
    [0.0, 0.0, 0.0, 0.991, 0.989]
    >>> curve.at(0.0).similarity, curve.at(0.5).similarity, round(curve.max_epsilon, 3)
    (0.6, 0.6, 0.997)
    >>> curve.at(0.5) == max_match(A, B, 0.5)
    True
    """
    exact_tol = resolve_exact_tol(exact_tol, A, B)
    pair, fa, fb = _pair(A, B, center, cross)
    live_a, live_b = PairState(pair).peel(exact_tol)
    critical_a = np.full(fa.n_neurons, np.inf)
    critical_b = np.full(fb.n_neurons, np.inf)
    critical_a[fa.live] = live_a
    critical_b[fb.live] = live_b
    return MatchCurve(critical_a, critical_b, fa.n_samples, fa.dead, fb.dead)


def candidate_order(keep_a: np.ndarray, keep_b: np.ndarray, order) -> tuple[list[tuple[str, int]], str | int]:
    """Return the order in which the v-minimal procedure tries to delete neurons.

    Parameters
    ----------
    keep_a, keep_b : numpy.ndarray of int
        The neurons of A and of B to order.
    order : None, "index" or int
        ``None`` or ``"index"``: A's neurons by index, then B's (the authors' order); an int:
        a random permutation of all of them drawn with ``numpy.random.default_rng(order)``.

    Returns
    -------
    candidates : list of (side, index)
        Every neuron of ``keep_a`` (as ``("a", j)``) and of ``keep_b`` (as ``("b", j)``), in order.
    label : "index" or int
        What :attr:`SimpleMatch.order` records: ``"index"`` or the seed.

    Raises
    ------
    ValueError
        When ``order`` is neither None, ``"index"`` nor a non-negative integer.

    Examples
    --------
    >>> import numpy as np
    >>> from raymatch.match import candidate_order
    >>> candidate_order(np.array([0, 2]), np.array([1]), None)
    ([('a', 0), ('a', 2), ('b', 1)], 'index')

    An integer seeds a random permutation, the same one every time:

    >>> candidate_order(np.array([0, 2]), np.array([1]), 0)
    ([('b', 1), ('a', 0), ('a', 2)], 0)
    """
    candidates = [("a", int(j)) for j in keep_a] + [("b", int(j)) for j in keep_b]
    if order is None or order == "index":
        return candidates, "index"
    if isinstance(order, numbers.Integral) and not isinstance(order, bool) and order >= 0:
        permutation = np.random.default_rng(int(order)).permutation(len(candidates))
        return [candidates[i] for i in permutation], int(order)
    raise ValueError(f"order must be None, 'index' or a non-negative integer seed; got {order!r}")


def _check_neuron(neuron, n_a: int, n_b: int) -> tuple[str, int]:
    """Validate ``neuron`` as ``("a", j)`` or ``("b", j)`` with ``j`` a column of that side."""
    try:
        side, index = neuron
    except (TypeError, ValueError):
        raise ValueError(f"neuron must be ('a', j) or ('b', j); got {neuron!r}") from None
    size = {"a": n_a, "b": n_b}.get(side)
    if size is None:
        raise ValueError(f"neuron side must be 'a' or 'b'; got {side!r}")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < size:
        raise ValueError(f"neuron index must be an integer in [0, {size}) for side {side!r}; got {index!r}")
    return side, int(index)


class _Minimiser:
    """The maximum match of a pair at one ε, ready for v-minimal searches inside it."""

    def __init__(self, pair: Pair, fa, fb, eps: float, exact_tol: float):
        self.fa, self.fb, self.eps, self.threshold = fa, fb, eps, effective_eps(eps, exact_tol)
        state = PairState(pair)
        state.cascade(self.threshold)
        self.keep_a = np.flatnonzero(state.alive_a)  # positions among live neurons
        self.keep_b = np.flatnonzero(state.alive_b)
        self.state = PairState(pair.restrict(self.keep_a, self.keep_b))

    def search(self, neuron: tuple[str, int], order) -> SimpleMatch | None:
        """Return a ``neuron``-minimal match, or None when the neuron is dead or unmatched."""
        side, index = neuron
        f, keep = (self.fa, self.keep_a) if side == "a" else (self.fb, self.keep_b)
        live_pos = np.searchsorted(f.live, index)
        if live_pos >= f.live.size or f.live[live_pos] != index:
            return None  # dead
        local = np.searchsorted(keep, live_pos)
        if local >= keep.size or keep[local] != live_pos:
            return None  # not in the maximum match
        # Candidates are named by local positions; the order is drawn over original indices.
        candidates, label = candidate_order(self.fa.live[self.keep_a], self.fb.live[self.keep_b], order)
        to_local = {("a", int(j)): i for i, j in enumerate(self.fa.live[self.keep_a])}
        to_local.update({("b", int(j)): i for i, j in enumerate(self.fb.live[self.keep_b])})
        local_order = [(s, to_local[(s, j)]) for s, j in candidates]
        state = self.state.copy()
        state.minimal(self.threshold, (side, int(local)), local_order)
        return _match(
            self.fa, self.fb, self.eps,
            self.keep_a[state.alive_a], self.keep_b[state.alive_b],
            cls=SimpleMatch, neuron=(side, index), order=label,
        )


def minimal_match(A, B, eps: float, neuron, *, order=None, center: bool | None = None,
                  exact_tol: float | None = None) -> SimpleMatch | None:
    """Find a v-minimal match containing ``neuron``: a match with no proper sub-match containing it.

    The authors' procedure: start from the maximum match at ``eps``; try deleting each other
    neuron once, in ``order``; keep a deletion when ``neuron`` survives in the maximum match of
    what is left (which becomes the current set). v-minimal matches are exactly the simple matches.

    Parameters
    ----------
    A : array_like, torch.Tensor or Factor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like, torch.Tensor or Factor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.
    eps : float in [0, 1]
        The ε of the match.
    neuron : ("a", j) or ("b", j)
        Column ``j`` of A or of B.
    order : None, "index" or int
        Deletion order, see :func:`candidate_order`; recorded in the result.
    center : bool, optional
        Subtract column means first (default False; factors keep the choice they were made with).
    exact_tol : float, optional
        The tolerance of an exact (ε = 0) match, in [``EXACT_TOL``, 1). Default: that of the inputs' dtype,
        :func:`~raymatch.match.inputs.exact_tolerance` (1.22e-4 for float32, 1e-6 for float64; factors count
        as float64: pass the tolerance of the activations they were made from).

    Returns
    -------
    SimpleMatch or None
        None when the neuron is dead or outside the maximum match (no match contains it).

    Examples
    --------
    B mixes A's first two neurons (``u + v``, ``u - v``) and copies the third: the smallest
    match containing B's neuron 1 needs both of A's first two neurons and B's first two.

    >>> import numpy as np
    >>> from raymatch.match import minimal_match
    >>> u, v, w = np.random.default_rng(0).standard_normal((3, 50))
    >>> A = np.column_stack([u, v, w])
    >>> B = np.column_stack([u + v, u - v, w])
    >>> m = minimal_match(A, B, 0.0, ("b", 1))
    >>> m.a.tolist(), m.b.tolist(), m.neuron, m.order
    ([0, 1], [0, 1], ('b', 1), 'index')

    A dead neuron is in no match:

    >>> A[:, 2] = 0.0
    >>> minimal_match(A, B, 0.0, ("a", 2)) is None
    True
    """
    eps = check_eps(eps)
    exact_tol = resolve_exact_tol(exact_tol, A, B)
    pair, fa, fb = _pair(A, B, center)
    neuron = _check_neuron(neuron, fa.n_neurons, fb.n_neurons)
    candidate_order([], [], order)  # validate before any work
    return _Minimiser(pair, fa, fb, eps, exact_tol).search(neuron, order)


def simple_matches(A, B, eps: float, *, order=None, center: bool | None = None,
                   exact_tol: float | None = None) -> list[SimpleMatch]:
    """Find the distinct simple matches by a v-minimal search for every v in the maximum match.

    Parameters
    ----------
    A : array_like, torch.Tensor or Factor, shape (n_samples, n_a)
        Activations of the first layer, one column per neuron.
    B : array_like, torch.Tensor or Factor, shape (n_samples, n_b)
        Activations of the second layer, over the same samples.
    eps : float in [0, 1]
        The ε of the matches.
    order : None, "index" or int
        Deletion order used for every v, see :func:`candidate_order`.
    center : bool, optional
        Subtract column means first (default False; factors keep the choice they were made with).
    exact_tol : float, optional
        The tolerance of an exact (ε = 0) match, in [``EXACT_TOL``, 1). Default: that of the inputs' dtype,
        :func:`~raymatch.match.inputs.exact_tolerance` (1.22e-4 for float32, 1e-6 for float64; factors count
        as float64: pass the tolerance of the activations they were made from).

    Returns
    -------
    list of SimpleMatch
        Deduplicated, sorted by (size, neurons of A, neurons of B); each records the first v it
        was found for. Their union is the maximum match.

    Examples
    --------
    The maximum match of ``[u, v, w]`` and ``[u + v, u - v, w]`` is everything; it splits into
    the simple matches ``{w} ↔ {w}`` and ``{u, v} ↔ {u + v, u - v}``.

    >>> import numpy as np
    >>> from raymatch.match import simple_matches
    >>> u, v, w = np.random.default_rng(0).standard_normal((3, 50))
    >>> A = np.column_stack([u, v, w])
    >>> B = np.column_stack([u + v, u - v, w])
    >>> [(m.a.tolist(), m.b.tolist(), m.neuron) for m in simple_matches(A, B, 0.0)]
    [([2], [2], ('a', 2)), ([0, 1], [0, 1], ('a', 0))]
    """
    eps = check_eps(eps)
    exact_tol = resolve_exact_tol(exact_tol, A, B)
    pair, fa, fb = _pair(A, B, center)
    candidate_order([], [], order)
    minimiser = _Minimiser(pair, fa, fb, eps, exact_tol)
    found: dict[tuple, SimpleMatch] = {}
    for side, keep, f in (("a", minimiser.keep_a, fa), ("b", minimiser.keep_b, fb)):
        for index in f.live[keep]:
            match = minimiser.search((side, int(index)), order)
            found.setdefault((tuple(match.a), tuple(match.b)), match)
    return sorted(found.values(), key=lambda m: (m.size_a + m.size_b, tuple(m.a), tuple(m.b)))
