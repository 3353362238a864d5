"""``raymatch gc`` (issue 15, operations 6): old temporary objects and what no recorded study references.

A store holding one recorded study (two user checkpoints) and, planted beside it, objects it references
(activations and factors of its probe and models), objects it does not (another model's and another probe's
activations, factors of an older factor version, a population trained with another recipe), a user checkpoint no
study uses (never a candidate) and temporary objects, old and fresh. A dry run lists and deletes nothing; ``--yes``
deletes exactly the garbage; a running run with a fresh heartbeat, or a study record that cannot be planned,
stops it.
"""

from __future__ import annotations

import datetime as _dt
import os
import time

import pytest

from raymatch import cli
from raymatch.engine.record import write_study_record
from raymatch.models import checkpoint_id
from raymatch.results import append_rows
from raymatch.store import Store
from raymatch.store.layout import FACTOR_VERSION
from raymatch.study import Study

from .conftest import S3_KEY, S3_SECRET
from .test_bad_inputs import SEEDS, study, tiny_checkpoint

OLD, FRESH = "0" * 32, "1" * 32


def _plant(store: Store) -> tuple[set[str], set[str]]:
    """The store's study and objects; returns (keys gc must keep, keys gc must delete)."""
    checkpoints = [tiny_checkpoint(seed) for seed in range(2)]
    for key, data in zip(SEEDS, checkpoints, strict=True):
        store.write_bytes(key, data)
    uri = store.uri if not store.is_local else store.root
    config = study(uri)
    if not store.is_local:
        config["store"]["endpoint_url"] = store.endpoint_url
    recorded = Study.from_dict(config)
    write_study_record(recorded, store)
    probe = recorded.probe.id
    model_a, model_b = (checkpoint_id(data) for data in checkpoints)
    keep = {*SEEDS, f"studies/{recorded.name}.json", "checkpoints/extra.safetensors",
            f"activations/{probe}/{model_a}/relu1/r0/part-00000.arrow",
            f"factors/{FACTOR_VERSION}/{probe}/{model_b}/relu3/r0/raw/_manifest.json"}
    garbage = {f"activations/{probe}/{'f' * 16}/relu1/r0/_manifest.json",
               f"activations/{probe}/{'f' * 16}/relu1/r0/part-00000.arrow",
               f"activations/{'e' * 16}/{model_a}/relu1/r0/part-00000.arrow",
               f"factors/v1/{probe}/{model_a}/relu1/r0/raw/_manifest.json",
               "checkpoints/small_cnn/trained-0123456789abcdef/seed0.safetensors",
               "checkpoints/small_cnn/trained-0123456789abcdef/seed0.json",
               f"_raymatch_probe-{OLD}"}
    for key in (keep | garbage) - {*SEEDS, f"studies/{recorded.name}.json"}:
        store.write_bytes(key, b"x" * 10)
    return keep, garbage


def _keys(store: Store) -> set[str]:
    """Every object's key (hidden names included), the results tables' aside."""
    start = len(store.root) + 1
    return {key for key in (str(path)[start:] for path in store.fs.find(store.root)) if not key.startswith("results/")}


def _age(store: Store, key: str, hours: float) -> None:
    stamp = time.time() - hours * 3600
    os.utime(os.path.join(store.root, key), (stamp, stamp))


def _run_row(run_id: str, status: str, seconds_ago: float) -> dict:
    now = _dt.datetime.now(_dt.timezone.utc)
    return {"run_id": run_id, "study": "bad-inputs", "config_hash": "0" * 16, "host": "h", "code_version": "x",
            "started_at": now - _dt.timedelta(hours=3), "ended_at": None, "status": status, "computed": 0,
            "skipped": 0, "failed": 0, "stages": "{}", "error": None,
            "updated_at": now - _dt.timedelta(seconds=seconds_ago)}


