"""BLAS threading policy of the match core.

OpenBLAS with more than one thread is slower and erratic on the small BLAS-2 calls of the peeling
and search loops and on factorisations of small matrices (measured on 2 cores: a 512 + 512 peel
takes 0.06 s steadily with one thread, 0.10–0.41 s with two; a v-minimal search on a 2,000 × 256
pair 21–24 ms with one thread, 30–340 ms with two). Large factorisations and GEMMs keep every
thread. The controller scans the loaded libraries once; nested limits reuse the outer one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

from threadpoolctl import ThreadpoolController

#: Dense operations on fewer elements than this run with one BLAS thread.
MULTITHREAD_MIN_ELEMENTS = 4_000_000

_state = {"controller": None, "depth": 0}


@contextlib.contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """Limit BLAS to one thread inside the block (a no-op when ``active`` is False or nested).

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> from raymatch.match._blas import one_thread
    >>> with one_thread():
    ...     all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
    True
    """
    if not active or _state["depth"]:
        yield
        return
    if _state["controller"] is None:
        _state["controller"] = ThreadpoolController()
    _state["depth"] += 1
    try:
        with _state["controller"].limit(limits=1, user_api="blas"):
            yield
    finally:
        _state["depth"] -= 1


def small(n_elements: int) -> bool:
    """Whether a dense operation on ``n_elements`` values should run single-threaded.

    Examples
    --------
    >>> from raymatch.match._blas import small
    >>> small(512 * 512), small(10_000 * 512)
    (True, False)
    """
    return n_elements < MULTITHREAD_MIN_ELEMENTS


def one_thread_method(method: Callable) -> Callable:
    """Wrap ``method`` so that it runs under :func:`one_thread`.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> from raymatch.match._blas import one_thread_method
    >>> @one_thread_method
    ... def blas_threads():
    ...     return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    >>> blas_threads() <= {1}
    True
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        """Call ``method`` with one BLAS thread."""
        with one_thread():
            return method(*args, **kwargs)

    return wrapper
