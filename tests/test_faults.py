"""Faults (issue 6): a crash costs time, never correctness.

Each scenario runs a tiny study (4 untrained small CNNs on digits, 2 layers, 2 ε: 6 pairs × 2 layers = 12 pair
tasks, 12 ``curves`` rows) on a real local Ray cluster, injects one fault while it runs, and compares the final
``matches`` view with that of a clean run of the same study (same rows, same neuron sets); ``curves_raw`` shows
whether a pair was stored more than once. Pair tasks return their rows and the driver commits them to Delta tables
in batches, so a killed worker can only cost a task's work, and a killed driver its uncommitted batch.
docs/reliability.md ("Faults") summarises what each test shows.

To hit "mid-run" deterministically without hooks in the package, the study's store is replaced (for the driver
and, pickled by value, for every worker) by an instrumented ``Store`` that appends ``<pid> <key>`` (or
``<pid> read:<key>``) to a beacon file and sleeps a little before chosen writes and reads: the test then knows which
process is in the middle of which write or task, and kills exactly that one. The killed driver is paused by a
``TableWriter`` of the test's own between two commits.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raymatch.cli import main
from raymatch.engine.planning import make_plan
from raymatch.engine.run import run_study
from raymatch.results import load, query
from raymatch.store import ActivationKey, Store, StoreError, read_activations
from raymatch.store.activations import read_manifest, write_activations
from raymatch.study import load_study

from .conftest import S3_KEY, S3_SECRET
from .extract.helpers import put_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_MODELS = 4
LAYERS = ("relu1", "relu3")
EPS = (0.25, 0.5)
N_TASKS = N_MODELS * (N_MODELS - 1) // 2 * len(LAYERS)  # pair_block 1: one task per (pair, layer)

STUDY = """
name: faults
store: {{uri: "{uri}"{endpoint}}}
population: {{glob: "checkpoints/seed*.safetensors"}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 100, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.25, 0.5]
pairs: all
cka: false
resources: {{gpus_per_actor: {gpus}, pair_block: 1, max_in_flight: 2}}
"""

IDENTITY = ["population", "layer", "repeat", "model_a", "model_b", "eps"]
CONTENT = ["status", "n_samples", "n_a", "n_b", "dead_a", "dead_b", "size_a", "size_b", "similarity", "max_epsilon",
           "chance", "neurons_a", "neurons_b"]


# ------------------------------------------------------------------------------------------------ helpers


def _study(tmp_path, store: Store, *, gpus: int = 0, endpoint: str | None = None):
    """The study file on ``store`` (its 4 checkpoints written there), and the study loaded."""
    for seed in range(N_MODELS):
        put_checkpoint(store, seed)
    path = tmp_path / f"faults-{uuid.uuid4().hex[:6]}.yaml"
    uri = store.uri if not store.is_local else f"file://{store.root}"
    path.write_text(STUDY.format(uri=uri, gpus=gpus, endpoint=f', endpoint_url: "{endpoint}"' if endpoint else ""))
    return path, load_study(path)


def _content(store: Store):
    """The ``matches`` table without timings and timestamps, in a fixed row order."""
    table = load(store, "matches")
    return table.sort_values(IDENTITY).reset_index(drop=True)[IDENTITY + CONTENT + ["error"]]


def _assert_same_rows(got, want) -> None:
    assert len(got) == len(want) == N_TASKS * len(EPS)
    assert not got.duplicated(IDENTITY).any()
    assert got[IDENTITY].equals(want[IDENTITY])
    for column in ("status", "n_samples", "n_a", "n_b", "dead_a", "dead_b", "size_a", "size_b"):
        assert got[column].tolist() == want[column].tolist(), column
    for column in ("neurons_a", "neurons_b"):  # the same neuron sets, row by row
        assert [list(v) for v in got[column]] == [list(v) for v in want[column]], column
    for column in ("similarity", "max_epsilon", "chance"):
        np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-12)


def instrumented(store: Store, beacon: str, delays: dict[str, float], reads: dict[str, float] | None = None) -> Store:
    """``store`` whose writes of keys matching a pattern of ``delays`` (``fnmatch``: ``*`` also crosses ``/``) first
    append ``<pid> <key>`` to ``beacon`` and sleep that long; reads of keys matching a pattern of ``reads`` do the
    same with ``<pid> read:<key>``. The class is local, so Ray pickles it by value: workers run it without importing
    tests."""

    class Instrumented(Store):
        def _slow(self, patterns, key, tag):
            for pattern, seconds in patterns.items():
                if fnmatch.fnmatchcase(key, pattern):
                    with open(self.beacon, "a") as handle:
                        handle.write(f"{os.getpid()} {tag}{key}\n")
                    time.sleep(seconds)
                    break

        def write_bytes(self, key, data):
            self._slow(self.delays, key, "")
            super().write_bytes(key, data)

        def read_bytes(self, key):
            self._slow(self.reads, key, "read:")
            return super().read_bytes(key)

    slowed = Instrumented.__new__(Instrumented)
    slowed.__setstate__(store.__getstate__())  # the same store (options, credentials), as a worker gets it
    slowed.beacon, slowed.delays, slowed.reads = beacon, dict(delays), dict(reads or {})
    return slowed


@contextlib.contextmanager
def study_store(study, store: Store):
    """Make ``study.store.open()`` return ``store`` (for the driver; workers get it pickled)."""
    config = type(study.store)
    original = config.open
    config.open = lambda self: store
    try:
        yield store
    finally:
        config.open = original


def _beacon_lines(beacon: str) -> list[tuple[int, str]]:
    """(pid, key) of every whole line of the beacon so far."""
    try:
        with open(beacon) as handle:
            lines = [line.split() for line in handle if line.endswith("\n")]
    except FileNotFoundError:
        return []
    return [(int(fields[0]), fields[1]) for fields in lines if len(fields) == 2]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class Killer(threading.Thread):
    """Kill (SIGKILL) the first process seen in the beacon writing under each prefix, one prefix after another."""

    def __init__(self, beacon: str, prefixes: list[str], timeout: float = 180):
        super().__init__(daemon=True)
        self.beacon, self.prefixes, self.timeout = beacon, list(prefixes), timeout
        self.killed: list[tuple[str, int, str, int]] = []  # (prefix, pid, key, beacon line index)
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        for prefix in self.prefixes:
            while not self.stop.is_set() and time.monotonic() < deadline:
                lines = _beacon_lines(self.beacon)
                hit = next(((i, pid, key) for i, (pid, key) in enumerate(lines) if key.startswith(prefix)), None)
                if hit is not None:
                    index, pid, key = hit
                    if pid == os.getpid():  # never this process (the driver writes through the same store)
                        return
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append((prefix, pid, key, index))
                    break
                time.sleep(0.01)


@pytest.fixture(scope="module")
def clean(ray_cluster, tmp_path_factory):
    """The ``matches`` table of a clean run of the study: what every faulty run must end with."""
    tmp_path = tmp_path_factory.mktemp("clean")
    store = Store(str(tmp_path / "store"))
    _, study = _study(tmp_path, store)
    summary = run_study(study, progress=False)
    assert summary["stages"]["match"]["computed"] == N_TASKS and summary["stages"]["match"]["failed"] == 0
    return _content(store)


# ------------------------------------------------------------------------------------------------ 1. workers killed


#: Where the tests kill a process: an extraction actor writing activations, a pair worker writing a factor (the one
#: part of each, so a kill lands before the factor's manifest), and a pair worker reading a factor in a match task
#: (the match stage is the only reader of stored factors in these runs: the task is running, its rows not returned).
EXTRACT_WRITE, FACTOR_WRITE, MATCH_READ = "activations/*", "factors/*/coords.arrow", "factors/*/_manifest.json"


def _raw_count(store: Store, table: str = "curves") -> int:
    """Rows stored in ``table`` (every appended row: ``<table>_raw``, before the views remove duplicates)."""
    return int(query(store, f"SELECT count(*) AS n FROM {table}_raw")["n"].iloc[0])


@pytest.mark.slow
@pytest.mark.parametrize("gpus", [0, 1], ids=["cpu-actors", "gpu-actors+tasks"])
def test_a_killed_extraction_actor_and_match_worker_cost_time_not_rows(ray_cluster, clean, tmp_path, gpus):
    """SIGKILL the extraction actor in the middle of writing a model's activations, then (GPU case) a pair worker in
    the middle of writing a factor, then the pair worker running a match task (while it reads a factor: its rows
    are not returned yet): Ray restarts the actors and retries the calls, or reruns the tasks; the run completes,
    every pair's row is committed once, and the table is the clean run's. With ``gpus_per_actor: 0`` the factor
    and pair tasks run on the (restarted) extraction actors, which restart at most twice: the factor write is not
    killed there, so that no actor can die a third time. With 1 (the session cluster has 2 fake GPUs) extraction
    holds the GPUs and the factor and pair tasks are plain Ray tasks (``max_retries``)."""
    beacon = str(tmp_path / "beacon")
    store = instrumented(Store(str(tmp_path / "store")), beacon, {EXTRACT_WRITE: 0.3, FACTOR_WRITE: 0.3},
                         reads={MATCH_READ: 0.3})
    _, study = _study(tmp_path, store, gpus=gpus)
    prefixes = ["activations/"] + (["factors/"] if gpus else []) + ["read:factors/"]
    killer = Killer(beacon, prefixes)
    killer.start()
    with study_store(study, store):
        summary = run_study(study, progress=False)
    killer.stop.set()
    killer.join()

    assert [prefix for prefix, *_ in killer.killed] == prefixes
    lines = _beacon_lines(beacon)
    for _, pid, key, index in killer.killed:
        assert not _alive(pid)
        # the same write (read) again, later, from another process: Ray retried the call after the kill
        assert any(k == key and p != pid for p, k in lines[index + 1:]), (key, lines)
        assert store.exists(key.removeprefix("read:"))
    stages = summary["stages"]
    assert (stages["extract"]["computed"], stages["extract"]["failed"]) == (N_MODELS, 0)
    assert (stages["factor"]["computed"], stages["factor"]["failed"]) == (N_MODELS * len(LAYERS), 0)
    assert (stages["match"]["computed"], stages["match"]["failed"], stages["match"]["failed_rows"]) == (N_TASKS, 0, 0)
    _assert_same_rows(_content(store), clean)
    assert _raw_count(store) == N_TASKS  # the killed task returned nothing: each pair's row was committed once
    assert load(store, "runs")["status"].tolist() == ["succeeded"]


# ------------------------------------------------------------------------------------------------ 5. one bad pair


@pytest.mark.slow
def test_a_nan_in_one_models_activations_fails_only_its_pairs(ray_cluster, clean, tmp_path, capsys):
    """A NaN written into one model's stored activations of one layer: that model's pairs at that layer become
    failed rows carrying the error, every other row is the clean run's, and ``raymatch status`` lists them."""
    from raymatch.extract import ExtractionJob
    from raymatch.extract.extractor import run_job

    store = Store(str(tmp_path / "store"))
    _, study = _study(tmp_path, store)
    summaries = [run_job(store, ExtractionJob(f"checkpoints/seed{seed}.safetensors", study.architecture.name,
                                              study.probe, tuple(study.layers), study.architecture.kwargs))
                 for seed in range(N_MODELS)]
    bad_model = summaries[0]["model_id"]
    key = ActivationKey(study.probe.id, bad_model, "relu1")
    manifest = read_manifest(store, key)
    matrix = read_activations(store, key)
    matrix[3, 1] = np.nan
    write_activations(store, key, matrix, metadata={name: manifest[name] for name in
                                                    ("layer_shape", "row_policy", "n_images")})

    summary = run_study(study, progress=False)
    stages = summary["stages"]
    assert stages["extract"]["computed"] == 0 and stages["extract"]["skipped"] == N_MODELS
    message = f"ValueError: activations of {bad_model}/relu1/r0 has 1 non-finite values (NaN or Inf) out of 51200"
    # the one matrix that cannot be factored is the one failed task of the run (so the run is recorded as failed)
    assert (stages["factor"]["computed"], stages["factor"]["failed"]) == (N_MODELS * len(LAYERS) - 1, 1)
    assert stages["factor"]["errors"] == [message]
    assert load(store, "runs")["status"].tolist() == ["failed"]
    assert (stages["match"]["computed"], stages["match"]["failed"]) == (N_TASKS, 0)  # pair tasks complete ...
    assert stages["match"]["failed_rows"] == N_MODELS - 1  # ... with the bad pairs' curves as failed rows

    got = _content(store)
    bad = (got["layer"] == "relu1") & ((got["model_a"] == bad_model) | (got["model_b"] == bad_model))
    assert bad.sum() == (N_MODELS - 1) * len(EPS)
    assert set(got.loc[bad, "status"]) == {"failed"} and set(got.loc[~bad, "status"]) == {"ok"}
    assert (got.loc[bad, "error"] == message).all()
    assert got.loc[~bad, "error"].isna().all()
    want = clean[~bad.to_numpy()]
    for column in ("size_a", "size_b", "similarity"):
        assert got.loc[~bad, column].tolist() == want[column].tolist()
    assert [list(v) for v in got.loc[~bad, "neurons_a"]] == [list(v) for v in want["neurons_a"]]

    assert _raw_count(store) == N_TASKS  # one curve per pair, failed or not

    assert main(["status", store.root]) == 0
    out = capsys.readouterr().out
    assert f"{N_MODELS - 1} failed match row(s)" in out  # one failed curve per pair (each gives a row per ε)
    pairs = [line for line in out.splitlines() if line.startswith("faults ") and line.rstrip().endswith("[1]")]
    assert len(pairs) == N_MODELS - 1  # one line per failed pair, its error a note: the one error, whole, below
    assert out.count("non-finite") == 1 and f"[1] {message}"[:100] in out.replace("\n    ", " "), out
    assert "study faults: complete" in out  # failed rows are done work: a rerun does not retry them


