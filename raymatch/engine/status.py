"""``raymatch status``: the latest runs of a store, what each study recorded there has left, the failed rows.

What it prints fits a terminal of :data:`WIDTH` columns: a run's times as its duration and, while it runs, how
long ago it was heard of (its start is in its id); text cells too wide are cut with ``…`` (:func:`fit_table`).
"""

from __future__ import annotations

import datetime as _dt
import math

from ..store import Store
from ..store.layout import study_records_prefix
from .planning import make_plan
from .record import heartbeat_seconds, last_heard, run_state

__all__ = ["WIDTH", "fit_table", "runs_table", "status_lines", "store_status"]

#: Columns ``raymatch status`` fits its tables into.
WIDTH = 100


def store_status(store: Store, *, runs: int = 10) -> dict:
    """The latest runs recorded in ``store`` and, per study recorded there, what is still to do.

    Parameters
    ----------
    store : Store
    runs : int, default 10
        How many of the latest runs to return.

    Returns
    -------
    dict
        ``runs``: a DataFrame of the latest runs (newest first; a ``running`` run whose heartbeat is older than
        three intervals has the status ``abandoned``, see :func:`run_state`); ``pending``: per study name, its plan's
        ``{stage: (done, to do)}`` or the error that stopped the planning; ``failed``: the failed ``curves``
        rows of each study's current configuration (study, population, layer, repeat, model_a, model_b — the
        models' names —, error).
    """
    from ..results import load, query
    from ..study import Study

    history = load(store, "runs").sort_values("started_at", ascending=False).head(runs).reset_index(drop=True)
    history["updated_at"] = last_heard(store, history)  # a running run's heartbeat, not its first row
    now, heartbeat = _dt.datetime.now(_dt.timezone.utc), heartbeat_seconds()
    history["status"] = [run_state(status, updated, now=now, heartbeat=heartbeat)
                         for status, updated in zip(history["status"], history["updated_at"], strict=True)]
    pending: dict[str, dict | str] = {}
    for key in store.list(study_records_prefix()):
        if not key.endswith(".json"):
            continue
        record = store.read_json(key)
        try:
            pending[record["name"]] = make_plan(Study.from_dict(record["config"]), store).counts()
        except Exception as error:  # a study whose checkpoints went missing still lists the others
            pending[record["name"]] = f"{type(error).__name__}: {error}"
    failed = query(store, "SELECT study, population, layer, repeat, name_a AS model_a, name_b AS model_b, error "
                          "FROM curves WHERE status = 'failed' ORDER BY ALL")
    return {"runs": history, "pending": pending, "failed": failed}


def _seconds(value: float | None) -> str:
    """A duration as a terminal shows it: ``42 s``, ``12 min``, ``3.5 h``; empty when unknown."""
    if value is None or not math.isfinite(value):
        return ""
    if value < 600:
        return f"{value:.0f} s"
    if value < 6 * 3600:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def runs_table(runs, now: _dt.datetime | None = None):
    """The runs of :func:`store_status` as ``raymatch status`` shows them: one short column per fact.

    Parameters
    ----------
    runs : pandas.DataFrame
        ``store_status(...)['runs']``.
    now : datetime, optional
        The current UTC time (default: now).

    Returns
    -------
    pandas.DataFrame
        ``run_id``, ``status``, ``took`` (ended − started; for a run not ended, the time since it started, ``…``
        after it), ``heard`` (only while a run is ``running`` or ``abandoned``: since its last heartbeat),
        ``computed``, ``skipped``, ``failed``, ``host``.
    """
    import pandas as pd

    now = now or _dt.datetime.now(_dt.timezone.utc)

    def took(row) -> str:
        if pd.notna(row.ended_at):
            return _seconds((row.ended_at - row.started_at).total_seconds())
        return _seconds((now - row.started_at).total_seconds()) + "…"

    shown = pd.DataFrame({"run_id": runs["run_id"], "status": runs["status"],
                          "took": [took(row) for row in runs.itertuples()]})
    if runs["status"].isin(["running", "abandoned"]).any():
        shown["heard"] = [f"{_seconds((now - updated).total_seconds())} ago" if status in ("running", "abandoned")
                          and pd.notna(updated) else "" for status, updated in zip(runs["status"],
                                                                                   runs["updated_at"], strict=True)]
    for column in ("computed", "skipped", "failed", "host"):
        shown[column] = runs[column]
    return shown


def fit_table(frame, width: int = WIDTH, shrink: tuple[str, ...] = ("error", "host", "run_id", "study")) -> str:
    """``frame`` as aligned text no wider than ``width``: cells of the ``shrink`` columns cut with ``…``, in order.

    Parameters
    ----------
    frame : pandas.DataFrame
    width : int, default :data:`WIDTH`
    shrink : tuple of str
        Text columns that may be cut, first the first (each kept at least 8 characters wide).

    Returns
    -------
    str
    """
    from ..results import format_frame

    frame = frame.reset_index(drop=True).copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda value: "" if value is None else str(value))
    text = format_frame(frame, "table")
    for column in (name for name in shrink if name in frame.columns):
        over = max(map(len, text.splitlines())) - width
        if over <= 0:
            break
        widest = max(len(column), int(frame[column].str.len().max() or 0))
        keep = max(8, widest - over)
        frame[column] = frame[column].map(lambda value, keep=keep: value if len(value) <= keep
                                          else value[:keep - 1] + "…")
        text = format_frame(frame, "table")
    return text


def status_lines(report: dict, uri: str) -> list[str]:
    """What ``raymatch status`` prints of :func:`store_status`'s ``report``, its tables fitted to :data:`WIDTH`."""
    runs = report["runs"]
    lines = [f"latest runs in {uri}:" if not runs.empty else f"no runs recorded in {uri}"]
    if not runs.empty:
        lines.append(fit_table(runs_table(runs)))
        if (runs["status"] == "running").any():
            lines.append("(a run still 'running' is going on, or its driver died: rerun the study to finish it)")
        if (runs["status"] == "abandoned").any():
            lines.append("(an 'abandoned' run's driver stopped sending heartbeats: it died or lost the store; rerun "
                         "to finish)")
    for name, counts in report["pending"].items():
        if isinstance(counts, str):
            lines.append(f"study {name}: cannot plan: {counts}")
            continue
        todo = ", ".join(f"{stage} {left}" for stage, (_, left) in counts.items() if left)
        lines.append(f"study {name}: " + (f"to do: {todo}" if todo else "complete"))
    failed = report["failed"]
    if not failed.empty:
        lines.append(f"{len(failed)} failed match row(s):")
        lines += _failed_lines(failed.drop_duplicates(["study", "population", "layer", "model_a", "model_b"]))
    return lines


def _failed_lines(failed) -> list[str]:
    """One line per failed pair, its error as a note number; then each distinct error once, whole, wrapped."""
    import textwrap

    errors = list(dict.fromkeys(failed["error"].fillna("(no error recorded)")))
    shown = failed.assign(error=[f"[{errors.index(error) + 1}]" for error in failed["error"].fillna(
        "(no error recorded)")])
    lines = [fit_table(shown)]
    for number, error in enumerate(errors, 1):
        lines += textwrap.wrap(error, WIDTH, initial_indent=f"[{number}] ", subsequent_indent="    ")
    return lines

