"""The record of a run: its row of the ``runs`` table, its heartbeat, and the study record it runs.

Each run records itself in the ``runs`` table (written when it starts and replaced when it ends; in between a
heartbeat overwrites ``heartbeats/<run id>.json`` every :func:`heartbeat_seconds`) and the study's configuration in
``studies/<name>.json``, from which ``raymatch status`` and ``raymatch report`` work without the study file. A
``running`` row whose heartbeat is older than three intervals is shown as ``abandoned`` (its driver died):
:func:`last_heard` and :func:`run_state`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING

from .. import __version__
from ..results import append_rows, compact_table, data_files
from ..store import Store, StoreError
from ..store.layout import heartbeat_key, study_record_key

if TYPE_CHECKING:
    from ..study import Study

__all__ = ["ABANDONED_AFTER_HEARTBEATS", "HEARTBEAT_SECONDS", "RunRecord", "heartbeat_seconds", "last_heard",
           "run_state", "write_study_record"]

log = logging.getLogger("raymatch")

#: The ``runs`` table gets a small file per append (a run's start and end): compacted when a run ends with more.
_RUNS_FILES_BEFORE_COMPACTION = 16
#: Seconds between two heartbeats of a running driver (each overwrites one small object, never a table); the
#: environment variable ``RAYMATCH_HEARTBEAT_S`` overrides it.
HEARTBEAT_SECONDS = 30.0
#: A ``running`` run whose latest heartbeat is older than this many intervals is shown as ``abandoned``.
ABANDONED_AFTER_HEARTBEATS = 3


def heartbeat_seconds() -> float:
    """The heartbeat interval: ``RAYMATCH_HEARTBEAT_S`` if set (a positive number), else :data:`HEARTBEAT_SECONDS`."""
    value = os.environ.get("RAYMATCH_HEARTBEAT_S")
    if value is None or not value.strip():
        return HEARTBEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"RAYMATCH_HEARTBEAT_S must be a positive number of seconds; got {value!r}")
    return seconds


def run_state(status: str, updated_at, *, now=None, heartbeat: float | None = None) -> str:
    """The state of a run as ``raymatch status`` shows it: its status, or ``abandoned`` for a silent driver.

    Parameters
    ----------
    status : str
        The ``status`` of the run's latest ``runs`` row.
    updated_at : datetime
        When the run was last heard of (UTC): :func:`last_heard`.
    now : datetime, optional
        The current UTC time (default: now).
    heartbeat : float, optional
        The heartbeat interval in seconds (default: :func:`heartbeat_seconds`).

    Returns
    -------
    str
        ``status``, except ``"abandoned"`` for a ``running`` run not heard of for more than
        :data:`ABANDONED_AFTER_HEARTBEATS` intervals.
    """
    if status != "running" or updated_at is None:
        return status
    now = now if now is not None else _dt.datetime.now(_dt.timezone.utc)
    interval = heartbeat if heartbeat is not None else heartbeat_seconds()
    age = (now - updated_at).total_seconds()
    return "abandoned" if age > ABANDONED_AFTER_HEARTBEATS * interval else status


def last_heard(store: Store, runs) -> list:
    """When each run was last heard of: the later of its latest ``runs`` row and its heartbeat object.

    Parameters
    ----------
    store : Store
    runs : pandas.DataFrame
        ``runs`` rows with ``run_id``, ``status`` and ``updated_at``.

    Returns
    -------
    list of datetime
        One per row; the heartbeats of the ``running`` rows are read in one batch (:meth:`Store.read_many`).
    """
    running = [run_id for run_id, status in zip(runs["run_id"], runs["status"], strict=True) if status == "running"]
    beats = {}
    for run_id, data in zip(running, store.read_many([heartbeat_key(run_id) for run_id in running]), strict=True):
        if data is not None:
            beats[run_id] = _dt.datetime.fromisoformat(json.loads(data)["updated_at"])
    return [max(updated, beats[run_id]) if run_id in beats and updated is not None else beats.get(run_id, updated)
            for run_id, updated in zip(runs["run_id"], runs["updated_at"], strict=True)]


def write_study_record(study: Study, store: Store) -> None:
    """``studies/<name>.json``: the study's configuration and its layers in network order (for status, gc, report).

    Its local paths are recorded absolute (:meth:`Study.anchored <raymatch.study.Study.anchored>`), so that the
    record plans the study from any directory.
    """
    study = study.anchored()
    store.write_json(study_record_key(study.name), {
        "name": study.name, "config_hash": study.config_hash, "code_version": __version__,
        "layers": list(study.layer_names), "eps": list(study.eps),
        "measures": list(study.measure_names), "svcca_keep": study.svcca_keep,
        "architecture": study.architecture.to_dict() if study.architecture is not None else None,
        "probe": study.probe.to_dict(), "config": study.to_dict(),
    })


class RunRecord:
    """One row of the ``runs`` table, written when the run starts and replaced when it ends, and its heartbeat.

    The heartbeat overwrites one object, ``heartbeats/<run id>.json`` (``{"run_id", "updated_at"}``), from a daemon
    thread every interval until :meth:`finish`, which deletes it: a long run adds no file to ``runs`` per beat.
    :func:`last_heard` reads both.

    Parameters
    ----------
    study : Study
        Its ``name`` and ``config_hash`` are recorded.
    store : Store
    heartbeat : float, optional
        Seconds between two heartbeats (default: :func:`heartbeat_seconds`).
    """

    def __init__(self, study: Study, store: Store, *, heartbeat: float | None = None):
        self.store = store
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        started = _dt.datetime.now(_dt.timezone.utc)
        self.row = {"run_id": f"{study.name}.{started:%Y%m%dT%H%M%S}.{secrets.token_hex(4)}", "study": study.name,
                    "config_hash": study.config_hash, "host": socket.gethostname(), "code_version": __version__,
                    "started_at": started, "ended_at": None, "status": "running", "computed": 0, "skipped": 0,
                    "failed": 0, "stages": "{}", "error": None}
        self._write()
        self._thread = threading.Thread(target=self._beat, name="raymatch-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        """Append the row as it is now: readers of ``runs`` see the latest row of each run."""
        with self._lock:
            append_rows(self.store, "runs", [{**self.row, "updated_at": _dt.datetime.now(_dt.timezone.utc)}])

    def _beat(self) -> None:
        """The heartbeat: the heartbeat object, with a fresh ``updated_at``, every interval until the run ends."""
        key = heartbeat_key(self.row["run_id"])
        while not self._stop.wait(self.heartbeat):
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.store.write_json(key, {"run_id": self.row["run_id"],
                                                "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            except Exception as error:  # a store down for a while: the run itself reports it; try again later
                log.warning("heartbeat of run %s not recorded: %s", self.row["run_id"], error)

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat (waits for a beat being written)."""
        self._stop.set()
        with self._lock:
            pass

    def finish(self, stages: dict, error: str | None = None, *, cancelled: bool = False) -> None:
        """Replace the row with the run's outcome: totals, per-stage counts, status and error."""
        self.stop_heartbeat()
        totals = {name: sum(counts.get(name, 0) for counts in stages.values())
                  for name in ("computed", "skipped", "failed")}
        failed = error is not None or totals["failed"] > 0
        status = "cancelled" if cancelled else "failed" if failed else "succeeded"
        self.row.update(totals, ended_at=_dt.datetime.now(_dt.timezone.utc), error=error, status=status,
                        stages=json.dumps({name: {key: counts[key] for key in ("computed", "skipped", "failed",
                                                                                "seconds", "nodes")
                                                  if counts.get(key) not in (None, {})}  # nodes: where tasks ran
                                           for name, counts in stages.items()}, sort_keys=True))
        self._write()
        try:
            self.store.delete(heartbeat_key(self.row["run_id"]))  # the row says it ended
        except StoreError as error:
            log.warning("could not delete the heartbeat of run %s: %s", self.row["run_id"], error)
        try:
            if len(data_files(self.store, "runs")) > _RUNS_FILES_BEFORE_COMPACTION:  # two files per run add up
                compact_table(self.store, "runs")
        except StoreError as error:  # the run is recorded: a compaction that fails is only a cost for readers
            log.warning("could not compact the runs table: %s", error)