# ------------------------------------------------------------------------------------------------ 4. local store errors


def _leftovers(root: str) -> list[str]:
    """Temporary files anywhere under ``root`` (a killed or failed write would leave ``.tmp-*``)."""
    return [os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
            if name.startswith(".tmp-")]


@pytest.fixture
def tiny_disk(tmp_path, monkeypatch):
    """A 128 KiB file system: a real tmpfs where this process may mount one (root), else a quota on the folder
    enforced by making ``os.fsync`` fail with ENOSPC once the folder holds more than 128 KiB."""
    folder = tmp_path / "disk"
    folder.mkdir()
    quota = 128 * 1024
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={quota}", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    if not mounted:
        real_fsync = os.fsync

        def fsync(fd):
            used = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names)
            if used > quota:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    try:
        yield str(folder), "tmpfs" if mounted else "fsync quota"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_gives_a_clear_error_and_no_partial_object(tiny_disk, tmp_path):
    from raymatch.extract import ExtractionJob
    from raymatch.extract.extractor import run_job
    from raymatch.models import checkpoint_id
    from raymatch.store import is_stored

    folder, how = tiny_disk
    written = []

    class Counting(Store):
        def write_bytes(self, key, data):
            super().write_bytes(key, data)
            written.append(key)

    store = Counting(folder)
    with pytest.raises(StoreError) as raised:  # one object bigger than the disk
        store.write_bytes("checkpoints/big.bin", os.urandom(512 * 1024))
    message = str(raised.value)
    assert "No space left on device" in message and f"store {folder}" in message and "checkpoints/big.bin" in message
    assert not store.exists("checkpoints/big.bin") and store.list() == [] and not _leftovers(folder)

    # a matrix of many shards: the first ones fit, a later one does not; nothing of it stays
    source = Store(str(tmp_path / "source"))
    _, study = _study(tmp_path, source)
    job = ExtractionJob(os.path.join(source.root, "checkpoints/seed0.safetensors"), study.architecture.name,
                        study.probe, ("relu1",), study.architecture.kwargs)
    with pytest.raises(StoreError, match="No space left on device"):
        run_job(store, job, shard_rows=500)  # relu1: 6,400 rows × 8 neurons, 13 shards of 18 KiB
    assert len(written) >= 3  # shards that fitted were written, then removed when a later one did not
    model_id = checkpoint_id(source.read_bytes("checkpoints/seed0.safetensors"))
    assert not is_stored(store, ActivationKey(study.probe.id, model_id, "relu1"))
    assert store.list() == [] and not _leftovers(folder), (how, store.list())

    # the store stays usable: what fits is written
    store.write_json("studies/s.json", {"name": "s"})
    assert store.list() == ["studies/s.json"]


