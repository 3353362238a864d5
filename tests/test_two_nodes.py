"""A real two-node Ray cluster on 127.0.0.1 (issue 15, operations 1 and 2).

A head (`ray start --head`, 1 CPU) and a second node (`ray start --address`, 1 CPU, its own raylet) run in new
process groups with a Ray temp dir of their own; the driver is a subprocess joining the head by its GCS address
(this pytest process keeps its own local Ray, ``ray_cluster``, apart). One driver process runs, in order:

1. the study on a local store not declared ``shared``: refused once connected (2 alive nodes), nothing written;
2. the same study on that store declared ``shared: true``: work lands on both nodes;
3. the same study on moto S3 (credentials only through the driver's ``runtime_env``): work on both nodes;
4. the same study into a fresh shared store whose match tasks read their factors 0.3 s late (the instrumented
   store of tests/test_faults.py, each read in a beacon file): once 3 match tasks have returned, the second
   node's raylet (found in /proc by its ``--node_id``) is SIGKILLed while a match task on it reads, i.e. a
   worker whose parent is that raylet. That worker dies with it, the run completes on the head (``runs``
   status ``succeeded``, no failed rows): on several nodes the engine runs its stages as Ray tasks, which Ray
   runs again on the nodes left. The cluster's health checks are fast here (``RAY_health_check_*``: a dead
   node is declared dead in ~5 s, not Ray's default of about 15 s or more);
5. the second node stopped for good, the same study into a fresh store on the head alone: the one-node
   reference (a local store on one node needs no ``shared``).

Every ``curves`` table must equal the reference's (same rows, same numbers; ``seconds`` and ``created_at``
aside), and the node ids recorded per stage in the ``runs`` table's ``stages`` JSON show where work ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from raymatch.results import load
from raymatch.store import Store

from .conftest import BUCKET, S3_KEY, S3_SECRET
from .extract.helpers import put_checkpoint

# A cluster of its own, processes of its own: not in the fast tier (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
N_MODELS = 6  # 15 pairs × 2 layers = 30 match tasks (pair_block 1): enough to lose a node in the middle
N_PAIRS = N_MODELS * (N_MODELS - 1) // 2


def study(uri: str, **store) -> dict:
    return {"name": "two-nodes", "store": {"uri": uri, **store},
            "population": {"glob": "checkpoints/*.safetensors"},
            "architecture": {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8},
            "probe": {"dataset": "digits", "split": "test", "n_examples": 100, "seed": 0, "rows": "all"},
            "layers": ["relu1", "relu3"], "eps": [0.25, 0.5], "cka": True,
            "resources": {"gpus_per_actor": 0, "pair_block": 1, "max_in_flight": 4}}


DRIVER = textwrap.dedent("""
    import faulthandler, json, os, signal, sys, threading, time
    import ray
    from raymatch.engine import run as run_module
    from raymatch.engine.cluster import alive_nodes
    from raymatch.engine.run import run_study
    from raymatch.study import Study
    from tests.test_faults import MATCH_READ, instrumented, study_store

    address, plan_path, second_node = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ray.init(address=address, logging_level="ERROR", runtime_env={"env_vars": json.loads(os.environ["JOB_ENV"])})
    here = ray.get_runtime_context().get_node_id()  # the head: a driver joins the head node of its host
    kill = {}

    def raylet_of(node_id):  # the pid of the raylet of node_id, from /proc (no psutil here)
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                args = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\\0")
            except OSError:
                continue
            if args[0].endswith(b"raylet") and f"--node_id={node_id}".encode() in args:
                return int(entry)
        raise RuntimeError(f"no raylet of node {node_id} in /proc")

    def parent_of(pid):
        try:
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def beacon_lines(beacon):  # whole lines only: "<pid> read:<key>", one per slowed read
        text = open(beacon).read() if os.path.exists(beacon) else ""
        return [line.split(" ", 1) for line in text[:text.rfind("\\n") + 1].splitlines()]

    def watchdog(finished):  # the run not ended 150 s after the kill: show where the driver waits, and end
        if not finished.wait(150):
            faulthandler.dump_traceback(all_threads=True)
            os._exit(3)

    def killer(beacon, finished):  # SIGKILL the second node's raylet while a match task on it reads a factor
        raylet = raylet_of(next(node for node in alive_nodes() if node != here))
        checked, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline and not finished.is_set():
            lines = beacon_lines(beacon)
            if kill["outcomes"] >= kill["after"]:  # enough match tasks returned: a read begun since then
                for index in range(checked, len(lines)):
                    pid, key = lines[index]
                    if parent_of(int(pid)) == raylet:  # a worker of the second node, in its 0.3 s read
                        os.kill(raylet, signal.SIGKILL)
                        kill.update(at=time.monotonic(), read=(pid, key, index))
                        threading.Thread(target=watchdog, args=(finished,), daemon=True).start()
                        while len(alive_nodes()) > 1 and time.monotonic() < deadline:
                            time.sleep(0.2)
                        kill["dead_at"] = time.monotonic()  # the GCS declared the node dead
                        return
            checked = len(lines)
            time.sleep(0.02)

    original = run_module.stage_recorder

    def recorder(study, stage, writer):  # counts the match stage's outcomes, before and after the kill
        record = original(study, stage, writer)

        def counted(outcome):
            record(outcome)
            if stage.name == "match":
                kill["outcomes"] += 1
                if kill.get("at") is not None:
                    kill["nodes_after"].append(outcome.node)
        return counted

    run_module.stage_recorder = recorder
    results = []
    for step in json.load(open(plan_path)):
        kill.clear()
        kill.update(after=step.get("kill_after"), outcomes=0, nodes_after=[])
        if step.get("stop_second_node"):  # the one-node reference: the second node is gone for good
            try:
                os.killpg(second_node, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 120
            while len(alive_nodes()) > 1 and time.monotonic() < deadline:
                time.sleep(1)
        nodes = alive_nodes()
        study, finished = Study.from_dict(step["study"]), threading.Event()
        store = study.store.open()
        if kill["after"]:  # each match task's reads of its factors' manifests 0.3 s late, in the beacon
            beacon = os.path.join(os.path.dirname(plan_path), "beacon")
            store = instrumented(store, beacon, {}, reads={MATCH_READ: 0.3})
            threading.Thread(target=killer, args=(beacon, finished), daemon=True).start()
        started = time.monotonic()
        try:
            with study_store(study, store):
                summary = run_study(study, progress=False)
        except ValueError as error:
            results.append({"nodes": nodes, "error": str(error)})
            continue
        ended = time.monotonic()
        finished.set()
        result = {"nodes": nodes, "seconds": ended - started, "head": here,
                  "stages": {name: {key: stage[key] for key in ("computed", "skipped", "failed", "nodes")}
                             for name, stage in summary["stages"].items()}}
        if kill.get("at") is not None:
            deadline = ended + 30
            while "dead_at" not in kill and time.monotonic() < deadline:
                time.sleep(0.2)  # until the GCS declares the killed node dead (if it has not yet)
            pid, key, index = kill["read"]
            result.update(after_kill=ended - kill["at"], dead_after=kill.get("dead_at", float("nan")) - kill["at"],
                          outcome_nodes_after_kill=kill["nodes_after"], nodes_after=alive_nodes(),
                          killed_worker=[pid, key], killed_worker_alive=os.path.exists(f"/proc/{pid}"),
                          read_again=[line for line in beacon_lines(beacon)[index + 1:] if line[1] == key])
        results.append(result)
    print("RESULTS " + json.dumps(results), flush=True)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop a `ray start --block` and everything in its process group (never `ray stop`: other Rays live here)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # already stopped (the driver stops the second node itself)
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def two_nodes(tmp_path):
    """``(gcs address, environment, second node's process group)``: a head and a second node."""
    gcs = _free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    # "1": Ray refuses a second node without it here; every node still binds 127.0.0.1 (--node-ip-address below)
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
                # the GCS declares a node dead after 5 failed checks 1 s apart (~5 s; Ray's default is ~30 s)
                "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
                "RAY_health_check_timeout_ms": "3000"})
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(secret, None)  # the workers get them from the driver's runtime_env only
    ray_dir = tempfile.mkdtemp(prefix="rm2n-")  # short: Ray's socket paths must stay under 108 bytes
    logs, processes = [], []
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        for name, args in (("head", ["--head", f"--port={gcs}", "--include-dashboard=false", f"--temp-dir={ray_dir}"]),
                           ("second", [f"--address=127.0.0.1:{gcs}"])):
            log = open(tmp_path / f"ray-{name}.log", "w")
            logs.append(log)
            processes.append(subprocess.Popen([RAY, "start", *args, *common], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            if name == "head":
                _wait_for(lambda: _cluster_nodes(gcs, env) >= 1, processes, tmp_path)
        _wait_for(lambda: _cluster_nodes(gcs, env) >= 2, processes, tmp_path)
        yield f"127.0.0.1:{gcs}", env, processes[1].pid  # `ray start` leads a process group of its own
    finally:
        for process in reversed(processes):
            _stop(process)
        for log in logs:
            log.close()
        shutil.rmtree(ray_dir, ignore_errors=True)


def _cluster_nodes(gcs: int, env: dict) -> int:
    """Alive nodes of the cluster, asked through `ray status` (0 while the GCS does not answer)."""
    done = subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"], env=env, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        return 0
    active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


def _wait_for(condition, processes, tmp_path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dead = [process for process in processes if process.poll() is not None]
        assert not dead, "\n".join(path.read_text()[-3000:] for path in tmp_path.glob("ray-*.log"))
        if condition():
            return
        time.sleep(1)
    raise AssertionError("the cluster did not come up: " + "\n".join(
        path.read_text()[-3000:] for path in tmp_path.glob("ray-*.log")))


def curves(store: Store):
    table = load(store, "curves").drop(columns=["seconds", "created_at"])
    return table.sort_values(["population", "layer", "repeat", "model_a", "model_b"]).reset_index(drop=True)


def nodes_of(step: dict) -> set:
    return {node for stage in step["stages"].values() for node in stage.get("nodes", {})}


def test_a_study_on_two_nodes_equals_one_node(two_nodes, s3_store, moto_endpoint, tmp_path):
    address, env, second_node = two_nodes
    roots = {name: tmp_path / name for name in ("unshared", "shared", "lost", "reference")}
    stores = {name: Store(str(root)) for name, root in roots.items()}
    for store in [*stores.values(), s3_store]:
        for seed in range(N_MODELS):
            put_checkpoint(store, seed)
    plan = [{"study": study(f"file://{roots['unshared']}")},
            {"study": study(f"file://{roots['shared']}", shared=True)},
            {"study": study(f"s3://{BUCKET}/study", endpoint_url=moto_endpoint)},
            {"study": study(f"file://{roots['lost']}", shared=True), "kill_after": 3},
            {"study": study(f"file://{roots['reference']}"), "stop_second_node": True}]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "driver.py").write_text(DRIVER)
    job_env = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    # the driver reads the store too; the nodes' processes get the credentials only through its runtime_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the driver imports tests.test_faults
    python_path = os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), root)))
    driver_env = {**env, **job_env, "JOB_ENV": json.dumps(job_env), "PYTHONPATH": python_path}
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), address, str(tmp_path / "plan.json"),
                           str(second_node)], env=driver_env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "RESULTS " in done.stdout, output[-5000:]
    unshared, shared, on_s3, lost, reference = json.loads(done.stdout.split("RESULTS ", 1)[1].splitlines()[0])

    two = set(unshared["nodes"])
    assert len(two) == 2
    assert unshared["error"].startswith(f"store.uri 'file://{roots['unshared']}' is a local folder but the Ray "
                                        "cluster has 2 alive nodes")
    assert sorted(os.listdir(roots["unshared"])) == ["checkpoints"]  # nothing written

    reference_curves = curves(stores["reference"])
    assert len(reference_curves) == N_PAIRS * 2 and (reference_curves["status"] == "ok").all()
    assert len(reference["nodes"]) == 1 and set(reference["nodes"]) < two  # the head alone
    assert nodes_of(reference) == set(reference["nodes"])
    for step, store in ((shared, stores["shared"]), (on_s3, s3_store), (lost, stores["lost"])):
        work = {"extract": (N_MODELS, 0), "factor": (N_MODELS * 2, 0), "match": (N_PAIRS * 2, 0)}  # others: none
        assert {name: (counts["computed"], counts["failed"]) for name, counts in step["stages"].items()} == {
            name: work.get(name, (0, 0)) for name in step["stages"]}, step
        assert set(work) <= set(step["stages"]), step
        assert step["nodes"] == unshared["nodes"]
        # work landed on both nodes in every stage with work (the lost node's match work: up to the kill)
        for stage in ("extract", "factor", "match") if step is not lost else ("extract", "factor"):
            assert set(step["stages"][stage]["nodes"]) == two, (stage, step)
        assert curves(store).equals(reference_curves), store
        assert load(store, "runs")["status"].tolist() == ["succeeded"], store  # one run, nothing failed
    # the lost node: killed in the middle of the match stage while a match task on it read a factor (its worker
    # died with the node, so Ray ran that task again on the head); the node was declared dead, the run went on
    assert lost.get("after_kill") is not None, lost
    assert lost["nodes_after"] == [lost["head"]], lost
    assert not lost["killed_worker_alive"], lost
    assert 0 < len(lost["outcome_nodes_after_kill"]) <= N_PAIRS * 2 - 3, lost
    assert any(pid != lost["killed_worker"][0] for pid, _ in lost["read_again"]), lost
    print({name: round(step["seconds"], 1) for name, step in zip(
        ("shared", "s3", "lost", "reference"), (shared, on_s3, lost, reference), strict=True)},
        f"the lost-node run ended {lost['after_kill']:.1f} s after the kill, which left "
        f"{len(lost['outcome_nodes_after_kill'])} match tasks "
        f"({lost['outcome_nodes_after_kill'].count(lost['head'])} returned by the head); the node was dead "
        f"(ray.nodes) {lost['dead_after']:.1f} s after the kill")