def test_gc_on_a_local_store_lists_then_deletes_only_garbage_and_never_while_a_run_may_write(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    keep, garbage = _plant(store)
    temporary = f"activations/x/.tmp-{OLD}"
    for key, hours in ((temporary, 2), (f"factors/.tmp-{FRESH}", 0)):  # a killed write's leftover; a write going on
        path = tmp_path / "store" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"y" * 5)
        _age(store, key, hours)
    _age(store, f"_raymatch_probe-{OLD}", 2)
    garbage.add(temporary)
    keep.add(f"factors/.tmp-{FRESH}")
    append_rows(store, "runs", [_run_row("old-run", "running", 3600)])  # abandoned: does not stop gc
    before = _keys(store)
    assert before == keep | garbage

    assert cli.main(["gc", store.root]) == 0
    out = capsys.readouterr().out
    assert "2 temporary object(s) older than 1h" in out and "6 object(s) no recorded study references" in out, out
    assert f"temporary     {temporary}" in out and ".tmp-" + FRESH not in out
    assert "unreferenced  checkpoints/small_cnn/trained-0123456789abcdef/  (2 object(s)" in out
    assert "dry run: nothing deleted" in out
    assert _keys(store) == before

    append_rows(store, "runs", [_run_row("live-run", "running", 5)])
    assert cli.main(["gc", store.root, "--yes"]) == 2
    captured = capsys.readouterr()
    assert "run live-run of study bad-inputs is running" in captured.out
    assert captured.err.strip() == ("raymatch: error: gc refused: run live-run of study bad-inputs is running "
                                    f"(heartbeat {captured.err.split('heartbeat ')[1].split(' ')[0]} s ago) and may "
                                    "still write; nothing deleted (run gc once it ends, or once status shows it "
                                    "abandoned)")
    assert _keys(store) == before

    append_rows(store, "runs", [{**_run_row("live-run", "succeeded", 0)}])  # it ended
    assert cli.main(["gc", store.root, "--yes"]) == 0
    assert "deleted 8 object(s)" in capsys.readouterr().out
    after = _keys(store)
    assert after == before - garbage and not any(key.startswith(f"activations/{'e' * 16}") for key in after)
    assert not (tmp_path / "store" / "checkpoints" / "small_cnn").exists()  # emptied folders go too

    # a study record that cannot be planned: what it references is unknown, so nothing unreferenced goes
    store.write_bytes(f"activations/{'e' * 16}/m/relu1/r0/part-00000.arrow", b"z")
    broken = study(store.root, name="broken", population={"checkpoints": ["checkpoints/gone0.safetensors",
                                                                            "checkpoints/gone1.safetensors"]})
    write_study_record(Study.from_dict(broken), store)
    assert cli.main(["gc", store.root, "--yes", "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert "study broken cannot be planned" in out and "0 object(s) no recorded study references" in out, out
    assert f"activations/{'e' * 16}/m/relu1/r0/part-00000.arrow" in _keys(store)
    assert f"factors/.tmp-{FRESH}" not in _keys(store)  # at --older-than 0s, every temporary object is old


def test_gc_on_s3_deletes_only_garbage(s3_store, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    keep, garbage = _plant(s3_store)
    before = _keys(s3_store)
    assert before == keep | garbage
    uri = ["gc", s3_store.uri, "--endpoint-url", s3_store.endpoint_url, "--older-than", "0s"]
    assert cli.main(uri) == 0
    assert "1 temporary object(s) older than 0s" in capsys.readouterr().out
    assert _keys(s3_store) == before
    assert cli.main([*uri, "--yes"]) == 0
    assert f"deleted {len(garbage)} object(s)" in capsys.readouterr().out
    assert _keys(s3_store) == keep


@pytest.mark.parametrize("age", ["1x", "-1h", "h"])
def test_gc_refuses_a_bad_age_in_one_line(tmp_path, capsys, age):
    (tmp_path / "store").mkdir()
    assert cli.main(["gc", str(tmp_path / "store"), f"--older-than={age}"]) == 2
    assert capsys.readouterr().err.strip() == (f"raymatch: error: --older-than: write an age like 45s, 30m, 1h or "
                                               f"2d; got {age!r}")


def test_gc_lists_the_heartbeat_of_a_driver_that_died_and_keeps_a_fresh_one(tmp_path, monkeypatch):
    from raymatch.engine.gc import plan_garbage
    from raymatch.store.layout import heartbeat_key

    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "30")  # abandoned after 90 s
    store = Store(str(tmp_path / "store"))
    for run_id in ("dead", "alive"):
        store.write_json(heartbeat_key(run_id), {"run_id": run_id, "updated_at": "2026-01-01T00:00:00+00:00"})
    _age(store, heartbeat_key("dead"), 0.05)  # 3 minutes: silent for longer than 3 intervals
    assert [item.key for item in plan_garbage(store, older_than=0).temporary] == [heartbeat_key("dead")]
    assert plan_garbage(store, older_than=3600).temporary == []  # younger than the age asked for


def test_gc_vacuums_the_table_files_compaction_replaced_and_keeps_every_row(tmp_path, capsys):
    from raymatch.results import compact_table, data_files, query

    store = Store(str(tmp_path / "store"))
    now = _dt.datetime.now(_dt.timezone.utc)
    for run in range(3):  # three appends: three files; compaction replaces them with one
        append_rows(store, "runs", [{"run_id": f"r{run}", "study": "s", "config_hash": "h", "host": "x",
                                     "code_version": "0", "started_at": now, "ended_at": now, "status": "succeeded",
                                     "computed": 0, "skipped": 0, "failed": 0, "stages": "{}", "error": None,
                                     "updated_at": now}])
    compact_table(store, "runs")
    parquet = sorted(key for key in store.list("results/runs") if key.endswith(".parquet"))
    assert len(parquet) == 4 and len(data_files(store, "runs")) == 1
    assert cli.main(["gc", str(store.root)]) == 0  # at the default age (1 h) the replaced files are kept
    assert "0 results-table file(s) replaced by compaction" in capsys.readouterr().out
    assert cli.main(["gc", str(store.root), "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert "3 results-table file(s) replaced by compaction" in out and "replaced      results/runs/" in out, out
    assert sorted(key for key in store.list("results/runs") if key.endswith(".parquet")) == parquet  # a dry run
    assert cli.main(["gc", str(store.root), "--older-than", "0s", "--yes"]) == 0
    assert "deleted 3 object(s)" in capsys.readouterr().out
    left = [key for key in store.list("results/runs") if key.endswith(".parquet")]
    assert len(left) == 1 and sorted(query(store, "SELECT run_id FROM runs")["run_id"]) == ["r0", "r1", "r2"]