PERMISSION_CHILD = """
import json, os, sys
sys.path.insert(0, {root!r})
from raymatch.store import Store
import datetime
from raymatch.results import append_rows
NOW = datetime.datetime.now(datetime.timezone.utc)
RUN = {{"run_id": "r1", "study": "s", "config_hash": "h", "host": "x", "code_version": "0", "started_at": NOW,
        "ended_at": None, "status": "running", "computed": 0, "skipped": 0, "failed": 0, "stages": "{{}}",
        "error": None}}
warm = Store({warm!r})  # every lazy import happens now: the interpreter's own files may be unreadable below
warm.check()
append_rows(warm, "runs", [RUN])
if os.geteuid() == 0:  # root ignores file modes: go on as nobody (the interpreter lives in root's home)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
store, errors = Store({folder!r}), {{}}
for name, action in (("check", lambda: store.check()),
                     ("write", lambda: store.write_bytes("checkpoints/seed0.safetensors", b"x" * 1000)),
                     ("rows", lambda: append_rows(store, "runs", [RUN]))):
    try:
        action()
        errors[name] = None
    except Exception as error:
        errors[name] = type(error).__name__ + ": " + str(error)
print(json.dumps(errors))
"""


def test_a_store_without_write_permission_gives_a_clear_error_and_no_partial_object(tmp_path):
    """The store's folder exists and is readable but not writable. The writer is a child process; root ignores
    file modes, so as root the child drops to user ``nobody`` (65534) before it writes."""
    base = tempfile.mkdtemp(prefix="rmperm-")  # outside pytest's 0700 temporary folders: ``nobody`` can enter
    try:
        os.chmod(base, 0o755)
        folder = os.path.join(base, "store")
        os.makedirs(os.path.join(folder, "results"))
        os.chmod(folder, 0o755 if os.geteuid() == 0 else 0o555)
        os.chmod(os.path.join(folder, "results"), 0o755 if os.geteuid() == 0 else 0o555)
        child = [sys.executable, "-c", PERMISSION_CHILD.format(root=ROOT, folder=folder, warm=str(tmp_path / "w"))]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(child, capture_output=True, text=True, timeout=120, env=env, cwd=base)
        assert done.returncode == 0, done.stderr[-3000:]
        errors = json.loads(done.stdout.strip().splitlines()[-1])
        for name, error in errors.items():
            assert error is not None and error.startswith("StoreError: cannot "), (name, error)
            assert f"store {folder}" in error and "Permission denied" in error, (name, error)
        assert "'checkpoints/seed0.safetensors'" in errors["write"] and "results table 'runs'" in errors["rows"]
        assert Store(folder).list() == [] and not _leftovers(folder)
        assert sorted(os.listdir(folder)) == ["results"] and os.listdir(os.path.join(folder, "results")) == []
    finally:
        for path in (base, os.path.join(base, "store"), os.path.join(base, "store", "results")):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o755)
        subprocess.run(["rm", "-rf", base], check=False)


