"""Results tables: schema enforcement, one object per task, loading, figure data, DuckDB queries, output formats
and the ``query`` command, on a local folder and on the moto S3 server."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymatch.cli import main
from raymatch.results import (
    CKA,
    MATCHES,
    RUNS,
    SIMPLE_MATCHES,
    TABLES,
    figure_data,
    format_frame,
    load,
    pair_summary,
    query,
    similarity_column,
    write_rows,
)

CREATED = dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)


def match_row(**fields) -> dict:
    row = {
        "study": "s1", "population": "trained", "layer": "conv1", "model_a": "m0", "model_b": "m1", "eps": 0.25,
        "repeat": 0,
        "n_samples": 1000, "n_a": 4, "n_b": 4, "dead_a": 0, "dead_b": 1, "size_a": 2, "size_b": 3,
        "similarity": 0.625, "max_epsilon": 0.4, "chance": math.sqrt(1 - 4 / 1000),
        "neurons_a": [0, 2], "neurons_b": np.array([1, 2, 3], dtype=np.int64), "seconds": 0.01,
        "status": "ok", "error": None, "code_version": "0.1.0", "config_hash": "abc123", "created_at": CREATED,
    }
    row.update(fields)
    return row


def failed_row(**fields) -> dict:
    row = {"study": "s1", "population": "trained",
           "layer": "conv2", "model_a": "m0", "model_b": "m1", "eps": 0.25, "repeat": 0,
           "status": "failed", "error": "MemoryError: out of memory", "code_version": "0.1.0",
           "config_hash": "abc123", "created_at": CREATED}
    row.update(fields)
    return row


def simple_row(**fields) -> dict:
    row = {"study": "s1", "population": "trained",
           "layer": "conv1", "model_a": "m0", "model_b": "m1", "eps": 0.0, "repeat": 0,
           "match_id": 0, "neurons_a": [3], "neurons_b": [5], "size_a": 1, "size_b": 1, "neuron": "a:3",
           "search_order": "index", "code_version": "0.1.0", "config_hash": "abc123", "created_at": CREATED}
    row.update(fields)
    return row


def cka_row(**fields) -> dict:
    row = {"study": "s1", "population": "trained",
           "layer": "conv1", "model_a": "m0", "model_b": "m1", "repeat": 0, "cka": 0.9,
           "code_version": "0.1.0", "config_hash": "abc123", "created_at": CREATED}
    row.update(fields)
    return row


def test_tables_name_the_four_schemas():
    assert TABLES == {"matches": MATCHES, "simple_matches": SIMPLE_MATCHES, "cka": CKA, "runs": RUNS}
    assert MATCHES.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert MATCHES.field("neurons_a").type == pa.list_(pa.int32())
    assert MATCHES.field("error").nullable and not MATCHES.field("study").nullable


def test_write_load_round_trip_keeps_lists_nulls_and_timestamps(store):
    key = write_rows(store, "matches", "pair-m0-m1.conv", [match_row(), failed_row()])
    assert key == "results/matches/pair-m0-m1.conv.parquet"
    assert store.list("results") == [key]
    frame = load(store)
    assert list(frame.columns) == MATCHES.names
    assert len(frame) == 2
    ok, failed = frame.iloc[0], frame.iloc[1]
    assert ok["neurons_a"].tolist() == [0, 2] and ok["neurons_b"].tolist() == [1, 2, 3]
    assert ok["created_at"] == pd.Timestamp(CREATED)
    assert str(frame["created_at"].dtype) == "datetime64[us, UTC]"
    assert pd.isna(ok["error"]) and ok["similarity"] == 0.625 and ok["n_samples"] == 1000
    assert failed["status"] == "failed" and failed["error"].startswith("MemoryError")
    assert failed["neurons_a"] is None and pd.isna(failed["similarity"]) and pd.isna(failed["size_a"])
    assert store.read_table(key).schema.equals(MATCHES)


def test_load_of_an_empty_table_has_the_columns(store):
    for table, schema in TABLES.items():
        frame = load(store, table)
        assert frame.empty and list(frame.columns) == schema.names


def test_load_filters_by_study_and_reads_every_table(store):
    write_rows(store, "matches", "t1", [match_row(study="s1"), match_row(study="s2", eps=0.5)])
    write_rows(store, "simple_matches", "t1", [simple_row(), simple_row(match_id=1, neuron="b:5")])
    write_rows(store, "cka", "t1", [cka_row()])
    assert load(store, study="s2")["eps"].tolist() == [0.5]
    assert load(store, study="nobody").empty
    assert load(store, "simple_matches")["neuron"].tolist() == ["a:3", "b:5"]
    assert load(store, "cka")["cka"].tolist() == [0.9]


@pytest.mark.parametrize(("row", "message"), [
    (match_row(colour="red"), "unknown field 'colour'"),
    ({k: v for k, v in match_row().items() if k != "layer"}, "missing required field 'layer'"),
    (match_row(similarity=None), "missing field 'similarity'"),
    (match_row(status="done"), "field 'status' must be one of"),
    (match_row(error="boom"), "'error' must be null"),
    (failed_row(error=None), "missing field 'error'"),
    (match_row(size_a=2.5), "field 'size_a' must be an integer"),
    (match_row(neurons_a=[0.5]), "field 'neurons_a' must be a list of integers"),
    (match_row(created_at=dt.datetime(2026, 1, 1)), "must be timezone-aware"),
    (match_row(n_a=2**40), "field 'n_a' cannot be stored as int32"),
    (match_row(study=7), "field 'study' cannot be stored as string"),
])
def test_rows_that_do_not_fit_the_schema_are_refused(local_store, row, message):
    with pytest.raises(ValueError, match=message):
        write_rows(local_store, "matches", "t1", [row])
    assert local_store.list() == []


def test_bad_table_names_and_task_ids_are_refused(local_store):
    with pytest.raises(ValueError, match="unknown results table 'match'"):
        write_rows(local_store, "match", "t1", [match_row()])
    for task_id in ("../x", "a/b", ".hidden", "", "-x", "x y"):
        with pytest.raises(ValueError, match="task id"):
            write_rows(local_store, "matches", task_id, [match_row()])
    with pytest.raises(ValueError, match="unknown results table"):
        load(local_store, "../matches")
    assert local_store.list() == []


def test_rewriting_a_task_replaces_its_rows_and_other_tasks_stay(store):
    write_rows(store, "matches", "t1", [match_row(eps=0.1), match_row(eps=0.2)])
    write_rows(store, "matches", "t2", [match_row(model_b="m2")])
    write_rows(store, "matches", "t1", [match_row(eps=0.1, similarity=0.5), match_row(eps=0.2)])
    frame = load(store)
    assert len(frame) == 3
    assert sorted(frame["model_b"]) == ["m1", "m1", "m2"]
    assert frame.loc[frame["eps"] == 0.1, "similarity"].tolist() == [0.5]
    assert store.list("results/matches") == ["results/matches/t1.parquet", "results/matches/t2.parquet"]


def test_concurrent_writers_on_different_tasks_lose_nothing(store):
    n_tasks, rows_per_task = 12, 5
    errors = []

    def task(index: int) -> None:
        try:
            rows = [match_row(model_b=f"m{index}", repeat=repeat) for repeat in range(rows_per_task)]
            write_rows(store, "matches", f"task-{index}", rows)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=task, args=(index,)) for index in range(n_tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    frame = load(store)
    assert len(frame) == n_tasks * rows_per_task
    assert frame.groupby("model_b").size().to_dict() == {f"m{index}": rows_per_task for index in range(n_tasks)}


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
                rows.append(match_row(layer=layer, model_a=model_a, model_b=model_b, eps=eps, repeat=repeat,
                                      similarity=similarity, chance=0.5 + repeat / 10,
                                      max_epsilon=0.3 + repeat / 10))
    rows.append(failed_row(layer="fc", eps=0.1, similarity=99.0))
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
    empty = load_empty_matches()
    assert figure_data(empty).empty and "similarity_mean" in figure_data(empty).columns
    assert pair_summary(empty).empty and "max_epsilon" in pair_summary(empty).columns
    with pytest.raises(ValueError, match="'similarity'"):
        figure_data(pd.DataFrame({"study": ["s"]}))


def load_empty_matches() -> pd.DataFrame:
    return MATCHES.empty_table().to_pandas()


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


def test_query_groups_matches_on_local_and_s3(store):
    write_rows(store, "matches", "t1", [match_row(layer="fc", similarity=0.2), match_row(layer="fc", eps=0.5,
                                                                                          similarity=0.4)])
    write_rows(store, "matches", "t2", [match_row(layer="conv", similarity=0.6), failed_row(layer="fc")])
    result = query(store, "SELECT layer, count(*) AS n, avg(similarity) AS mean FROM matches "
                          "WHERE status = 'ok' GROUP BY layer ORDER BY layer")
    assert result["layer"].tolist() == ["conv", "fc"]
    assert result["n"].tolist() == [1, 2]
    assert result["mean"].tolist() == pytest.approx([0.6, 0.3])
    rows = query(store, "SELECT neurons_b, created_at FROM matches WHERE status = 'ok' LIMIT 1")
    assert list(rows.iloc[0]["neurons_b"]) == [1, 2, 3]
    assert rows.iloc[0]["created_at"] == pd.Timestamp(CREATED)


def test_query_views_are_empty_before_any_rows(store):
    for table, schema in TABLES.items():
        result = query(store, f"SELECT * FROM {table}")
        assert result.empty and list(result.columns) == schema.names
    assert query(store, "SELECT count(*) AS n FROM matches")["n"].tolist() == [0]
    write_rows(store, "cka", "t1", [cka_row()])
    joined = query(store, "SELECT c.cka, m.similarity FROM cka c LEFT JOIN matches m USING (model_a, model_b)")
    assert joined["cka"].tolist() == [0.9]


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
    write_rows(local_store, "matches", "t1", [match_row(layer="fc", similarity=0.25),
                                              match_row(layer="conv", similarity=0.75)])
    sql = "SELECT layer, similarity FROM matches ORDER BY layer"
    assert main(["query", local_store.root, sql]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["layer", "similarity"], ["conv", "0.75"], ["fc", "0.25"]]
    assert main(["query", local_store.root, sql, "--format", "csv"]) == 0
    assert capsys.readouterr().out == "layer,similarity\nconv,0.75\nfc,0.25\n"
    output = tmp_path / "out.parquet"
    assert main(["query", local_store.root, sql, "--format", "parquet", "--output", str(output)]) == 0
    assert pq.read_table(output).column("layer").to_pylist() == ["conv", "fc"]


def test_cli_query_user_errors_are_one_line_and_exit_2(local_store, capsys, tmp_path):
    write_rows(local_store, "cka", "t1", [cka_row()])
    assert main(["query", local_store.root, "SELEC layer FROM matches"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("raymatch: error: Parser Error: syntax error")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert main(["query", str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="syntax error"):
        main(["--debug", "query", local_store.root, "SELEC 1"])
    with pytest.raises(ValueError, match="syntax error"):
        main(["query", local_store.root, "SELEC 1", "--debug"])
