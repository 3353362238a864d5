"""Cancelling a run: SIGINT and SIGTERM to the driver raise :class:`RunCancelled` in its main thread.

The run loop then submits nothing more, Ray work in flight is cancelled, the rows computed so far are committed
and the run is recorded as ``cancelled`` (:func:`raymatch.engine.run.run_study`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

__all__ = ["RunCancelled", "as_cancelled", "cancel_on_signals"]

log = logging.getLogger("raymatch")


class RunCancelled(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM: Ctrl-C, ``kill``, ``ray job stop``)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"cancelled by {signal.Signals(signum).name}")


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise :class:`RunCancelled` in the driver's main thread (once; later ones are noted).

    The first one is logged at once (a warning of the ``raymatch`` logger, which the CLI prints to stderr).

    Ray's blocking calls check for signals, so the exception reaches the loop that submits work, which cancels
    what is in flight (Ray turns it into a plain ``KeyboardInterrupt`` on the way: the list yielded holds the
    signal received). Outside the main thread (no signal handlers there) this does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        if received:  # already stopping: let the rows computed so far be committed
            log.warning("%s received again: still stopping", signal.Signals(signum).name)
            return
        received.append(signum)
        # said now, before the teardown (seconds, and a reader of the output may be going away with this signal)
        log.warning("cancelled by %s: stopping; committing the rows computed so far", signal.Signals(signum).name)
        raise RunCancelled(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)



def as_cancelled(error: BaseException, received: list[int]) -> BaseException:
    """``error`` as the run records it: a ``KeyboardInterrupt`` after a signal is the :class:`RunCancelled` it was.

    Ray re-raises the handler's exception as a plain ``KeyboardInterrupt``; ``received`` is the list that
    :func:`cancel_on_signals` yielded.
    """
    if isinstance(error, KeyboardInterrupt) and received and not isinstance(error, RunCancelled):
        return RunCancelled(received[0])
    return error