# ------------------------------------------------------------------------------------------------ 2. driver killed

DRIVER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import raymatch.engine.run as run
from raymatch.results import TableWriter

class Pausing(TableWriter):
    # commits every 2 rows of a table; once a commit is made and more rows wait in the buffer, it says so in the
    # beacon and stops there: the test kills it then, with committed and buffered rows both known
    def __init__(self, store, **options):
        super().__init__(store, max_rows=2, max_seconds=3600)

    def add(self, table, rows):
        super().add(table, rows)
        if table == "curves" and self.written.get(table) and self.pending(table):
            buffered = [[row[name] for name in ("layer", "model_a", "model_b")]
                        for part in self._buffers[table] for row in part.to_pylist()]
            with open({beacon!r}, "a") as handle:
                handle.write(json.dumps({{"pid": os.getpid(), "committed": self.written[table],
                                          "buffered": buffered}}) + "\\n")
            time.sleep(600)

run.TableWriter = Pausing
from raymatch.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: Names of the objects of a Delta table under ``results/<table>/``: commits (one JSON action a line), checkpoints,
#: data files, and the compaction claim.
DELTA_OBJECT = re.compile(r"results/[a-z_]+/(_delta_log/(\d{20}\.json|\d{20}\.checkpoint\.parquet|_last_checkpoint)"
                          r"|part-[0-9]{5}-[0-9a-f-]{36}-c000(\.zstd)?\.parquet|_raymatch_compaction\.lock)")


