"""Results tables: schemas and row validation, Delta round trips, the DuckDB views (``matches`` at the grid,
``matches_at(eps)`` equal to ``max_match``, deduplication, current configurations), batched writes and
compaction, planning reads, refusal of 0.1.0 stores, figure data, output formats and the ``query`` command."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL, match_curve, max_match
from raymatch.results import (
    CKA,
    CURVES,
    MATCHES,
    RUNS,
    SIMPLE_MATCHES,
    TABLES,
    VIEW_COLUMNS,
    TableWriter,
    append_rows,
    check_store_version,
    compact_table,
    connect,
    data_files,
    figure_data,
    format_frame,
    load,
    pair_summary,
    query,
    read_columns,
    similarity_column,
    to_table,
)
from raymatch.store import layout

CREATED = dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
LATER = CREATED + dt.timedelta(minutes=5)

#: The columns of 0.1.0's ``matches`` table, which the ``matches`` view keeps, with the models' names after their ids
#: (issue 26.5).
MATCHES_COLUMNS = ["study", "population", "layer", "model_a", "model_b", "name_a", "name_b", "eps", "repeat",
                   "n_samples", "n_a", "n_b", "dead_a", "dead_b", "size_a", "size_b", "similarity", "max_epsilon",
                   "chance", "neurons_a", "neurons_b", "seconds", "status", "error", "code_version", "config_hash",
                   "created_at"]


def curve_row(**fields) -> dict:
    row = {
        "study": "s1", "population": "trained", "layer": "conv1", "repeat": 0, "model_a": "m0", "model_b": "m1",
        "probe_id": "p1", "config_hash": "abc123", "code_version": "0.2.0",
        "n_samples": 1000, "n_a": 4, "n_b": 4, "dead_a": 0, "dead_b": 1,
        "critical_a": [0.0, 0.3, 0.1, 0.9], "critical_b": np.array([0.5, 0.2, 0.0, np.inf]),
        "exact_tol": EXACT_TOL, "max_epsilon": 0.9, "chance": math.sqrt(1 - 4 / 1000), "cka": 0.7, "seconds": 0.01,
        "status": "ok", "error": None, "created_at": CREATED,
    }
    row.update(fields)
    return row


def failed_curve(**fields) -> dict:
    row = {"study": "s1", "population": "trained", "layer": "conv2", "repeat": 0, "model_a": "m0", "model_b": "m1",
           "probe_id": "p1", "config_hash": "abc123", "code_version": "0.2.0", "status": "failed",
           "error": "MemoryError: out of memory", "created_at": CREATED}
    row.update(fields)
    return row


def simple_row(**fields) -> dict:
    row = {"study": "s1", "population": "trained", "layer": "conv1", "model_a": "m0", "model_b": "m1", "eps": 0.0,
           "repeat": 0, "match_id": 0, "neurons_a": [3], "neurons_b": [5], "size_a": 1, "size_b": 1, "neuron": "a:3",
           "search_order": "index", "probe_id": "p1", "code_version": "0.2.0", "config_hash": "abc123",
           "created_at": CREATED}
    row.update(fields)
    return row


def run_row(**fields) -> dict:
    row = {"run_id": "s1.20260301T123015.ab12", "study": "s1", "config_hash": "abc123", "host": "h",
           "code_version": "0.2.0", "started_at": CREATED, "ended_at": None, "status": "running", "computed": 0,
           "skipped": 0, "failed": 0, "stages": "{}", "error": None, "updated_at": CREATED}
    row.update(fields)
    return row


def model_row(**fields) -> dict:
    row = {"study": "s1", "config_hash": "abc123", "population": "trained", "model_id": "m0", "seed": 0,
           "checkpoint": "checkpoints/mlp/trained-x/seed0.safetensors", "architecture": "mlp",
           "holdout_accuracy": 0.9, "test_accuracy": 0.88, "epochs": 5, "selected_epoch": 4, "created_at": CREATED}
    row.update(fields)
    return row


def write_study(store, name="s1", config_hash="abc123", eps=(0.1, 0.5), layers=("conv1", "conv2")) -> None:
    store.write_json(layout.study_record_key(name), {"name": name, "config_hash": config_hash, "eps": list(eps),
                                                     "layers": list(layers)})


# ------------------------------------------------------------------------------------------------ schemas


def test_stored_tables_and_view_columns():
    assert list(TABLES) == ["curves", "simple_matches", "runs", "models", "tasks", "cross_curves", "measures",
                            "neurons"]
    assert MATCHES.names == MATCHES_COLUMNS
    assert CURVES.field("critical_a").type == pa.list_(pa.float64())
    assert CURVES.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert CURVES.field("cka").nullable and not CURVES.field("probe_id").nullable
    assert "probe_id" in SIMPLE_MATCHES.names and RUNS.names[-1] == "updated_at"
    assert CKA.names == ["study", "population", "layer", "model_a", "model_b", "name_a", "name_b", "repeat", "cka",
                         "code_version", "config_hash", "created_at"]


def test_every_view_of_an_empty_store_has_its_columns(store):
    for view, schema in VIEW_COLUMNS.items():
        frame = query(store, f"SELECT * FROM {view}")
        assert frame.empty and list(frame.columns) == schema.names, view
    assert query(store, "SELECT count(*) AS n FROM matches_at(0.3)")["n"].tolist() == [0]
    assert list(load(store).columns) == MATCHES_COLUMNS
    assert store.list() == []  # reading creates nothing


@pytest.mark.parametrize(("table", "row", "message"), [
    ("curves", curve_row(colour="red"), "curves row 0: unknown field 'colour'"),
    ("curves", {k: v for k, v in curve_row().items() if k != "layer"}, "missing required field 'layer'"),
    ("curves", curve_row(probe_id=None), "missing required field 'probe_id'"),
    ("curves", curve_row(critical_a=None), "missing field 'critical_a' \\(required when status is 'ok'\\)"),
    ("curves", curve_row(exact_tol=None), "missing field 'exact_tol'"),
    ("curves", curve_row(status="done"), "field 'status' must be one of"),
    ("curves", curve_row(error="boom"), "'error' must be null"),
    ("curves", failed_curve(error=None), "missing field 'error'"),
    ("curves", curve_row(n_a=2.5), "field 'n_a' must be an integer"),
    ("curves", curve_row(critical_a=[0.1, "x", 0.2, 0.3]), "field 'critical_a' must be a list of numbers"),
    ("curves", curve_row(critical_a=[0.1, 0.2]), "'critical_a' has 2 values for n_a = 4"),
    ("curves", curve_row(critical_a=[0.1, math.nan, 0.2, 0.3]), "'critical_a' must hold numbers >= 0"),
    ("curves", curve_row(dead_b=0), "'critical_b' has 1 inf values .* but dead_b = 0"),
    ("curves", curve_row(cka="high"), "field 'cka' must be a number"),
    ("curves", curve_row(created_at=dt.datetime(2026, 1, 1)), "must be timezone-aware"),
    ("curves", curve_row(n_a=2**40, critical_a=None, status="failed", error="x"), "'n_a' cannot be stored as int32"),
    ("curves", curve_row(study=7), "field 'study' cannot be stored as string"),
    ("simple_matches", simple_row(probe_id=None), "simple_matches row 0: missing required field 'probe_id'"),
    ("simple_matches", simple_row(neurons_a=[0.5]), "field 'neurons_a' must be a list of integers"),
    ("runs", run_row(status="done"), "runs row 0: field 'status' must be one of"),
    ("models", model_row(seed=1.5), "models row 0: field 'seed' must be an integer"),
    ("tasks", {"study": "s1"}, "tasks row 0: missing required field 'config_hash'"),
])
def test_rows_that_do_not_fit_the_schema_are_refused(local_store, table, row, message):
    with pytest.raises(ValueError, match=message):
        append_rows(local_store, table, [row])
    with pytest.raises(ValueError, match=message):
        TableWriter(local_store).add(table, [row])
    assert local_store.list() == []


def test_unknown_tables_and_columns_are_refused(local_store):
    with pytest.raises(ValueError, match="unknown results table 'matches'"):
        append_rows(local_store, "matches", [curve_row()])
    with pytest.raises(ValueError, match=r"unknown results table '\.\./curves'"):
        read_columns(local_store, "../curves", ["study"])
    with pytest.raises(ValueError, match="unknown column 'colour' of results table 'curves'"):
        read_columns(local_store, "curves", ["study", "colour"])
    with pytest.raises(ValueError, match="unknown column 'colour'"):
        read_columns(local_store, "curves", ["study"], filters={"colour": "red"})
    with pytest.raises(ValueError, match="unknown results view 'curve'"):
        load(local_store, "curve")
    with pytest.raises(ValueError, match="rows must be a list"):
        to_table("curves", curve_row())
    assert local_store.list() == []


# ------------------------------------------------------------------------------------------------ round trips


def test_curves_round_trip_keeps_lists_infinities_nulls_and_times(store):
    append_rows(store, "curves", [curve_row(), failed_curve()])
    assert store.list(layout.table_prefix("curves"))  # a Delta table under results/curves
    frame = load(store, "curves_all").sort_values("layer").reset_index(drop=True)
    assert list(frame.columns) == CURVES.names and len(frame) == 2
    ok, failed = frame.iloc[0], frame.iloc[1]
    assert ok["critical_a"].tolist() == [0.0, 0.3, 0.1, 0.9]
    assert ok["critical_b"].tolist() == [0.5, 0.2, 0.0, math.inf]
    assert ok["created_at"] == pd.Timestamp(CREATED) and str(frame["created_at"].dtype) == "datetime64[us, UTC]"
    assert ok["cka"] == 0.7 and ok["exact_tol"] == EXACT_TOL and pd.isna(ok["error"])
    assert failed["status"] == "failed" and failed["error"].startswith("MemoryError")
    assert failed["critical_a"] is None and pd.isna(failed["n_a"]) and pd.isna(failed["cka"])


def test_read_columns_reads_only_what_planning_needs(store):
    assert read_columns(store, "curves", ["study", "layer"]).schema == pa.schema(
        [CURVES.field("study"), CURVES.field("layer")])  # no table yet: empty, typed
    append_rows(store, "curves", [curve_row(), curve_row(layer="conv2", config_hash="other"),
                                  failed_curve(layer="conv3")])
    ids = read_columns(store, "curves", ["layer", "status"], filters={"study": "s1", "config_hash": "abc123"})
    assert ids.column_names == ["layer", "status"]
    assert sorted(ids.to_pylist(), key=str) == [{"layer": "conv1", "status": "ok"},
                                                {"layer": "conv3", "status": "failed"}]
    assert read_columns(store, "curves", ["layer"], filters={"layer": ["conv2", "conv3"]}).num_rows == 2
    assert read_columns(store, "curves", ["layer"], filters={"cka": None}).column("layer").to_pylist() == ["conv3"]
    assert read_columns(store, "curves").column_names == CURVES.names


def test_created_at_is_filled_in_and_the_callers_rows_are_left_alone(local_store):
    row = curve_row(created_at=None)
    before = dt.datetime.now(dt.timezone.utc)
    append_rows(local_store, "curves", [row])
    append_rows(local_store, "runs", [run_row(updated_at=None)])
    assert row["created_at"] is None
    created = read_columns(local_store, "curves", ["created_at"]).column(0)[0].as_py()
    assert before <= created <= dt.datetime.now(dt.timezone.utc)
    assert read_columns(local_store, "runs", ["updated_at"]).column(0)[0].as_py() >= before


# ------------------------------------------------------------------------------------------------ views


def test_matches_view_expands_curves_at_the_grid_with_todays_columns(store):
    write_study(store, eps=(0.0, 0.25, 0.5))
    append_rows(store, "curves", [curve_row(), failed_curve()])
    matches = load(store).sort_values(["layer", "eps"]).reset_index(drop=True)
    assert list(matches.columns) == MATCHES_COLUMNS
    schema = load_arrow_schema(store)
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in MATCHES]
    ok = matches[matches["layer"] == "conv1"]
    assert ok["eps"].tolist() == [0.0, 0.25, 0.5]
    assert ok["size_a"].tolist() == [1, 2, 3] and ok["size_b"].tolist() == [1, 2, 3]
    assert [a.tolist() for a in ok["neurons_a"]] == [[0], [0, 2], [0, 1, 2]]
    assert [b.tolist() for b in ok["neurons_b"]] == [[2], [1, 2], [0, 1, 2]]
    assert ok["similarity"].tolist() == pytest.approx([2 / 8, 4 / 8, 6 / 8])
    assert set(ok["n_samples"]) == {1000} and set(ok["dead_b"]) == {1} and set(ok["status"]) == {"ok"}
    failed = matches[matches["layer"] == "conv2"]
    assert failed["eps"].tolist() == [0.0, 0.25, 0.5] and set(failed["status"]) == {"failed"}
    assert failed["size_a"].isna().all() and failed["similarity"].isna().all() and failed["neurons_a"].isna().all()
    assert set(failed["error"]) == {"MemoryError: out of memory"}


def load_arrow_schema(store) -> pa.Schema:
    con = connect(store)
    try:
        return con.sql("SELECT * FROM matches").to_arrow_table().schema
    finally:
        con.close()


def test_cka_and_studies_views(store):
    write_study(store, eps=(0.2,), layers=("conv1",))
    append_rows(store, "curves", [curve_row(), curve_row(layer="conv2", cka=None), failed_curve(layer="conv3")])
    cka = load(store, "cka")
    assert list(cka.columns) == CKA.names and cka["layer"].tolist() == ["conv1"] and cka["cka"].tolist() == [0.7]
    studies = load(store, "studies")
    assert studies["study"].tolist() == ["s1"] and studies["config_hash"].tolist() == ["abc123"]
    assert studies["eps"].iloc[0].tolist() == [0.2] and studies["layers"].iloc[0].tolist() == ["conv1"]


def test_only_each_studys_current_configuration_is_in_curves_and_matches(store):
    write_study(store, "s1", "new", eps=(0.1,))
    write_study(store, "s2", "h2", eps=(0.2, 0.3))
    append_rows(store, "curves", [curve_row(config_hash="old"), curve_row(config_hash="new", layer="conv2"),
                                  curve_row(study="s2", config_hash="h2"), curve_row(study="s3", config_hash="h3")])
    assert len(load(store, "curves_all")) == 4
    current = query(store, "SELECT study, config_hash, layer FROM curves ORDER BY study")
    assert current.values.tolist() == [["s1", "new", "conv2"], ["s2", "h2", "conv1"]]
    grid = query(store, "SELECT study, eps FROM matches ORDER BY study, eps")
    assert grid.values.tolist() == [["s1", 0.1], ["s2", 0.2], ["s2", 0.3]]
    write_study(store, "s1", "new", eps=(0.1, 0.9))  # a new ε grid recomputes nothing: the view follows it
    assert sorted(load(store, study="s1")["eps"]) == [0.1, 0.9]
    assert load(store, study="s2", eps=0.5)["eps"].tolist() == [0.5]


def test_the_same_identity_appended_twice_is_one_row(store):
    write_study(store, eps=(0.5,))
    append_rows(store, "curves", [failed_curve(layer="conv1", created_at=LATER), curve_row(created_at=CREATED),
                                  curve_row(layer="conv2", cka=0.1, created_at=CREATED)])
    append_rows(store, "curves", [curve_row(), curve_row(layer="conv2", cka=0.2, created_at=LATER)])
    assert len(load(store, "curves_raw")) == 5
    curves = load(store, "curves").sort_values("layer")
    assert curves["status"].tolist() == ["ok", "ok"]  # an ok row beats a later failed one
    assert curves["cka"].tolist() == [0.7, 0.2]  # then the latest wins
    assert len(load(store)) == 2 and len(query(store, "SELECT * FROM matches_at(0.3)")) == 2
    append_rows(store, "simple_matches", [simple_row(), simple_row(), simple_row(match_id=1)])
    assert len(load(store, "simple_matches")) == 2
    append_rows(store, "runs", [run_row()])
    append_rows(store, "runs", [run_row(status="succeeded", ended_at=LATER, computed=3, updated_at=LATER)])
    runs = load(store, "runs")
    assert runs["status"].tolist() == ["succeeded"] and runs["computed"].tolist() == [3]
    append_rows(store, "models", [model_row(), model_row(seed=None, created_at=LATER), model_row(model_id="m1")])
    models = load(store, "models").sort_values("model_id")
    assert models["model_id"].tolist() == ["m0", "m1"] and pd.isna(models["seed"].iloc[0])
    append_rows(store, "tasks", [{"study": "s1", "config_hash": "abc123", "stage": "simple", "task_id": "t1",
                                  "rows": 0}] * 2)
    assert load(store, "tasks")["rows"].tolist() == [0]


def random_pair(seed: int, n_samples: int = 60, shared: int = 3, own: int = 3, dead: bool = False):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_samples, shared))
    A = np.hstack([base, rng.standard_normal((n_samples, own))])
    mixed = base @ rng.standard_normal((shared, shared)) + 0.2 * rng.standard_normal((n_samples, shared))
    B = np.hstack([mixed, rng.standard_normal((n_samples, own + 1))])
    if dead:
        A[:, 1] = 0.0
    return A, B


def stored_curve(A, B, **fields) -> dict:
    curve = match_curve(A, B)
    return curve_row(n_samples=curve.n_samples, n_a=curve.n_a, n_b=curve.n_b, dead_a=len(curve.dead_a),
                     dead_b=len(curve.dead_b), critical_a=curve.critical_a, critical_b=curve.critical_b,
                     max_epsilon=curve.max_epsilon, **fields)


def test_matches_at_any_eps_equals_max_match(local_store):
    pairs = {f"m{seed}": random_pair(seed, dead=seed == 2) for seed in range(4)}
    write_study(local_store, eps=(0.2, 0.6))
    append_rows(local_store, "curves", [stored_curve(A, B, model_b=name) for name, (A, B) in pairs.items()])
    # Between every two consecutive critical values: every step of every curve. (Exactly at a critical value the
    # curve and max_match may disagree within rounding: the two compute the same ratio along different paths.)
    criticals = np.unique(np.concatenate([np.concatenate([c.critical_a, c.critical_b]) for c in
                                          (match_curve(A, B) for A, B in pairs.values())]))
    criticals = criticals[np.isfinite(criticals)]
    steps = [float(value) for value in (criticals[:-1] + criticals[1:]) / 2]
    grid = [0.0, 1e-7, 0.2, 0.35, 0.6, 0.95, 1.0, *steps]
    con = connect(local_store)
    try:
        for eps in grid:
            rows = con.sql(f"SELECT * FROM matches_at({eps!r}) ORDER BY model_b").df()
            assert rows["eps"].tolist() == [eps] * len(pairs)
            for (_, row), (A, B) in zip(rows.iterrows(), pairs.values(), strict=True):
                expected = max_match(A, B, eps)
                assert row["neurons_a"].tolist() == expected.a.tolist(), (eps, row["model_b"])
                assert row["neurons_b"].tolist() == expected.b.tolist(), (eps, row["model_b"])
                assert (row["size_a"], row["size_b"]) == (expected.size_a, expected.size_b)
                assert row["similarity"] == pytest.approx(expected.similarity, abs=1e-15)
                assert (row["n_a"], row["n_b"], row["dead_a"]) == (expected.n_a, expected.n_b, len(expected.dead_a))
        at_grid = con.sql("SELECT model_b, eps, similarity FROM matches ORDER BY model_b, eps").fetchall()
    finally:
        con.close()
    assert at_grid == [(name, eps, pytest.approx(max_match(A, B, eps).similarity, abs=1e-15))
                       for name, (A, B) in pairs.items() for eps in (0.2, 0.6)]


@pytest.mark.parametrize("eps", ["-0.1", "1.5", "NULL", "'nan'"])
def test_matches_at_out_of_range_is_a_clear_error(local_store, eps):
    write_study(local_store)
    append_rows(local_store, "curves", [curve_row()])
    with pytest.raises(ValueError, match=r"matches_at: eps must be a number in \[0, 1\]; got"):
        query(local_store, f"SELECT * FROM matches_at({eps})")
    with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1\]"):
        load(local_store, eps=2.0)


# ------------------------------------------------------------------------------------------------ writing


def test_table_writer_batches_commits_and_compacts(store):
    writer = TableWriter(store, max_rows=10, max_seconds=3600)
    for index in range(5):
        writer.add("curves", [curve_row(model_b=f"m{index}", repeat=repeat) for repeat in range(5)])
    assert writer.commits == 2 and writer.pending() == 5 and writer.written == {"curves": 20}  # at 10 and 20 rows
    writer.add("simple_matches", [simple_row()])
    writer.add("curves", [])
    assert writer.pending("simple_matches") == 1 and writer.commits == 2
    assert len(data_files(store, "curves")) == 2
    writer.close()
    assert writer.written == {"curves": 25, "simple_matches": 1} and writer.commits == 4
    assert len(data_files(store, "curves")) == 1  # compacted
    assert len(load(store, "curves_all")) == 25 and len(load(store, "simple_matches_raw")) == 1
    writer.close()  # closing again does nothing
    with pytest.raises(ValueError, match="closed"):
        writer.add("curves", [curve_row()])


def test_table_writer_commits_rows_that_waited_max_seconds(local_store, monkeypatch):
    import raymatch.results.writing as writing

    clock = [100.0]
    monkeypatch.setattr(writing.time, "monotonic", lambda: clock[0])
    with TableWriter(local_store, max_rows=1000, max_seconds=30) as writer:
        writer.add("curves", [curve_row()])
        clock[0] += 29
        writer.add("models", [model_row()])
        assert writer.commits == 0
        clock[0] += 1
        writer.flush_due()
        assert writer.commits == 1 and writer.pending("curves") == 0 and writer.pending("models") == 1
        with pytest.raises(ValueError, match="curves row 1: unknown field 'x'"):
            writer.add("curves", [curve_row(layer="ok"), {**curve_row(), "x": 1}])
        assert writer.pending("curves") == 0  # a bad batch buffers nothing
    assert writer.written == {"curves": 1, "models": 1}
    for bad in ({"max_rows": 0}, {"max_seconds": -1}, {"max_rows": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            TableWriter(local_store, **bad)


def test_a_block_that_raises_still_commits_what_was_added(local_store):
    with pytest.raises(RuntimeError), TableWriter(local_store, max_rows=1000) as writer:
        writer.add("curves", [curve_row()])
        raise RuntimeError("driver stopped")
    assert read_columns(local_store, "curves", ["layer"]).num_rows == 1


def test_one_process_compacts_a_table_at_a_time(store):
    with TableWriter(store, max_rows=1) as writer:
        for repeat in range(3):
            writer.add("curves", [curve_row(repeat=repeat)])
        writer.flush()
        lock = f"{layout.table_prefix('curves')}/_raymatch_compaction.lock"
        store.write_json(lock, {"owner": "another driver", "created": time.time()})
        writer.close()  # another process holds the claim: this one leaves the files as they are
    assert len(data_files(store, "curves")) == 3
    assert compact_table(store, "curves") == {} and store.exists(lock)
    store.write_json(lock, {"owner": "a killed driver", "created": time.time() - 7200})
    assert compact_table(store, "curves")["numFilesRemoved"] == 3  # an abandoned claim is taken over
    assert len(data_files(store, "curves")) == 1 and not store.exists(lock)
    assert sorted(read_columns(store, "curves", ["repeat"]).column(0).to_pylist()) == [0, 1, 2]
    assert compact_table(store, "models") == {}  # no table


@pytest.mark.slow
def test_processes_that_wrote_and_read_tables_exit_cleanly(local_store):
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_results import curve_row, write_study
from raymatch.results import TableWriter, load, query, read_columns
from raymatch.results.reading import dataset
from raymatch.store import Store
store = Store({local_store.root!r})
write_study(store)
with TableWriter(store) as writer:
    writer.add("curves", [curve_row()])
assert len(query(store, "SELECT * FROM matches")) == 2 and len(load(store, eps=0.3)) == 1
assert read_columns(store, "curves", ["study"]).num_rows >= 1
kept = dataset(store, "curves")  # still alive at exit
assert kept.to_table().num_rows >= 1
"""
    for _ in range(3):  # read through deltalake's own filesystem, this aborted at exit about every other run
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, "")


