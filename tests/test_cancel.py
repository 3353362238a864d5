"""Cancelling a run (issue 15, operations 4): SIGTERM or SIGINT to ``raymatch run``.

The driver (a real ``raymatch run`` process with its own local Ray) is signalled in the middle of the match stage:
it stops submitting, cancels what is in flight, commits the rows it already received, records the run as
``cancelled`` and exits with 130; its Ray processes go with it. A rerun then computes exactly the missing pairs.
To hit "mid-match" deterministically, the driver's store (pickled by value into the workers) sleeps before each
read of a factor manifest (two a match task), and the driver notes each ``curves`` row it receives in a beacon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from raymatch.engine.cancel import RunCancelled
from raymatch.engine.run import run_study
from raymatch.results import load, query
from raymatch.store import Store

from .test_faults import N_TASKS, ROOT, _alive, _marked, _study, instrumented, study_store

DRIVER = """
import fnmatch, os, sys, time
sys.path.insert(0, {root!r})
import raymatch.engine.run as run
import raymatch.study.models as models
from raymatch.results import TableWriter
from raymatch.store import Store

class SlowReads(Store):
    def read_bytes(self, key):
        if fnmatch.fnmatchcase(key, "factors/*/_manifest.json"):
            time.sleep(0.5)
        return super().read_bytes(key)

class Noting(TableWriter):
    def add(self, table, rows):
        super().add(table, rows)
        if table == "curves":
            with open({beacon!r}, "a") as handle:
                handle.write(f"{{len(rows)}}\\n")

models.StoreConfig.open = lambda self: SlowReads(self.uri)
run.TableWriter = Noting
from raymatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _received(beacon) -> int:
    try:
        return sum(int(line) for line in beacon.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def _assert_cancelled(store: Store, received: int, name: str) -> int:
    """The run is recorded as cancelled, with every row received before the signal; returns the rows stored."""
    (run,) = load(store, "runs").itertuples()
    assert run.status == "cancelled" and run.ended_at is not None
    assert run.error == f"RunCancelled: cancelled by {name}"
    committed = int(query(store, "SELECT count(*) AS n FROM curves_raw")["n"].iloc[0])
    assert received <= committed < N_TASKS  # every row received before the signal was committed
    return committed


def _assert_cancelled_then_rerun_completes(store: Store, study, received: int, name: str) -> None:
    committed = _assert_cancelled(store, received, name)

    stages = run_study(study, progress=False)["stages"]  # the rerun (on the session's cluster)
    assert (stages["match"]["computed"], stages["match"]["skipped"]) == (N_TASKS - committed, committed)
    curves = load(store, "curves")
    assert len(curves) == N_TASKS and (curves["status"] == "ok").all()
    assert int(query(store, "SELECT count(*) AS n FROM curves_raw")["n"].iloc[0]) == N_TASKS  # each pair once
    assert sorted(load(store, "runs")["status"]) == ["cancelled", "succeeded"]


@pytest.mark.slow
def test_sigterm_to_raymatch_run_cancels_commits_what_it_has_exits_130_and_a_rerun_completes(ray_cluster, tmp_path,
                                                                                             capsys):
    """A real ``raymatch run`` process (its own local Ray) gets SIGTERM (what ``kill`` and ``ray job stop`` send)."""
    store = Store(str(tmp_path / "store"))
    study_file, study = _study(tmp_path, store)
    script, beacon = tmp_path / "driver.py", tmp_path / "beacon"
    script.write_text(DRIVER.format(root=ROOT, beacon=str(beacon)))
    mark = f"RAYMATCH_CANCEL_TEST={uuid.uuid4().hex}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    env.update(dict([mark.split("=", 1)]), RAY_TMPDIR="/tmp", RAYMATCH_HEARTBEAT_S="1")
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, str(script), "run", str(study_file), "--num-cpus", "2", "--quiet",
                               "--verbose"],
                              env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None and _received(beacon) < 2:
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        received = _received(beacon)
        assert 2 <= received < N_TASKS
        signalled = time.monotonic()
        os.kill(driver.pid, signal.SIGTERM)
        code = driver.wait(timeout=60)
        stopped_after = time.monotonic() - signalled
        while _marked(mark) and time.monotonic() < signalled + 60:
            time.sleep(0.1)
        left = _marked(mark)
    finally:
        log.close()
        for pid in _marked(mark):  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    output = (tmp_path / "driver.log").read_text()
    assert code == 130, output[-3000:]
    assert "raymatch: cancelled by SIGTERM: rows computed so far are stored; rerun to finish" in output, output
    assert "Traceback" not in output and "killed by `ray.kill`" not in output, output[-3000:]
    assert left == [] and not _alive(driver.pid), f"processes of the cancelled driver still running: {left}"
    with capsys.disabled():  # shown with -s
        print(f"\nSIGTERM: driver exited {stopped_after:.1f} s after the signal, its processes gone "
              f"{time.monotonic() - signalled:.1f} s after it; {received} rows received before it")
    _assert_cancelled_then_rerun_completes(store, study, received, "SIGTERM")