def _assert_whole_delta_tables(store: Store) -> None:
    """Every object under ``results/`` is a Delta object by name and reads whole: each commit file is complete
    newline-delimited JSON (one action a line), each data file is Parquet, and each file a commit adds exists."""
    keys = store.list("results")
    assert keys and all(DELTA_OBJECT.fullmatch(key) for key in keys), keys
    added = set()
    for key in keys:
        data = store.read_bytes(key)
        if key.endswith(".json"):
            actions = [json.loads(line) for line in data.decode().splitlines() if line]
            assert actions and all(len(action) == 1 for action in actions), (key, actions)
            table = key.split("/")[1]
            added |= {f"results/{table}/{a['add']['path']}" for a in actions if "add" in a}
        elif key.endswith(".parquet"):
            pq.read_table(io.BytesIO(data))
    assert added <= set(keys), sorted(added - set(keys))


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``: a driver started with it and everything it started."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as handle:
                    if mark.encode() in handle.read().split(b"\0") and _alive(int(name)):
                        found.append(int(name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_killed_driver_leaves_only_whole_objects_and_a_rerun_finishes_the_rest(ray_cluster, clean, tmp_path,
                                                                                 capsys):
    """``raymatch run`` (its own local Ray, 1 CPU; its writer commits every 2 rows) is SIGKILLed with its whole
    process group once one batch of pair results is committed and another is buffered. Its Ray processes go with
    it; only its whole commits are visible (``raymatch query`` sees exactly the committed rows); the run stays
    ``running`` in ``raymatch status``; a rerun computes exactly the missing pairs, the buffered ones among them,
    and ends with the clean run's table, each pair stored once."""
    store = Store(str(tmp_path / "store"))
    study_file, study = _study(tmp_path, store)
    script, beacon = tmp_path / "driver.py", tmp_path / "beacon"
    script.write_text(DRIVER.format(root=ROOT, beacon=str(beacon)))
    mark = f"RAYMATCH_FAULT_TEST={uuid.uuid4().hex}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    env.update(dict([mark.split("=", 1)]), RAY_TMPDIR="/tmp")
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, str(script), "run", str(study_file), "--num-cpus", "1", "--quiet"],
                              env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None and not beacon.exists():
            time.sleep(0.02)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.1)  # the beacon line is whole (the driver sleeps right after writing it)
        paused = json.loads(beacon.read_text())
        assert paused["pid"] == driver.pid
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        killed_at = time.monotonic()
        killed_utc = pd.Timestamp.now(tz="UTC")
        while _marked(mark) and time.monotonic() < killed_at + 30:
            time.sleep(0.1)
        left = _marked(mark)
        assert left == [], f"processes of the killed driver still running: {left}"
        with capsys.disabled():  # shown with -s
            print(f"\nthe killed driver's processes were gone {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        log.close()
        for pid in _marked(mark):  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # nothing half-written is visible: the tables hold whole commits only, and exactly the committed rows
    stored, buffered = paused["committed"], {tuple(row) for row in paused["buffered"]}
    assert stored == 2 and len(buffered) == 1
    _assert_whole_delta_tables(store)
    assert not [key for key in store.list("results") if key.endswith(".lock")]  # killed before it compacted
    assert _raw_count(store) == stored
    assert main(["query", store.root, "SELECT count(*) AS n, count(*) FILTER (status = 'ok') AS ok FROM matches",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": stored * len(EPS), "ok": stored * len(EPS)}]
    committed = {tuple(row) for row in load(store, "curves")[["layer", "model_a", "model_b"]].itertuples(index=False)}
    assert len(committed) == stored and not committed & buffered  # the buffered row was lost with the driver
    (row,) = load(store, "runs").itertuples()
    assert row.status == "running" and pd.isna(row.ended_at)
    assert main(["status", store.root]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "its driver died" in out and f"to do: match {N_TASKS - stored}" in out
    assert make_plan(study, store).counts()["match"] == (stored, N_TASKS - stored)

    summary = run_study(study, progress=False)  # the rerun (here on the session's cluster)
    stages = summary["stages"]
    assert (stages["extract"]["computed"], stages["extract"]["skipped"]) == (0, N_MODELS)
    assert (stages["match"]["computed"], stages["match"]["skipped"]) == (N_TASKS - stored, stored)
    _assert_same_rows(_content(store), clean)
    _assert_whole_delta_tables(store)
    assert _raw_count(store) == N_TASKS  # every pair stored once: the committed ones were not computed again
    curves = load(store, "curves").set_index(["layer", "model_a", "model_b"])
    assert (curves.loc[sorted(buffered), "created_at"] > killed_utc).all()  # the lost batch was recomputed
    assert (curves.loc[sorted(committed), "created_at"] < killed_utc).all()  # the committed one was kept
    assert sorted(load(store, "runs")["status"]) == ["running", "succeeded"]


# ------------------------------------------------------------------------------------------------ 3. S3 endpoint down

FAULT_BUCKET = "raymatch-faults"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoint:
    """A moto S3 server of this test's own on a fixed port, which can stop (connections are refused) and start
    again with its objects (moto keeps them in this process, not in the server)."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def endpoint():
    import boto3
    import s3fs

    server = Endpoint()
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                          region_name="us-east-1")
    client.create_bucket(Bucket=FAULT_BUCKET)
    yield server
    server.stop()


def test_s3_calls_retry_transient_errors_with_capped_backoff(monkeypatch):
    """6 attempts in botocore's standard mode (backoff ≤ 1 + 2 + 4 + 8 + 16 s), on the driver and, pickled with the
    store, on the workers; the standard AWS variables and explicit options win."""
    import copy

    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    store = Store("s3://bucket/study", endpoint_url="http://127.0.0.1:9", key="k", secret="s")
    retries = {"mode": "standard", "total_max_attempts": 6}
    assert store.fs.config_kwargs["retries"] == retries
    assert copy.deepcopy(store).fs.config_kwargs["retries"] == retries  # rebuilt from its state, as on a worker
    mine = {"retries": {"mode": "adaptive", "total_max_attempts": 2}, "read_timeout": 5}
    assert Store("s3://bucket/study", storage_options={"config_kwargs": mine}).fs.config_kwargs == mine
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert "retries" not in Store("s3://bucket/study").fs.config_kwargs


class Outage(threading.Thread):
    """Stop the endpoint once the pair workers have begun ``reads`` reads of a factor in the match stage (as the
    beacon shows); start it again ``seconds`` later (or never)."""

    def __init__(self, server: Endpoint, beacon: str, reads: int, seconds: float | None):
        super().__init__(daemon=True)
        self.server, self.beacon, self.reads, self.seconds = server, beacon, reads, seconds
        self.reads_at_stop: int | None = None
        self.stopped_at = self.restarted_at = None
        self.cancel = threading.Event()

    def _reads(self) -> int:
        return sum(key.startswith("read:") for _, key in _beacon_lines(self.beacon))

    def run(self) -> None:
        deadline = time.monotonic() + 180
        while not self.cancel.is_set() and time.monotonic() < deadline:
            if self._reads() >= self.reads:
                break
            time.sleep(0.01)
        else:
            return
        self.server.stop()
        self.stopped_at, self.reads_at_stop = time.monotonic(), self._reads()
        if self.seconds is not None:
            time.sleep(self.seconds)
            self.server.start()
            self.restarted_at = time.monotonic()


#: Factor reads of the match stage in a whole run: one manifest per model of each of the 12 tasks.
MATCH_READS = 2 * N_TASKS


def _s3_stores(tmp_path, server: Endpoint, prefix: str, **options):
    """The plain store and the instrumented one (each match task's reads of its two factors' manifests 0.3 s
    late, so that the match stage lasts a few seconds, and the beacon shows where it is) of one study on
    ``server``; ``options`` go to both stores."""
    plain = Store(f"s3://{FAULT_BUCKET}/{prefix}", endpoint_url=server.url, key=S3_KEY, secret=S3_SECRET, **options)
    return plain, instrumented(plain, str(tmp_path / "beacon"), {}, reads={MATCH_READ: 0.3})


@pytest.mark.slow
def test_an_s3_endpoint_down_for_3_seconds_mid_run_costs_only_time(ray_cluster, clean, endpoint, tmp_path):
    """Down in the middle of the match stage, while the driver holds the rows of the tasks done so far (its
    writer commits every 50,000 rows or 30 s: here once, at the end): the workers' calls wait for the endpoint,
    the run completes, every pair is stored once and the table is the clean run's."""
    plain, store = _s3_stores(tmp_path, endpoint, "short")
    _, study = _study(tmp_path, store, endpoint=endpoint.url)
    outage = Outage(endpoint, store.beacon, MATCH_READS // 4, 3.0)
    outage.start()
    with study_store(study, store):
        summary = run_study(study, progress=False)
    ended = time.monotonic()
    outage.cancel.set()
    outage.join()

    assert outage.reads_at_stop is not None and outage.reads_at_stop < MATCH_READS  # it went down mid-stage ...
    assert outage.restarted_at < ended  # ... and the run went on after it came back
    print(f"\nendpoint down for 3 s after {outage.reads_at_stop} of the match stage's {MATCH_READS} factor reads; "
          f"the run ended {ended - outage.restarted_at:.1f} s after it came back")
    stages = summary["stages"]
    assert (stages["match"]["computed"], stages["match"]["failed"]) == (N_TASKS, 0), stages["match"]["errors"]
    _assert_same_rows(_content(plain), clean)
    _assert_whole_delta_tables(plain)
    assert _raw_count(plain) == N_TASKS  # every pair stored once
    assert load(plain, "runs")["status"].tolist() == ["succeeded"]


@pytest.mark.slow
def test_an_s3_endpoint_that_stays_down_stops_the_run_with_a_clear_error_and_a_rerun_completes(
        ray_cluster, clean, endpoint, tmp_path):
    """Down for good as the match stage begins (at its first factor read: no pair task can finish, so the driver
    holds no row): the first call out of attempts stops the run with its error; with the endpoint back, a rerun
    computes the pairs."""
    plain, store = _s3_stores(tmp_path, endpoint, "down", retries=1)  # two tries of each call: the test stays short
    _, study = _study(tmp_path, store, endpoint=endpoint.url)
    outage = Outage(endpoint, store.beacon, 1, None)
    outage.start()
    with study_store(study, store), pytest.raises(StoreError) as raised:
        run_study(study, progress=False)
    stopped_after = time.monotonic() - outage.stopped_at
    outage.join()
    message = str(raised.value)
    assert endpoint.url in message and "Could not connect" in message
    assert S3_KEY not in message and S3_SECRET not in message
    assert stopped_after <= 60, stopped_after
    print(f"\nstopped {stopped_after:.1f} s after the endpoint went down: {message}")

    endpoint.start()  # the endpoint is back: the rerun computes what is missing
    with study_store(study, plain):
        summary = run_study(study, progress=False)
    stages = summary["stages"]
    assert (stages["extract"]["skipped"], stages["factor"]["computed"]) == (N_MODELS, 0)
    assert (stages["match"]["computed"], stages["match"]["skipped"], stages["match"]["failed"]) == (N_TASKS, 0, 0)
    _assert_same_rows(_content(plain), clean)
    _assert_whole_delta_tables(plain)
    assert _raw_count(plain) == N_TASKS
    # the stopped run could not record its end (the store was down): its row stays "running"
    assert sorted(load(plain, "runs")["status"]) == ["running", "succeeded"]


# The driver's Delta IO on S3 waits out outages as the store does, and a stopped run reports its own error.


@pytest.mark.slow
def test_a_results_commit_waits_out_a_15_second_outage(endpoint):
    """The driver's commit of a batch, started with the endpoint down for 15 s, waits for it (should it give up
    early, the endpoint is started again at once, so that the test stays short)."""
    from raymatch.results import TableWriter, read_columns

    store = Store(f"s3://{FAULT_BUCKET}/commit", endpoint_url=endpoint.url, key=S3_KEY, secret=S3_SECRET)
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    row = {"run_id": "r1", "study": "s", "config_hash": "h", "host": "x", "code_version": "0", "started_at": now,
           "ended_at": None, "status": "running", "computed": 0, "skipped": 0, "failed": 0, "stages": "{}",
           "error": None}
    writer = TableWriter(store)
    writer.add("runs", [row])
    writer.flush()  # the table exists: the next commit is a plain append
    writer.add("runs", [{**row, "run_id": "r2"}])
    endpoint.stop()
    back = threading.Timer(15.0, endpoint.start)
    back.start()
    started, error = time.monotonic(), None
    try:
        writer.flush()
    except StoreError as raised:
        error = raised
    waited = time.monotonic() - started
    back.cancel()  # gave up before the endpoint came back: start it now
    back.join()
    if endpoint.server is None:
        endpoint.start()
    assert error is None, f"gave up after {waited:.1f} s of a 15 s outage: {error}"
    assert sorted(read_columns(store, "runs", ["run_id"]).column("run_id").to_pylist()) == ["r1", "r2"]


@pytest.mark.slow
def test_an_s3_endpoint_that_stays_down_while_the_driver_holds_rows_stops_the_run_with_the_workers_error(
        ray_cluster, endpoint, tmp_path):
    """As the stays-down test, but the endpoint goes down half-way through the match stage, when the driver holds
    the rows of the tasks done so far. One attempt per S3 call and short timeouts (of the workers' store and of the
    driver's commit of the rows it holds, which then fails at once and is logged) keep the test short."""
    _, store = _s3_stores(tmp_path, endpoint, "held", retries=0, connect_timeout=1, read_timeout=5)
    _, study = _study(tmp_path, store, endpoint=endpoint.url)
    outage = Outage(endpoint, store.beacon, MATCH_READS // 2, None)
    outage.start()
    with study_store(study, store), pytest.raises(StoreError) as raised:
        run_study(study, progress=False)
    outage.join()
    message = str(raised.value)
    assert S3_KEY not in message and S3_SECRET not in message
    assert endpoint.url in message and "Could not connect" in message, message
