"""Claims on shared work: a driver leases the tasks it runs, so that another driver of the same study waits for them.

Two drivers of one study on one store (a schedule and a manual run, started moments apart) plan the same work. A
stage that declares :attr:`Stage.claim <raymatch.engine.stages.Stage.claim>` (extraction) has each task claimed
before it runs: a *lease*, a small JSON object ``leases/<stage>/…json`` (:func:`~raymatch.store.layout.lease_key`)
created only if absent (:meth:`Store.create_bytes <raymatch.store.Store.create_bytes>`: a hard link locally, a
conditional PUT on S3) and renewed by a heartbeat thread every interval (:func:`~raymatch.engine.record
.heartbeat_seconds`) until the task is done. A driver that finds a task claimed runs what it could claim, then
waits until the other driver's leases are released, plans the stage again and finds that work stored (or, if the
other driver stopped, claims what is left). A lease whose heartbeat is older than
:data:`~raymatch.engine.record.ABANDONED_AFTER_HEARTBEATS` of its own intervals belongs to a driver that died: it is
taken over (and ``raymatch gc`` lists it as garbage).

Race windows, and why they are harmless: taking over a stale lease deletes it and creates a new one, so two drivers
taking over the same stale lease at the same moment may both run its task; so may two drivers claiming on an S3
store that ignores conditional writes. Every object a task writes has a content-derived key and is written whole,
so the cost is the duplicated work, never a wrong or torn object.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor

from ..store import Store, StoreError
from .record import ABANDONED_AFTER_HEARTBEATS

__all__ = ["Leases", "claimed_runs", "lease_is_live"]

log = logging.getLogger("raymatch")

#: Leases claimed or released at once.
_THREADS = 16


def lease_is_live(body: dict | None, now: float | None = None) -> bool:
    """Whether a lease's holder is alive: its heartbeat younger than ``ABANDONED_AFTER_HEARTBEATS`` of its intervals.

    Parameters
    ----------
    body : dict or None
        The lease as stored (``updated_at`` and ``interval`` in seconds); None (gone) or malformed is not live.
    now : float, optional
        Seconds since the epoch (default: now).

    Returns
    -------
    bool
    """
    try:
        age = (time.time() if now is None else now) - float(body["updated_at"])
        return age <= ABANDONED_AFTER_HEARTBEATS * float(body["interval"])
    except (TypeError, KeyError, ValueError):
        return False


class Leases:
    """The leases one driver holds, renewed every ``interval`` by a daemon thread until released or closed.

    Parameters
    ----------
    store : Store
    owner : str
        Who holds them (the run id): shown to the drivers that wait.
    interval : float
        Seconds between two renewals; a lease not renewed for :data:`ABANDONED_AFTER_HEARTBEATS` intervals is stale.
    """

    def __init__(self, store: Store, owner: str, interval: float):
        self.store, self.owner, self.interval = store, owner, interval
        self.held: dict[str, str] = {}  # key → token
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, token: str) -> bytes:
        return json.dumps({"owner": self.owner, "token": token, "host": socket.gethostname(), "pid": os.getpid(),
                           "interval": self.interval, "updated_at": time.time()}).encode()

    def read(self, key: str) -> dict | None:
        """The lease at ``key`` as stored; None when there is none (or it cannot be parsed: a torn one is stale)."""
        try:
            return json.loads(self.store.read_bytes(key))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def claim(self, key: str) -> bool:
        """Take the lease at ``key``: True when this driver now holds it (created, or taken over from a dead one)."""
        for _ in range(2):
            token = uuid.uuid4().hex
            if self.store.create_bytes(key, self._body(token)):
                with self._lock:
                    self.held[key] = token
                self._start()
                return True
            found = self.read(key)
            if found is None:  # released in between: try again
                continue
            if lease_is_live(found):
                return False
            log.warning("taking over the lease %s of run %s (no heartbeat for %d intervals: its driver died)", key,
                        found.get("owner", "?"), ABANDONED_AFTER_HEARTBEATS)
            if self.read(key) == found:  # (a race window: see the module's description)
                self.store.delete(key)
        return False

    def release(self, key: str) -> None:
        """Give the lease at ``key`` up (deleted if this driver still holds it)."""
        with self._lock:
            token = self.held.pop(key, None)
        if token is None:
            return
        try:
            if (self.read(key) or {}).get("token") == token:
                self.store.delete(key)
        except StoreError as error:  # left behind: stale after a few intervals, then taken over or collected
            log.warning("could not release the lease %s: %s", key, error)

    def holders(self, keys: Iterable[str]) -> dict[str, str]:
        """Of ``keys``, those another driver holds alive now: key → its owner (the leases read in one batch)."""
        keys = list(keys)
        found = {}
        for key, data in zip(keys, self.store.read_many(keys), strict=True):
            try:
                body = json.loads(data) if data is not None else None
            except ValueError:
                continue
            if body is not None and lease_is_live(body) and self.held.get(key) != body.get("token"):
                found[key] = str(body.get("owner", "?"))
        return found

    def claim_many(self, keys: list[str]) -> list[bool]:
        """:meth:`claim` of each key, several at a time (on S3 each claim is a request or three)."""
        if len(keys) < 2:
            return [self.claim(key) for key in keys]
        with ThreadPoolExecutor(max_workers=min(_THREADS, len(keys))) as pool:
            return list(pool.map(self.claim, keys))

    def release_many(self, keys: list[str]) -> None:
        """:meth:`release` of each key, several at a time."""
        with ThreadPoolExecutor(max_workers=max(1, min(_THREADS, len(keys)))) as pool:
            list(pool.map(self.release, keys))

    def wait(self, keys: list[str], *, poll: float | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Return once no other driver holds any of ``keys`` alive (released, or stale)."""
        poll = min(2.0, self.interval) if poll is None else poll
        while self.holders(keys):
            sleep(poll)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, name="raymatch-leases", daemon=True)
                self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = dict(self.held)
            for key, token in held.items():
                try:
                    if (self.read(key) or {}).get("token") != token:  # taken over: this driver lost it
                        with self._lock:
                            self.held.pop(key, None)
                        log.warning("lost the lease %s to another driver", key)
                        continue
                    with self._lock:
                        if self.held.get(key) == token:
                            self.store.write_bytes(key, self._body(token))
                except Exception as error:  # a store down for a while: the run itself reports it
                    log.warning("lease %s not renewed: %s", key, error)

    def close(self) -> None:
        """Release every lease held and stop renewing."""
        self._stop.set()
        for key in list(self.held):
            self.release(key)


