"""Connecting the driver to Ray: a local Ray of its own, or a cluster's address that must answer in time.

``ray.init(address=...)`` on an address where no Ray listens retries for minutes, printing only Ray's own C++
warnings. :func:`connect_ray` first waits for the address to accept a connection, for at most a timeout, and fails
with one line naming the address otherwise (:class:`RayUnreachable`, an ``OSError``: exit 2 from the CLI). Starting
a local Ray takes seconds with nothing to see: the caller is told first (``on_start``), to say so.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "RayUnreachable", "connect_ray", "wait_for_address"]

#: Seconds ``raymatch run``/``train`` wait for a cluster's address to answer (``--connect-timeout``).
DEFAULT_CONNECT_TIMEOUT = 30.0


class RayUnreachable(ConnectionError):
    """No Ray cluster answered at the address given in time."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS (``ray://host:port`` for Ray Client); None when Ray finds the cluster itself."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or "/" in target:
        return None
    return host.strip("[]"), int(port)


def wait_for_address(address: str, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once ``address`` accepts a TCP connection; :class:`RayUnreachable` after ``timeout`` seconds.

    Parameters
    ----------
    address : str
        ``host:port`` or ``ray://host:port``; anything else (``auto``) is left to Ray.
    timeout : float
        Seconds to keep trying (a cluster may be starting).
    clock : callable, optional

    Raises
    ------
    RayUnreachable
        Naming the address and the timeout.
    """
    target = _host_port(address)
    if target is None:
        return
    deadline = clock() + timeout
    reason = "no answer"
    while True:
        left = deadline - clock()
        try:
            with socket.create_connection(target, timeout=max(0.1, min(2.0, left))):
                return
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
        if clock() + 0.5 >= deadline:
            break
        time.sleep(0.5)
    raise RayUnreachable(f"no Ray cluster answers at {address} ({reason.lower()}, tried for {timeout:g} s): start "
                         "one there (`ray start --head`), or give the right --address / RAY_ADDRESS "
                         "(--connect-timeout waits longer)")


def connect_ray(address: str | None, num_cpus: int | None, timeout: float = DEFAULT_CONNECT_TIMEOUT, *,
                on_start: Callable[[str], None] | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray; a live session is reused.

    Parameters
    ----------
    address : str, optional
        ``host:port``, ``ray://host:port``, ``auto`` or ``local`` (default: ``RAY_ADDRESS``, else ``local``).
    num_cpus : int, optional
        CPUs of a local Ray (default: all).
    timeout : float
        Seconds a cluster's address has to answer (:func:`wait_for_address`).
    on_start : callable, optional
        Called with one line (what is about to start or be joined) before ``ray.init``, which takes seconds.

    Raises
    ------
    RayUnreachable
        Nothing answers at ``address`` within ``timeout``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports: no traffic off this machine
    import ray

    if ray.is_initialized():
        return
    say = on_start or (lambda _line: None)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        # A Ray started here serves this process only: keep it on the loopback interface (DESIGN.md §5).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        say("starting a local Ray (a few seconds; --address joins a running cluster instead)")
        ray.init(address="local", logging_level="ERROR", include_dashboard=False, num_cpus=num_cpus)
    else:
        wait_for_address(address, timeout)
        say(f"joining the Ray cluster at {address}")
        ray.init(address=address, logging_level="ERROR")
