"""Claims on extraction (issue 26 point 7): a driver leases what it extracts; another driver of the same study waits
for the lease and then finds the activations stored, and a lease whose heartbeat stopped is taken over.

The lease objects themselves on the local store and on moto's S3 (``store``: both); whole runs below (slow): two
``raymatch run`` drivers of one study in subprocesses, 0.5 s apart, on a fresh local store and on a fresh moto S3
store — the second extracts nothing, writes no activation object, and both succeed without duplicate rows — and a
run that finds one lease of a dead driver (taken over) and one of a live driver (waited for).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from raymatch.cli import main
from raymatch.engine.leases import Leases, claimed_runs, lease_is_live
from raymatch.results import load
from raymatch.store.layout import lease_key

from .conftest import BUCKET, S3_KEY, S3_SECRET
from .extract.helpers import put_checkpoint
from .test_faults import ROOT
from .test_incremental import STUDY, _assert_complete_without_duplicates

KEY = lease_key("extract", "probe0", "model0")


def _stale(store, key: str, owner: str = "dead.run", interval: float = 1.0, age: float = 60.0) -> None:
    store.write_bytes(key, json.dumps({"owner": owner, "token": "t0", "interval": interval,
                                       "updated_at": time.time() - age}).encode())


def test_create_bytes_writes_only_where_nothing_is(store):
    assert store.create_bytes("leases/x.json", b"first")
    assert not store.create_bytes("leases/x.json", b"second")
    assert store.read_bytes("leases/x.json") == b"first"
    assert store.list("leases") == ["leases/x.json"]  # no temporary left beside it


def test_a_lease_is_held_by_one_driver_until_released(store):
    first, second = Leases(store, "run.a", 30.0), Leases(store, "run.b", 30.0)
    assert first.claim(KEY) and not second.claim(KEY)
    assert second.holders([KEY]) == {KEY: "run.a"} and first.holders([KEY]) == {}
    first.release(KEY)
    assert store.list("leases") == [] and second.claim(KEY)
    second.close()
    first.close()
    assert store.list("leases") == []


def test_a_stale_lease_is_taken_over(store, caplog):
    _stale(store, KEY)
    assert not lease_is_live(json.loads(store.read_bytes(KEY)))
    leases = Leases(store, "run.b", 30.0)
    with caplog.at_level("WARNING", logger="raymatch"):
        assert leases.claim(KEY)
    assert "taking over the lease" in caplog.text and "dead.run" in caplog.text
    assert json.loads(store.read_bytes(KEY))["owner"] == "run.b"
    store.write_bytes(KEY, b"{torn")  # a lease that cannot be read is no claim either
    assert Leases(store, "run.c", 30.0).claim(KEY)


def test_a_held_lease_is_renewed_and_stays_live(local_store):
    leases = Leases(local_store, "run.a", 0.2)
    assert leases.claim(KEY)
    first = json.loads(local_store.read_bytes(KEY))["updated_at"]
    time.sleep(0.9)
    body = json.loads(local_store.read_bytes(KEY))
    assert body["updated_at"] > first and lease_is_live(body, now=time.time() + 0.5)
    leases.close()
    assert local_store.list("leases") == []


class _Outcome:
    def __init__(self, item):
        self.item, self.ok = item, True


def test_tasks_claimed_by_another_driver_are_waited_for_then_found_stored(local_store):
    other = Leases(local_store, "run.other", 30.0)
    keys = {task: lease_key("extract", "p", task) for task in ("m0", "m1", "m2")}
    assert other.claim(keys["m1"])
    stored = set()
    ran: list[list[str]] = []

    def other_driver():  # extracts m1, then releases its lease
        time.sleep(0.5)
        stored.add("m1")
        other.release(keys["m1"])

    def run(tasks):
        ran.append(list(tasks))
        stored.update(tasks)
        return [_Outcome(task) for task in tasks]

    mine = Leases(local_store, "run.mine", 0.2)
    thread = threading.Thread(target=other_driver)
    thread.start()
    outcomes, found = claimed_runs(list(keys), keys.get, mine, run, lambda: [t for t in keys if t not in stored],
                                   "extract")
    thread.join()
    assert ran == [["m0", "m2"]] and found == ["m1"] and [o.item for o in outcomes] == ["m0", "m2"]
    assert local_store.list("leases") == []


def test_a_task_whose_driver_stopped_without_storing_it_is_run_after_all(local_store):
    _stale(local_store, lease_key("extract", "p", "m0"), interval=0.1, age=0.0)  # goes stale within 0.3 s
    ran = []

    def run(tasks):
        ran.extend(tasks)
        return [_Outcome(task) for task in tasks]

    outcomes, found = claimed_runs(["m0"], lambda task: lease_key("extract", "p", task), Leases(local_store, "r", 0.1),
                                   run, lambda: [task for task in ["m0"] if task not in ran], "extract")
    assert ran == ["m0"] and found == [] and [outcome.item for outcome in outcomes] == ["m0"]


def test_gc_lists_the_lease_of_a_driver_that_died_and_keeps_a_live_one(local_store, capsys, monkeypatch):
    monkeypatch.setenv("RAYMATCH_HEARTBEAT_S", "30")  # abandoned (and its leases stale) after 90 s
    dead, live = lease_key("extract", "p", "dead"), lease_key("extract", "p", "live")
    _stale(local_store, dead, interval=30.0, age=600.0)
    stamp = time.time() - 600
    os.utime(os.path.join(local_store.root, dead), (stamp, stamp))
    holder = Leases(local_store, "run.live", 30.0)
    assert holder.claim(live)
    assert main(["gc", local_store.root, "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert f"temporary     {dead}" in out and live not in out
    assert main(["gc", local_store.root, "--older-than", "0s", "--yes"]) == 0
    assert local_store.list("leases") == [live]
    holder.close()


# ------------------------------------------------------------------------------------------------ whole runs

DRIVER = """
import fnmatch, os, sys, time
sys.path.insert(0, {root!r})
import raymatch.study.models as models
from raymatch.store import Store