# ------------------------------------------------------------------------------------------------ 0.1.0 stores


def test_a_store_written_by_0_1_0_is_refused_with_one_clear_line(store):
    store.write_table("results/matches/conv1.r0.0123456789abcdef.parquet", pa.table({"study": ["s1"]}))
    calls = [lambda: check_store_version(store), lambda: connect(store), lambda: query(store, "SELECT 1"),
             lambda: load(store), lambda: read_columns(store, "curves", ["study"]),
             lambda: append_rows(store, "runs", [run_row()]), lambda: TableWriter(store)]
    for call in calls:
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and store.uri in message and "written by raymatch 0.1.0" in message
        assert "ε grid only" in message and "no ε-curves" in message
        assert "rerun the study into a new store" in message and "delete" in message and "results" in message
    assert store.list("results") == ["results/matches/conv1.r0.0123456789abcdef.parquet"]  # nothing written


def test_0_1_0_runs_objects_are_refused_and_delta_tables_are_not(local_store):
    append_rows(local_store, "curves", [curve_row()])
    TableWriter(local_store).close()
    check_store_version(local_store)
    local_store.write_table("results/runs/s1.20260101T000000.ab12cd34.parquet", pa.table({"study": ["s1"]}))
    with pytest.raises(ValueError, match="one Parquet object per task in results/runs"):
        check_store_version(local_store)


