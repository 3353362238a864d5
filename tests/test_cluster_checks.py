"""A store whose results would vanish or split is refused before anything is written (issue 15: defect 9,
operations 1): a relative local store inside a submitted Ray job, and a local store not declared ``shared`` on
a cluster of several nodes. The real `ray job submit` case is in tests/test_cluster_job.py, the real two-node
case in tests/test_two_nodes.py; here the signs of a job and the node list are given to the checks."""

from __future__ import annotations

import json

import pytest

from raymatch.engine import cluster
from raymatch.engine.cluster import check_store_in_job, check_store_on_cluster, submitted_job_id
from raymatch.study import StoreConfig, Study, StudyError

from .test_bad_inputs import SEEDS, run_cli, snapshot, study, write_study

JOB_ENV = {cluster.JOB_CONFIG_VARIABLE: json.dumps({"runtime_env": {}, "metadata": {
    "job_submission_id": "raysubmit_abc", "job_name": "raysubmit_abc"}})}
PKG = "/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_0123abcd"


def test_a_submitted_job_is_recognised_by_its_environment_or_its_working_dir():
    assert submitted_job_id(JOB_ENV, "/home/me") == "raysubmit_abc"
    assert submitted_job_id({cluster.JOB_CONFIG_VARIABLE: "not json"}, "/home/me") == "unknown"
    assert submitted_job_id({}, PKG) == "unknown"
    assert submitted_job_id({}, PKG + "/jobs") == "unknown"
    assert submitted_job_id({"RAY_ADDRESS": "127.0.0.1:6379"}, "/home/me/raymatch") is None


# file://store/x was one of these: it names the host 'store' and is refused when the study is read (issue 26,
# tests/test_store_uris.py); file://../x is a relative path.
@pytest.mark.parametrize("uri", ["file://./raymatch-store", "raymatch-store", "file://../store/x", "./s"])
def test_a_relative_local_store_is_refused_inside_a_job(uri):
    with pytest.raises(ValueError, match=r"is a relative path inside Ray job raysubmit_abc: .*use an absolute"):
        check_store_in_job(StoreConfig(uri=uri), environ=JOB_ENV, cwd=PKG)
    check_store_in_job(StoreConfig(uri=uri), environ={}, cwd="/home/me")  # outside a job: as before


@pytest.mark.parametrize("uri", ["file:///data/store", "/data/store", "~/store", "s3://bucket/store"])
def test_an_absolute_or_s3_store_passes_inside_a_job(uri):
    check_store_in_job(StoreConfig(uri=uri), environ=JOB_ENV, cwd=PKG)


def test_a_local_store_on_several_nodes_needs_shared():
    nodes = ["node-a", "node-b"]
    with pytest.raises(ValueError, match=r"the Ray cluster has 2 alive nodes, .*shared: true"):
        check_store_on_cluster(StoreConfig(uri="file:///data/store"), nodes)
    check_store_on_cluster(StoreConfig(uri="file:///data/store", shared=True), nodes)
    check_store_on_cluster(StoreConfig(uri="s3://bucket/store"), nodes)
    check_store_on_cluster(StoreConfig(uri="file:///data/store"), ["node-a"])


def test_shared_is_checked_and_changes_no_config_hash(tmp_path):
    data = study(f"file://{tmp_path}/store")
    plain = Study.from_dict(data)
    shared = Study.from_dict({**data, "store": {"uri": f"file://{tmp_path}/store", "shared": True}})
    assert shared.store.shared and not plain.store.shared
    assert shared.config_hash == plain.config_hash
    with pytest.raises(StudyError) as refused:
        Study.from_dict({**data, "store": {"uri": "s3://bucket/store", "shared": True, "frob": 1}})
    assert refused.value.problems == [
        "store.frob: unknown key (allowed: uri, endpoint_url, shared, timeouts, retries)",
        "store.shared: only used with a file:// store (an s3:// store is shared by every node)"]


def _store_with_checkpoints(root):
    from .test_bad_inputs import put, tiny_checkpoint

    for seed, key in enumerate(SEEDS):
        put(root, key, tiny_checkpoint(seed))


def test_raymatch_run_in_a_job_refuses_a_relative_store_before_ray(tmp_path, monkeypatch, capsys):
    from raymatch import cli

    calls = []
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: calls.append(args))
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    job_dir.mkdir(parents=True)
    _store_with_checkpoints(job_dir / "store")
    before = snapshot(job_dir / "store")
    monkeypatch.chdir(job_dir)
    monkeypatch.setenv(cluster.JOB_CONFIG_VARIABLE, JOB_ENV[cluster.JOB_CONFIG_VARIABLE])
    code, err = run_cli(capsys, "run", write_study(tmp_path, study("file://./store")))
    assert code == 2 and calls == []
    assert err.strip().splitlines() == [
        f"raymatch: error: store.uri 'file://./store' is a relative path inside Ray job raysubmit_abc: it would "
        f"resolve into the job's temporary copy of the working directory ({job_dir}), deleted with the Ray session; "
        "use an absolute path on a filesystem every node shares (file:///…, with shared: true on a cluster of "
        "several nodes) or an s3:// store"]
    assert snapshot(job_dir / "store") == before


def test_raymatch_run_refuses_a_local_store_on_two_nodes_before_writing(tmp_path, monkeypatch, capsys):
    from raymatch import cli

    calls = []
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: calls.append(args))
    monkeypatch.setattr(cluster, "alive_nodes", lambda: ["node-a", "node-b"])
    _store_with_checkpoints(tmp_path / "store")
    before = snapshot(tmp_path / "store")
    code, err = run_cli(capsys, "run", write_study(tmp_path, study(f"file://{tmp_path}/store")))
    assert code == 2 and len(calls) == 1  # refused once connected, when the nodes are known
    assert err.strip().splitlines() == [
        f"raymatch: error: store.uri 'file://{tmp_path}/store' is a local folder but the Ray cluster has 2 alive "
        "nodes, each of which would write to its own disk: use an s3:// store, or a folder every node mounts at "
        "that same path and declare it with store: {uri: file:///…, shared: true}"]
    assert snapshot(tmp_path / "store") == before
