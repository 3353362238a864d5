"""Heartbeats (issue 15, operations 3): a running driver refreshes its heartbeat object; a silent one is
``abandoned``. Beats overwrite one object per run and add nothing to the ``runs`` table."""

from __future__ import annotations

import datetime as _dt
import time
from types import SimpleNamespace

import pytest

from raymatch import cli
from raymatch.engine.record import RunRecord, heartbeat_seconds, last_heard, run_state
from raymatch.engine.status import store_status
from raymatch.results import append_rows, data_files, query
from raymatch.store import Store
from raymatch.store.layout import heartbeat_key

UTC = _dt.timezone.utc


def _run_row(run_id: str, status: str, updated_at: _dt.datetime) -> dict:
    return {"run_id": run_id, "study": "beats", "config_hash": "0" * 16, "host": "h", "code_version": "x",
            "started_at": updated_at - _dt.timedelta(seconds=5), "ended_at": None, "status": status, "computed": 0,
            "skipped": 0, "failed": 0, "stages": "{}", "error": None, "updated_at": updated_at}


def test_run_state_marks_a_running_run_silent_for_more_than_three_intervals_abandoned():
    now = _dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    ago = lambda seconds: now - _dt.timedelta(seconds=seconds)  # noqa: E731
    assert run_state("running", ago(89), now=now, heartbeat=30) == "running"
    assert run_state("running", ago(91), now=now, heartbeat=30) == "abandoned"
    assert run_state("succeeded", ago(10_000), now=now, heartbeat=30) == "succeeded"  # only running runs


def test_heartbeat_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("RAYMATCH_HEARTBEAT_S", raising=False)
    assert heartbeat_seconds() == 30.0
    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "0.5")
    assert heartbeat_seconds() == 0.5
    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "soon")
    with pytest.raises(ValueError, match="RAYMATCH_HEARTBEAT_S must be a positive number"):
        heartbeat_seconds()


def test_status_shows_a_run_with_an_old_heartbeat_as_abandoned(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAYMATCH_HEARTBEAT_S", raising=False)
    store = Store(str(tmp_path / "store"))
    now = _dt.datetime.now(UTC)
    append_rows(store, "runs", [_run_row("beats.old", "running", now - _dt.timedelta(seconds=91)),
                                _run_row("beats.live", "running", now - _dt.timedelta(seconds=5))])
    states = dict(zip(*(store_status(store)["runs"][c] for c in ("run_id", "status")), strict=True))
    assert states == {"beats.old": "abandoned", "beats.live": "running"}
    assert cli.main(["status", store.root]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "beats.old" in line)
    assert "abandoned" in line
    assert "stopped sending heartbeats" in out
    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "60")  # the reader's interval: 91 s is not 3 × 60 s
    assert set(store_status(store)["runs"]["status"]) == {"running"}


def test_a_live_runs_heartbeat_advances_and_stops_when_it_ends(tmp_path):
    store = Store(str(tmp_path / "store"))
    record = RunRecord(SimpleNamespace(name="beats", config_hash="0" * 16), store, heartbeat=0.3)
    run_id = record.row["run_id"]

    def latest():
        frame = query(store, f"SELECT run_id, status, updated_at FROM runs WHERE run_id = '{run_id}'")
        return frame["status"].iloc[0], last_heard(store, frame)[0]

    def raw_rows():
        return int(query(store, "SELECT count(*) AS n FROM runs_raw")["n"].iloc[0])

    status, first = latest()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and latest()[1] == first:
        time.sleep(0.1)
    status, later = latest()
    assert status == "running" and later > first  # the heartbeat object refreshed the run
    assert store.exists(heartbeat_key(run_id))
    time.sleep(1.0)  # three more beats: they overwrite the object and add nothing to the table
    assert raw_rows() == 1 and len(data_files(store, "runs")) == 1 and latest()[1] > later
    record.finish({})
    record._thread.join(2)
    assert not record._thread.is_alive()
    assert not store.exists(heartbeat_key(run_id))  # the ended row says it all
    status, ended = latest()
    assert status == "succeeded" and raw_rows() == 2
    time.sleep(1.0)  # three intervals: no beat after the end
    assert raw_rows() == 2 and not store.exists(heartbeat_key(run_id))
    assert latest() == (status, ended)


def test_a_running_run_is_live_while_its_heartbeat_object_is_fresh(tmp_path, monkeypatch):
    """``status`` and ``gc`` judge a running run by its heartbeat object, not by its first row."""
    from raymatch.engine.gc import live_runs

    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "30")
    store = Store(str(tmp_path / "store"))
    now = _dt.datetime.now(_dt.timezone.utc)
    append_rows(store, "runs", [_run_row("beats.long", "running", now - _dt.timedelta(hours=5))])
    assert set(store_status(store)["runs"]["status"]) == {"abandoned"}  # no heartbeat object: silent for 5 h
    assert live_runs(store, now) == []
    store.write_json(heartbeat_key("beats.long"), {"run_id": "beats.long",
                                                   "updated_at": (now - _dt.timedelta(seconds=20)).isoformat()})
    status = store_status(store)["runs"]
    assert status["status"].tolist() == ["running"] and status["updated_at"].iloc[0] > now - _dt.timedelta(minutes=1)
    assert [run["run_id"] for run in live_runs(store, now)] == ["beats.long"]
