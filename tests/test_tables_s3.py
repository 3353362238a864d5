"""Delta tables on the moto S3 server: storage options from the store, and concurrent appends from several driver
processes (conditional writes) that lose no row and show no duplicate to readers."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing

import pytest

from raymatch.results import TableWriter, append_rows, load, query, read_columns, storage_options, table_uri
from raymatch.store import Store, layout

N_PROCESSES, N_BATCHES, BATCH = 3, 10, 4


def curve(writer: int, batch: int, index: int, *, model_b: str | None = None) -> dict:
    return {"study": "s1", "population": "trained", "layer": f"w{writer}", "repeat": index,
            "model_a": "m0", "model_b": model_b or f"b{batch}", "probe_id": "p1", "config_hash": "h1",
            "code_version": "0.2.0", "n_samples": 10, "n_a": 2, "n_b": 2, "dead_a": 0, "dead_b": 0,
            "critical_a": [0.0, 0.5], "critical_b": [0.1, 0.2], "exact_tol": 1e-6, "max_epsilon": 0.5,
            "chance": 0.9, "cka": 0.5, "seconds": 0.1, "status": "ok"}


def append_batches(store: Store, writer: int) -> None:
    """One driver process: N_BATCHES commits of BATCH rows each, to a table that may not exist yet."""
    for batch in range(N_BATCHES):
        append_rows(store, "curves", [curve(writer, batch, index) for index in range(BATCH)])


def write_shared(store: Store, writer: int) -> None:
    """One driver of two computing the same results: every identity is written by both."""
    with TableWriter(store, max_rows=5) as tables:
        for index in range(12):
            tables.add("curves", [curve(0, 0, index, model_b="shared")])


def run_processes(target, store: Store, n: int) -> None:
    context = multiprocessing.get_context("spawn")  # delta-rs's runtime does not survive fork
    processes = [context.Process(target=target, args=(store, writer)) for writer in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * n


def test_storage_options_come_from_the_store(s3_store, moto_endpoint, monkeypatch):
    options = storage_options(s3_store)
    assert options["AWS_ENDPOINT_URL"] == moto_endpoint and options["AWS_ALLOW_HTTP"] == "true"
    assert options["conditional_put"] == "etag"
    assert options["AWS_ACCESS_KEY_ID"] == "testing-key" and options["AWS_SECRET_ACCESS_KEY"] == "testing-secret"
    assert table_uri(s3_store, "curves") == f"s3://{s3_store.root}/{layout.table_prefix('curves')}"
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    bare = Store("s3://bucket/prefix", endpoint_url="https://s3.example.org")
    options = storage_options(bare)
    assert "AWS_ALLOW_HTTP" not in options and "AWS_ACCESS_KEY_ID" not in options  # from the environment
    assert options["AWS_REGION"] == "eu-west-1"


@pytest.mark.slow
def test_concurrent_appends_from_three_processes_lose_no_row(s3_store):
    run_processes(append_batches, s3_store, N_PROCESSES)
    rows = read_columns(s3_store, "curves", ["layer", "model_b", "repeat"])
    assert rows.num_rows == N_PROCESSES * N_BATCHES * BATCH
    assert len(set(map(tuple, (row.values() for row in rows.to_pylist())))) == rows.num_rows
    # One commit per append, each its own version (after the table's creation, which racing drivers may each
    # commit once): versions contiguous, none overwritten.
    log = [key for key in s3_store.list(f"{layout.table_prefix('curves')}/_delta_log") if key.endswith(".json")]
    versions = sorted(int(key.rsplit("/", 1)[-1][: -len(".json")]) for key in log)
    assert versions == list(range(len(versions)))
    operations = [json.loads(line)["commitInfo"]["operation"] for key in log
                  for line in s3_store.read_bytes(key).decode().splitlines() if "commitInfo" in json.loads(line)]
    assert operations.count("WRITE") == N_PROCESSES * N_BATCHES
    assert set(operations) == {"CREATE TABLE", "WRITE"}


@pytest.mark.slow
def test_two_drivers_writing_the_same_results_show_no_duplicate(s3_store):
    s3_store.write_json(layout.study_record_key("s1"), {"name": "s1", "config_hash": "h1", "eps": [0.3],
                                                        "layers": ["w0"]})
    run_processes(write_shared, s3_store, 2)
    assert len(load(s3_store, "curves_raw")) == 24
    counts = query(s3_store, "SELECT count(*) AS n, count(DISTINCT repeat) AS distinct_repeats FROM matches")
    assert counts.values.tolist() == [[12, 12]]
    assert query(s3_store, "SELECT count(*) AS n FROM matches_at(0.05)")["n"].tolist() == [12]


def test_s3_round_trip_through_the_views(s3_store):
    s3_store.write_json(layout.study_record_key("s1"), {"name": "s1", "config_hash": "h1", "eps": [0.0, 0.3],
                                                        "layers": ["w0"]})
    created = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    append_rows(s3_store, "curves", [{**curve(0, 0, 0), "created_at": created}])
    matches = load(s3_store).sort_values("eps")
    assert matches["size_a"].tolist() == [1, 1] and matches["size_b"].tolist() == [0, 2]
    assert matches["similarity"].tolist() == pytest.approx([0.25, 0.75])
    assert matches["created_at"].tolist() == [created, created]