def test_the_0_1_0_check_lists_a_store_once_per_store_object(local_store, monkeypatch):
    """Reads and appends look for a 0.1.0 store once per ``Store`` (issue 21, point 4); the explicit check always."""
    from raymatch.store import Store

    results = local_store.path("results")
    listings = []
    real_ls = local_store.fs.ls

    def counting_ls(path, *args, **kwargs):
        listings.append(path)
        return real_ls(path, *args, **kwargs)

    append_rows(local_store, "curves", [curve_row()])  # the results folder exists from here on
    monkeypatch.setattr(local_store.fs, "ls", counting_ls)  # the one local filesystem instance of this process
    fresh = Store(local_store.uri)
    write_study(fresh)
    for repeat in range(3):
        append_rows(fresh, "curves", [curve_row(repeat=repeat)])
        read_columns(fresh, "curves", ["repeat"])
        query(fresh, "SELECT count(*) FROM matches")
    with TableWriter(fresh) as writer:
        writer.add("curves", [curve_row(repeat=9)])
    assert listings.count(results) == 1
    check_store_version(fresh)
    assert listings.count(results) == 2
    read_columns(Store(local_store.uri), "curves", ["repeat"])  # another Store object: looked at again
    assert listings.count(results) == 3


# ------------------------------------------------------------------------------------------------ summaries


