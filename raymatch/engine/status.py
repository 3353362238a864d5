"""``raymatch status``: the latest runs of a store, what each study recorded there has left, the failed rows."""

from __future__ import annotations

import datetime as _dt

from ..store import Store
from ..store.layout import study_records_prefix
from .planning import make_plan
from .record import heartbeat_seconds, last_heard, run_state

__all__ = ["store_status"]


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
        rows of each study's current configuration (study, population, layer, repeat, model_a, model_b, error).
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
    failed = query(store, "SELECT study, population, layer, repeat, model_a, model_b, error FROM curves "
                          "WHERE status = 'failed' ORDER BY ALL")
    return {"runs": history, "pending": pending, "failed": failed}