@pytest.mark.slow
def test_interrupted_under_tee_the_cancel_line_comes_first_and_the_exit_stays_130(ray_cluster, tmp_path):
    """``raymatch run … 2>&1 | tee log`` and Ctrl-C (issue 26 point 10): the reader of the output goes away with the
    signal. Before: exit 1 and the cancel line lost. The line is printed (and flushed) when the signal arrives,
    before the teardown; writes after the pipe closed change nothing: exit 130."""
    store = Store(str(tmp_path / "store"))
    study_file, _ = _study(tmp_path, store)
    script, beacon = tmp_path / "driver.py", tmp_path / "beacon"
    script.write_text(DRIVER.format(root=ROOT, beacon=str(beacon)))
    mark = f"RAYMATCH_CANCEL_TEST={uuid.uuid4().hex}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    env.update(dict([mark.split("=", 1)]), RAY_TMPDIR="/tmp", RAYMATCH_HEARTBEAT_S="1")
    driver = subprocess.Popen([sys.executable, str(script), "run", str(study_file), "--num-cpus", "2"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    seen, alive_at_line = [], None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None and _received(beacon) < 2:
            time.sleep(0.05)
        received = _received(beacon)
        assert driver.poll() is None and 2 <= received < N_TASKS
        os.kill(driver.pid, signal.SIGINT)
        for line in driver.stdout:  # what `tee` shows before it goes
            seen.append(line)
            if "cancelled by SIGINT" in line:
                alive_at_line = driver.poll() is None
                break
        driver.stdout.close()  # `tee` is gone
        code = driver.wait(timeout=60)
        while _marked(mark) and time.monotonic() < deadline + 60:
            time.sleep(0.1)
    finally:
        for pid in _marked(mark):  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert "cancelled by SIGINT: stopping; committing the rows computed so far" in seen[-1], "".join(seen)[-3000:]
    assert alive_at_line, "the cancel line came only after the teardown"
    assert code == 130
    _assert_cancelled(store, received, "SIGINT")


@pytest.mark.slow
def test_sigint_to_a_driver_in_the_match_stage_raises_run_cancelled(ray_cluster, tmp_path, monkeypatch):
    """Ctrl-C in a Python driver calling ``run_study`` (here: this process, on the session's cluster)."""
    import raymatch.engine.run as run_module
    from raymatch.results import TableWriter

    store = Store(str(tmp_path / "store"))
    _, study = _study(tmp_path, store)
    slowed = instrumented(store, str(tmp_path / "reads"), {}, reads={"factors/*/_manifest.json": 0.5})
    noted: list[int] = []

    class Noting(TableWriter):
        def add(self, table, rows):
            super().add(table, rows)
            if table == "curves":
                noted.append(len(rows))

    monkeypatch.setattr(run_module, "TableWriter", Noting)
    sent: list[int] = []

    def interrupt_mid_match():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and sum(noted) < 2:
            time.sleep(0.02)
        sent.append(sum(noted))
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_mid_match, daemon=True)
    watcher.start()
    with study_store(study, slowed), pytest.raises(RunCancelled, match="cancelled by SIGINT"):
        run_study(study, progress=False)
    watcher.join(5)
    assert sent and 2 <= sent[0] < N_TASKS
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    _assert_cancelled(store, sent[0], "SIGINT")


def test_an_interrupted_command_exits_130_in_one_line(tmp_path, capsys, monkeypatch):
    from raymatch import cli
    from raymatch.store import Store as StoreClass

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreClass, "open_existing", interrupted)
    assert cli.main(["status", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "raymatch: interrupted\n"