def hand_made_matches() -> pd.DataFrame:
    rows = []
    similarities = {  # (layer, pair) -> similarity at eps 0.1, 0.2 (repeat 0, repeat 1)
        ("fc", ("m0", "m1")): [(0.2, 0.4), (0.6, 0.6)],
        ("fc", ("m0", "m2")): [(0.5, 0.5), (0.8, 1.0)],
        ("conv", ("m0", "m1")): [(0.1, 0.1), (0.3, 0.3)],
    }
    for (layer, (model_a, model_b)), per_eps in similarities.items():
        for eps, values in zip((0.1, 0.2), per_eps, strict=True):
            for repeat, similarity in enumerate(values):
                rows.append({"study": "s1", "population": "trained", "layer": layer, "model_a": model_a,
                             "model_b": model_b, "eps": eps, "repeat": repeat, "similarity": similarity,
                             "chance": 0.5 + repeat / 10, "max_epsilon": 0.3 + repeat / 10, "status": "ok"})
    rows.append({"study": "s1", "population": "trained", "layer": "fc", "model_a": "m0", "model_b": "m1",
                 "eps": 0.1, "repeat": 0, "similarity": 99.0, "status": "failed"})
    return pd.DataFrame(rows)


def test_figure_data_summarises_pairs_per_layer_and_eps():
    figure = figure_data(hand_made_matches())
    assert list(figure.columns) == ["study", "population", "layer", "eps", "similarity_mean", "similarity_std",
                                    "similarity_min", "similarity_max", "chance", "n_pairs"]
    assert figure[["layer", "eps"]].values.tolist() == [["fc", 0.1], ["fc", 0.2], ["conv", 0.1], ["conv", 0.2]]
    fc_01 = figure.iloc[0]
    assert fc_01["similarity_mean"] == pytest.approx(0.4)  # pair means 0.3 and 0.5
    assert fc_01["similarity_std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert (fc_01["similarity_min"], fc_01["similarity_max"]) == pytest.approx((0.3, 0.5))
    assert fc_01["chance"] == pytest.approx(0.55)
    assert fc_01["n_pairs"] == 2
    assert figure.iloc[1]["similarity_mean"] == pytest.approx(0.75)
    conv_02 = figure.iloc[3]
    assert conv_02["n_pairs"] == 1 and conv_02["similarity_mean"] == pytest.approx(0.3)
    assert math.isnan(conv_02["similarity_std"])


def test_figure_data_and_pair_summary_of_nothing_keep_their_columns():
    empty = MATCHES.empty_table().to_pandas()
    assert figure_data(empty).empty and "similarity_mean" in figure_data(empty).columns
    assert pair_summary(empty).empty and "max_epsilon" in pair_summary(empty).columns
    with pytest.raises(ValueError, match="'similarity'"):
        figure_data(pd.DataFrame({"study": ["s"]}))


def test_pair_summary_has_max_epsilon_and_a_column_per_eps():
    summary = pair_summary(hand_made_matches())
    assert list(summary.columns) == ["study", "population", "model_a", "model_b", "layer", "max_epsilon",
                                     similarity_column(0.1), similarity_column(0.2)]
    assert similarity_column(0.1) == "similarity@0.1"
    assert summary[["model_b", "layer"]].values.tolist() == [["m1", "fc"], ["m1", "conv"], ["m2", "fc"]]
    fc_m1 = summary.iloc[0]
    assert fc_m1["max_epsilon"] == pytest.approx(0.35)
    assert (fc_m1["similarity@0.1"], fc_m1["similarity@0.2"]) == pytest.approx((0.3, 0.6))
    assert summary.iloc[2]["similarity@0.2"] == pytest.approx(0.9)


def test_figure_data_of_the_matches_view(local_store):
    write_study(local_store, eps=(0.25, 0.5))
    append_rows(local_store, "curves", [curve_row(), curve_row(model_b="m2", critical_a=[0.0, 0.0, 0.0, 0.0])])
    figure = figure_data(load(local_store))
    assert figure["eps"].tolist() == [0.25, 0.5] and figure["n_pairs"].tolist() == [2, 2]
    assert figure["similarity_mean"].tolist() == pytest.approx([(4 / 8 + 6 / 8) / 2, (6 / 8 + 7 / 8) / 2])


# ------------------------------------------------------------------------------------------------ output, CLI


def test_query_errors_carry_duckdbs_message(local_store):
    with pytest.raises(ValueError, match="syntax error"):
        query(local_store, "SELEC 1")
    with pytest.raises(ValueError, match="nonesuch"):
        query(local_store, "SELECT * FROM nonesuch")
    with pytest.raises(ValueError, match="empty"):
        query(local_store, "  ")


def test_format_frame_renders_every_format():
    frame = pd.DataFrame({
        "layer": ["fc", "conv"], "similarity": [0.5, None],
        "neurons_a": [np.array([1, 2], dtype=np.int32), np.array([], dtype=np.int32)],
        "created_at": pd.to_datetime([CREATED, CREATED], utc=True),
    })
    table = format_frame(frame, "table")
    assert table.splitlines()[0].split() == ["layer", "similarity", "neurons_a", "created_at"]
    assert len(table.splitlines()) == 3
    back = pd.read_csv(io.StringIO(format_frame(frame, "csv")))
    assert back["layer"].tolist() == ["fc", "conv"] and back["similarity"].iloc[0] == 0.5
    assert [json.loads(cell) for cell in back["neurons_a"]] == [[1, 2], []]
    records = json.loads(format_frame(frame, "json"))
    assert records[0]["neurons_a"] == [1, 2] and records[1]["similarity"] is None
    assert pd.Timestamp(records[0]["created_at"]) == pd.Timestamp(CREATED)
    parquet = format_frame(frame, "parquet")
    assert isinstance(parquet, bytes)
    again = pq.read_table(io.BytesIO(parquet)).to_pandas()
    assert again["layer"].tolist() == ["fc", "conv"] and again["neurons_a"].iloc[0].tolist() == [1, 2]
    assert format_frame(frame.iloc[:0], "table").startswith("layer")
    with pytest.raises(ValueError, match="unknown output format"):
        format_frame(frame, "xml")


def test_cli_query_prints_a_table_and_csv(local_store, capsys, tmp_path):
    write_study(local_store, eps=(0.25,))
    append_rows(local_store, "curves", [curve_row(layer="fc"), curve_row(layer="conv", critical_b=[0, 0, 0, np.inf])])
    sql = "SELECT layer, similarity FROM matches ORDER BY layer"
    assert main(["query", local_store.root, sql]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["layer", "similarity"], ["conv", "0.625"], ["fc", "0.500"]]
    assert main(["query", local_store.root, "SELECT layer, size_b FROM matches_at(0) ORDER BY layer",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out == "layer,size_b\nconv,3\nfc,1\n"
    output = tmp_path / "out.parquet"
    assert main(["query", local_store.root, sql, "--format", "parquet", "--output", str(output)]) == 0
    assert pq.read_table(output).column("layer").to_pylist() == ["conv", "fc"]


def test_cli_query_user_errors_are_one_line_and_exit_2(local_store, capsys, tmp_path):
    append_rows(local_store, "curves", [curve_row()])
    assert main(["query", local_store.root, "SELEC layer FROM matches"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("raymatch: error: Parser Error: syntax error")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert main(["query", str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="syntax error"):
        main(["--debug", "query", local_store.root, "SELEC 1"])
