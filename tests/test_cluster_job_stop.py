"""``ray job stop`` of a submitted study (issue 15, operations 4) on a real ``ray start --head`` on 127.0.0.1.

Ray sends SIGTERM to the job's entrypoint (then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``, raised here for the
loaded test machine): the driver cancels, commits what it received, and records the run as ``cancelled``. Like
tests/test_cluster_job.py, this runs before the session's own Ray starts (see conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from raymatch.results import load, query
from raymatch.store import Store

from .test_cancel import DRIVER, _received
from .test_cluster_job import RAY, head_node  # noqa: F401 - the fixture
from .test_faults import N_TASKS, ROOT, _study

# A cluster of its own, processes of its own: not in the fast tier (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow


def test_ray_job_stop_cancels_a_submitted_study(head_node, tmp_path):  # noqa: F811
    address, env = head_node
    store = Store(str(tmp_path / "store"))
    study_file, _ = _study(tmp_path, store)
    working_dir, beacon = tmp_path / "job", tmp_path / "beacon"
    working_dir.mkdir()
    shutil.copy(study_file, working_dir / "study.yaml")
    (working_dir / "driver.py").write_text(DRIVER.format(root=ROOT, beacon=str(beacon)))
    job = f"raymatch-stop-{uuid.uuid4().hex[:8]}"
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(working_dir), "--submission-id", job,
               "--no-wait", "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}}),
               "--", sys.executable, "driver.py", "run", "study.yaml", "--quiet"]
    deadline = time.monotonic() + 300  # the head's job agent may take minutes to register on a loaded machine
    while True:
        submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in submitted.stderr:
            break
        if time.monotonic() > deadline:  # the cluster's precondition, not the behaviour under test
            pytest.skip("the head node's job agent did not register within 300 s (a loaded machine)")
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _received(beacon) < 2:
        time.sleep(0.1)
    logs = lambda: subprocess.run([RAY, "job", "logs", "--address", address, job], env=env,  # noqa: E731
                                  capture_output=True, text=True, timeout=120).stdout
    received = _received(beacon)
    assert 2 <= received < N_TASKS, logs()[-3000:]
    started = time.monotonic()
    stopped = subprocess.run([RAY, "job", "stop", "--address", address, job], env=env, capture_output=True,
                             text=True, timeout=300)
    print(f"\nray job stop returned after {time.monotonic() - started:.1f} s")  # shown with -s
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    output = logs()
    assert "raymatch: cancelled by SIGTERM: rows computed so far are stored; rerun to finish" in output, output[-3000:]
    (run,) = load(store, "runs").itertuples()
    assert run.status == "cancelled" and run.error == "RunCancelled: cancelled by SIGTERM"
    committed = int(query(store, "SELECT count(*) AS n FROM curves_raw")["n"].iloc[0])
    assert received <= committed < N_TASKS