def claimed_runs(tasks: list, key_of: Callable[[object], str], leases: Leases, run: Callable[[list], list],
                 replan: Callable[[], list], label: str, *, stop_on_failure: bool = False) -> tuple[list, list]:
    """Run ``tasks`` under leases: claim each, run those claimed, wait for the others, plan again, repeat.

    Parameters
    ----------
    tasks : list
    key_of : callable
        A task's lease key.
    leases : Leases
    run : callable
        ``run(tasks) -> outcomes`` (with ``.ok`` and ``.item``); each task's lease is released once it is run.
    replan : callable
        The stage's tasks still to do now (after another driver's tasks ended).
    label : str
        The stage's name, for the log.
    stop_on_failure : bool, default False
        A failed task ends it (nothing more is run or waited for).

    Returns
    -------
    outcomes : list
        Of the tasks this driver ran.
    found : list
        Tasks another driver did while this one waited (stored when planned again).
    """
    outcomes: list = []
    found: list = []
    todo = list(tasks)
    while todo:
        claimed = leases.claim_many([key_of(task) for task in todo])
        mine = [task for task, ok in zip(todo, claimed, strict=True) if ok]
        theirs = [task for task, ok in zip(todo, claimed, strict=True) if not ok]
        if theirs:  # said now: the tasks this driver claimed run first
            owners = sorted(set(leases.holders(key_of(task) for task in theirs).values()))
            log.warning("%s: %d task(s) claimed by run %s: waiting for them%s", label, len(theirs),
                        ", ".join(owners) or "(ended)", f" after this run's {len(mine)}" if mine else "")
        if mine:
            try:
                outcomes += run(mine)
            finally:
                leases.release_many([key_of(task) for task in mine])
            if stop_on_failure and any(not outcome.ok for outcome in outcomes):
                break
        if not theirs:
            break
        leases.wait([key_of(task) for task in theirs])
        still: dict[Hashable, object] = {key_of(task): task for task in replan()}
        found += [task for task in theirs if key_of(task) not in still]
        todo = [still[key_of(task)] for task in theirs if key_of(task) in still]  # its driver stopped: ours now
    return outcomes, found
