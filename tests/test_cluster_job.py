"""`ray job submit` of a tiny study to a real `ray start --head` cluster on 127.0.0.1, with the moto S3 store.

Credentials reach the job only through its runtime_env (the driver's environment does not), and the
table is checked through `raymatch query`; a second submission computes nothing; a third, of a study with a relative
local store, is refused before any work (issue 15, defect 9).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from raymatch.cli import main
from raymatch.results import load

from .conftest import BUCKET, S3_KEY, S3_SECRET
from .extract.helpers import put_checkpoint

# A cluster of its own, processes of its own: not in the fast tier (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

RAY = os.path.join(os.path.dirname(sys.executable), "ray")

STUDY = """
name: cluster-e2e
store: {{uri: "s3://{bucket}/study", endpoint_url: "{endpoint}"}}
population: {{glob: "checkpoints/*.safetensors"}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 100, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.15, 0.25, 0.5]
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """A head node of its own: `ray start --head --block` in a new process group, stopped by signalling that
    group only (`ray stop` would also stop the other Ray cluster of this test session)."""
    gcs, dashboard = _free_port(), _free_port()
    # Nothing of this session's own Ray (RAY_ADDRESS and friends) may leak into the new cluster or its jobs.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(secret, None)  # the job must get its credentials from runtime_env, not from here
    ray_dir = tempfile.mkdtemp(prefix="rmray-")  # short: Ray's socket paths must stay under 108 bytes
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
         f"--temp-dir={ray_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and head.poll() is None:
            listed = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                                    text=True, timeout=60)
            if listed.returncode == 0:
                break
            time.sleep(2)
        assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 1), (signal.SIGKILL, 30)):  # `ray start --block` outlives SIGTERM
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(ray_dir, ignore_errors=True)


def _submit(address, env, working_dir, endpoint, study="study.yaml"):
    """Submit the study job, retrying while the head's job agent is still starting."""
    runtime_env = {"env_vars": {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                                "AWS_DEFAULT_REGION": "us-east-1", "RAY_USAGE_STATS_ENABLED": "0"}}
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(working_dir),
               "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "jobs/study.py", study]
    deadline = time.monotonic() + 300  # on a loaded 2-core machine the agent has taken minutes to register
    while True:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


def test_ray_job_submit_runs_a_study_against_moto_s3(s3_store, moto_endpoint, head_node, tmp_path, capsys,
                                                      monkeypatch):
    address, env = head_node
    for seed in range(3):
        put_checkpoint(s3_store, seed)
    working_dir = tmp_path / "job"
    (working_dir / "jobs").mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "jobs", "study.py"), working_dir / "jobs")
    (working_dir / "study.yaml").write_text(STUDY.format(bucket=BUCKET, endpoint=moto_endpoint))

    first = _submit(address, env, working_dir, moto_endpoint)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "extract          3        0       0" in first.stdout

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    assert main(["query", f"s3://{BUCKET}/study", "--endpoint-url", moto_endpoint, "--format", "json",
                 "SELECT count(*) AS n, count(DISTINCT model_a || model_b) AS pairs FROM matches "
                 "WHERE status = 'ok'"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 3 * 2 * 3, "pairs": 3}]
    rows_before = len(load(s3_store, "matches"))

    second = _submit(address, env, working_dir, moto_endpoint)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "extract          0        3       0" in second.stdout and "match            0 " in second.stdout
    assert len(load(s3_store, "matches")) == rows_before

    # issue 15, defect 9: a relative local store would land in Ray's temporary copy of the working directory
    (working_dir / "relative.yaml").write_text(STUDY.format(bucket=BUCKET, endpoint=moto_endpoint).replace(
        f'{{uri: "s3://{BUCKET}/study", endpoint_url: "{moto_endpoint}"}}', '{uri: "file://./raymatch-store"}'))
    third = _submit(address, env, working_dir, moto_endpoint, study="relative.yaml")
    assert third.returncode != 0
    assert ("raymatch: error: store.uri 'file://./raymatch-store' is a relative path inside Ray job raysubmit_"
            in third.stdout + third.stderr), third.stdout[-3000:] + third.stderr[-3000:]
    assert "runtime_resources/working_dir_files/_ray_pkg_" in third.stdout + third.stderr
    assert not (working_dir / "raymatch-store").exists()