class Counted(Store):
    \"\"\"Notes every activation object written, with the driver that wrote it (pickled by value to its workers).\"\"\"

    def write_bytes(self, key, data):
        if fnmatch.fnmatchcase(key, "activations/*"):
            with open(self.beacon, "a") as handle:
                handle.write(f"{{self.driver}} {{key}}\\n")
            deadline = time.monotonic() + 180
            while self.gate and not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.1)  # the first driver stores nothing until the second one waits for it
        super().write_bytes(key, data)

def opened(config):
    store = Counted.__new__(Counted)
    store.__setstate__(Store(config.location).__getstate__())
    store.beacon, store.driver, store.gate = {beacon!r}, os.environ["DRIVER"], os.environ["GATE"]
    return store

models.StoreConfig.open = opened
from raymatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_second_driver_of_the_same_study_waits_for_the_extraction_and_extracts_nothing(kind, request, tmp_path):
    """Issue 26 point 7: before, the second driver re-extracted every model and rewrote activations under the first.

    The second driver starts 0.5 s after the first one's first lease appears in the store, and the first one stores
    no activation until the second one says it waits for it (a gate file): the second finds every model claimed
    whatever the machine's load.
    """
    store = request.getfixturevalue(f"{kind}_store")
    for seed in range(4):
        put_checkpoint(store, seed)
    endpoint = f', endpoint_url: "{store.endpoint_url}"' if kind == "s3" else ""
    uri = f"s3://{BUCKET}/study" if kind == "s3" else f"file://{store.root}"
    study_file = tmp_path / "nightly.yaml"
    study_file.write_text(STUDY.format(uri=uri, endpoint=endpoint))
    script, beacon = tmp_path / "driver.py", tmp_path / "beacon"
    script.write_text(DRIVER.format(root=ROOT, beacon=str(beacon)))
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "RAY_TMPDIR": "/tmp"})

    gate = tmp_path / "gate"

    def driver(name: str, gate: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), "run", str(study_file), "--num-cpus", "1", "--quiet"],
                                env={**env, "DRIVER": name, "GATE": gate}, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    first, second, waiting = driver("first", str(gate)), None, []
    try:
        deadline = time.monotonic() + 180
        while not store.list("leases") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.list("leases"), first.communicate()[1][-3000:]
        time.sleep(0.5)
        second = driver("second", "")
        for line in second.stderr:  # until it says it waits
            waiting.append(line)
            if "claimed by run" in line:
                break
        gate.touch()
        outputs = {name: process.communicate(timeout=300) for name, process in (("first", first),
                                                                                  ("second", second))}
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    for name, process in (("first", first), ("second", second)):
        assert process.returncode == 0, (name, "".join(waiting) + outputs[name][1][-3000:])
    assert "extract: 4 task(s) claimed by run nightly." in "".join(waiting), "".join(waiting)[-3000:]

    writers = [line.split()[0] for line in beacon.read_text().splitlines()]
    assert writers and set(writers) == {"first"}  # the second driver wrote no activation object
    runs = {row.run_id: json.loads(row.stages) for row in load(store, "runs").itertuples()}
    extract = sorted((stages["extract"]["computed"], stages["extract"]["skipped"]) for stages in runs.values())
    assert extract == [(0, 4), (4, 0)]  # the second found all 4 models stored once the first's leases ended
    _assert_complete_without_duplicates(load(store, "matches"), 4)
    assert store.list("leases") == []  # released


@pytest.mark.slow
def test_a_run_takes_over_a_dead_drivers_lease_and_waits_for_a_live_one(local_store, tmp_path, ray_cluster, caplog):
    """One model's lease is a dead driver's (no heartbeat for minutes): taken over. Another's is held by a live
    driver that then stops without storing anything: waited for, then extracted here."""
    from raymatch.engine.planning import make_plan
    from raymatch.engine.run import run_study
    from raymatch.engine.stages.extract import extract_claim
    from raymatch.study import load_study

    for seed in range(4):
        put_checkpoint(local_store, seed)
    study_file = tmp_path / "nightly.yaml"
    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}", endpoint=""))
    study = load_study(study_file)
    plan = make_plan(study, local_store)
    dead, held = (lease_key("extract", *extract_claim(study, plan, job)) for job in plan["extract"].tasks[:2])
    _stale(local_store, dead)
    other = Leases(local_store, "other.run", 0.5)
    assert other.claim(held)
    releaser = threading.Timer(3.0, other.close)
    releaser.start()
    with caplog.at_level("INFO", logger="raymatch"):
        stages = run_study(study, progress=False)["stages"]
    releaser.join()
    assert (stages["extract"]["computed"], stages["extract"]["skipped"]) == (4, 0)
    assert "taking over the lease" in caplog.text and "dead.run" in caplog.text
    assert "extract: 1 task(s) claimed by run other.run: waiting for them" in caplog.text
    assert local_store.list("leases") == []
