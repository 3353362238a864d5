"""Security guarantees (docs/reliability.md, "Security"): no pickle in the store or in how anything is read,
credentials never written or printed, and no id, layer name or key escaping the store root.

One real run backs the store checks: a tiny study run by ``python -m raymatch run`` in a subprocess against the
moto S3 server, with distinctive fake credentials in its environment only. It is a subprocess with a Ray of its
own because a running Ray's workers keep the environment they started with (DESIGN.md §5): credentials set in
this process would not reach the session cluster's workers.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import torch
import yaml

import raymatch
from raymatch import cli
from raymatch.models import build_model, checkpoint_bytes, load_state_dict
from raymatch.results import query
from raymatch.store import ActivationKey, Store, check_key, check_name

from .conftest import S3_KEY, S3_SECRET

KEY_ID = "AKIAFAKE1234567890XY"
SECRET = "s3cr3t-DO-NOT-LEAK-7f3a9c1e5b"
BUCKET = "raymatch-security"
ARCH = {"in_channels": 1, "num_classes": 10, "width": 0.25, "input_size": 8}
PACKAGE = Path(raymatch.__file__).parent


def tiny_checkpoint(seed: int) -> bytes:
    torch.manual_seed(seed)
    return checkpoint_bytes(build_model("small_cnn", **ARCH))


def study_text(uri: str, endpoint: str | None = None, **edits) -> str:
    store = {"uri": uri, **({"endpoint_url": endpoint} if endpoint else {})}
    data = {
        "name": "security", "store": store,
        "population": {"checkpoints": ["checkpoints/seed0.safetensors", "checkpoints/seed1.safetensors"]},
        "architecture": {"name": "small_cnn", **ARCH},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 40, "seed": 0, "rows": "all"},
        "layers": ["relu1", "relu3"], "eps": [0.25, 0.5], "cka": True,
        "resources": {"gpus_per_actor": 0, "pair_block": 2, "max_in_flight": 2},
    }
    data.update(edits)
    return yaml.safe_dump(data, sort_keys=False)


def leaks(text: str | bytes) -> list[str]:
    """Which of the fake credentials ``text`` contains."""
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in (("key id", KEY_ID), ("secret", SECRET)) if value.encode() in data]


# ------------------------------------------------------------------------------------------------ one real run


@pytest.fixture(scope="module")
def s3_run(moto_endpoint, tmp_path_factory):
    """Run the tiny study against moto S3 in a subprocess; return its output, every object it left in the bucket,
    and the text of its Ray session's logs."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for seed in range(2):
        s3.put_object(Bucket=BUCKET, Key=f"study/checkpoints/seed{seed}.safetensors", Body=tiny_checkpoint(seed))
    folder = tmp_path_factory.mktemp("security")
    study_file = folder / "study.yaml"
    study_file.write_text(study_text(f"s3://{BUCKET}/study", moto_endpoint))

    ray_tmp = tempfile.mkdtemp(prefix="rmsec-")  # short: Ray's socket paths must stay under 108 bytes
    env = {name: value for name, value in os.environ.items() if not name.startswith(("RAY_", "AWS_"))}
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TMPDIR": ray_tmp, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        done = subprocess.run([sys.executable, "-m", "raymatch", "run", str(study_file), "--num-cpus", "2"],
                              env=env, capture_output=True, text=True, timeout=300, cwd=folder)
        logs = {}
        for path in Path(ray_tmp).rglob("*"):
            if path.is_file() and not path.is_symlink():
                logs[str(path.relative_to(ray_tmp))] = path.read_bytes()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    objects = {item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}
    return {"stdout": done.stdout, "stderr": done.stderr, "objects": objects, "logs": logs,
            "endpoint": moto_endpoint}


def read_object(key: str, data: bytes) -> tuple[str, str]:
    """The format an object is in and its content as text, read with a reader that cannot unpickle: Parquet
    (Delta data files and checkpoints), Arrow IPC, newline-delimited JSON (Delta commits: one action a line), JSON
    (records, manifests, Delta's ``_last_checkpoint`` and the compaction claim), safetensors."""
    name = key.rsplit("/", 1)[-1]
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        table = pq.read_table(pa.BufferReader(data))
    elif data[:6] == b"ARROW1":
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    elif "/_delta_log/" in key and name.endswith(".json"):
        actions = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        assert actions and all(isinstance(action, dict) and len(action) == 1 for action in actions), key
        return "ndjson", json.dumps(actions)
    elif name.endswith(".json") or name in ("_last_checkpoint", "_raymatch_compaction.lock"):
        return "json", json.dumps(json.loads(data))
    elif name.endswith(".safetensors"):
        state = load_state_dict(data, name=key)
        return "safetensors", str(sorted(state))
    else:
        return "unknown", ""
    for value in (table.schema.metadata or {}).values():  # schema metadata: JSON text, never a pickled object
        assert not value.startswith(b"\x80"), (key, value[:20])
    text = str(table.to_pylist()) + str(table.schema.metadata or {})
    return ("parquet" if data[:4] == b"PAR1" else "arrow"), text


@pytest.mark.slow
def test_no_object_in_the_store_is_a_pickle(s3_run):
    objects = s3_run["objects"]
    formats = {key: read_object(key, data)[0] for key, data in objects.items()}
    assert "unknown" not in formats.values(), formats
    assert not [key for key, data in objects.items() if data[:1] == b"\x80"]  # pickle protocol 2+ opcode PROTO
    prefixes = {key.split("/")[1] for key in objects}
    assert {"activations", "factors", "results", "studies", "checkpoints"} <= prefixes, sorted(prefixes)
    # the results are Delta tables: commits (newline-delimited JSON) and Parquet data files, for every table the
    # run wrote
    tables = {key.split("/")[2] for key in objects if key.startswith("study/results/")}
    assert tables >= {"curves", "runs", "models"}, sorted(tables)
    for table in tables:
        assert formats[f"study/results/{table}/_delta_log/{0:020d}.json"] == "ndjson"
        assert "parquet" in {formats[key] for key in objects if key.startswith(f"study/results/{table}/part-")}
    assert {formats[key] for key in objects if key.startswith("study/results/")} <= {"ndjson", "parquet", "json"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_nothing_in_the_package_can_unpickle():
    """Read by parsing the source: no pickle-family import, every torch.load weights-only, no allow_pickle,
    YAML only through a SafeLoader."""
    forbidden_modules = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
    forbidden_calls = {"pd.read_pickle", "pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load", "eval", "exec"}
    problems, torch_loads = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            problems += [f"{where}:{node.lineno}: imports {name}" for name in names if name in forbidden_modules]
        for call, name in _calls(tree):
            keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in call.keywords}
            if name in forbidden_calls or name.endswith("read_pickle"):
                problems.append(f"{where}:{call.lineno}: calls {name}")
            if name == "torch.load":
                torch_loads += 1
                if keywords.get("weights_only") != "True":
                    problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and keywords.get("allow_pickle", "False") != "False":
                problems.append(f"{where}:{call.lineno}: np.load with allow_pickle")
            if name == "yaml.load" and keywords.get("Loader") not in ("_StudyLoader", "yaml.SafeLoader"):
                problems.append(f"{where}:{call.lineno}: yaml.load with Loader={keywords.get('Loader')}")
    assert problems == []
    assert torch_loads >= 1  # the scan sees the one torch.load there is (checkpoint.py)
    from raymatch.study import _StudyLoader

    assert issubclass(_StudyLoader, yaml.SafeLoader)


class _Trap:
    """Unpickling this object makes a folder: evidence that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("wrapping", ["plain pickle", "torch.save archive"])
def test_a_pickle_checkpoint_is_refused_without_being_unpickled(wrapping, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: pytest.fail("Ray was started"))
    marker = tmp_path / "unpickled"
    root = tmp_path / "store"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints/seed0.safetensors").write_bytes(tiny_checkpoint(0))
    trap = {"conv1.weight": _Trap(str(marker))}
    if wrapping == "plain pickle":
        data = pickle.dumps(trap, protocol=4)
    else:
        torch.save(trap, tmp_path / "trap.pt")
        data = (tmp_path / "trap.pt").read_bytes()
    (root / "checkpoints/seed1.safetensors").write_bytes(data)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study_text(str(root)))
    assert cli.main(["run", str(study_file)]) == 2
    err = capsys.readouterr().err
    reason = "starts with neither a safetensors header" if wrapping == "plain pickle" else \
        "torch.load(weights_only=True) refused it"
    assert err.count("\n") == 1 and "checkpoints/seed1.safetensors is not a readable" in err and reason in err, err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ credentials


@pytest.mark.slow
def test_credentials_appear_nowhere_after_a_run(s3_run):
    assert "finished in" in s3_run["stdout"]
    assert leaks(s3_run["stdout"]) == [] and leaks(s3_run["stderr"]) == []
    found = {key: leaks(data) for key, data in s3_run["objects"].items()}
    assert {key: names for key, names in found.items() if names} == {}
    # every object read by its format (not only as bytes: Parquet pages are compressed, JSON may escape): the rows
    # of every results table's data files, the Delta commits (their commitInfo and the table's metadata), the
    # study record, the factors' and activations' manifests and parts
    decoded = {key: read_object(key, data) for key, data in s3_run["objects"].items()}
    assert {key: leaks(text) for key, (_, text) in decoded.items() if leaks(text)} == {}
    read = {fmt for key, (fmt, _) in decoded.items() if key.startswith("study/results/")}
    assert {"ndjson", "parquet"} <= read
    runs = [key for key, (fmt, _) in decoded.items() if key.startswith("study/results/runs/part-")]
    assert runs and "security" in decoded[runs[0]][1]  # the runs rows were read as data
    assert "security" in decoded["study/studies/security.json"][1]
    # the same tables through the package's own reader (Delta log, then the files it names)
    store = Store(f"s3://{BUCKET}/study", endpoint_url=s3_run["endpoint"], key=S3_KEY, secret=S3_SECRET)
    for table in ("curves", "runs", "models", "tasks", "simple_matches"):
        assert leaks(query(store, f"SELECT * FROM {table}_raw").to_csv()) == [], table
    assert len(s3_run["logs"]) > 5  # the Ray session's logs were captured
    assert {name: leaks(data) for name, data in s3_run["logs"].items() if leaks(data)} == {}


@pytest.mark.slow
def test_credentials_appear_nowhere_in_status_query_and_errors(s3_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: pytest.fail("Ray was started"))
    endpoint = s3_run["endpoint"]
    assert cli.main(["status", f"s3://{BUCKET}/study", "--endpoint-url", endpoint]) == 0
    assert cli.main(["query", f"s3://{BUCKET}/study", "--endpoint-url", endpoint, "--format", "csv",
                     "SELECT * FROM matches"]) == 0
    out = capsys.readouterr()
    assert "study security: complete" in out.out and leaks(out.out + out.err) == []

    # a forced error: the same study against a bucket that does not exist
    missing = tmp_path / "missing.yaml"
    missing.write_text(study_text("s3://raymatch-no-such-bucket/study", endpoint))
    assert cli.main(["run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach store s3://raymatch-no-such-bucket/study" in err and leaks(err) == []
    with pytest.raises(OSError) as raised:  # --debug: the whole traceback, chained causes included
        cli.main(["--debug", "run", str(missing)])
    assert leaks("".join(traceback.format_exception(raised.value))) == []
    assert leaks(repr(Store(f"s3://{BUCKET}/study", endpoint_url=endpoint, key=KEY_ID, secret=SECRET))) == []


def test_a_wrong_secret_is_not_echoed(moto_endpoint, tmp_path, capsys, monkeypatch):
    """With moto's IAM authentication on, a refused signature: the error names the store, not the credentials."""
    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=10)  # no IAM user: every key is wrong
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        study_file = tmp_path / "study.yaml"
        study_file.write_text(study_text(f"s3://{BUCKET}/study", moto_endpoint))
        assert cli.main(["plan", str(study_file)]) == 2
    finally:
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
    err = capsys.readouterr().err
    assert "cannot reach store" in err and "Access Key Id you provided does not exist" in err and leaks(err) == []


@pytest.mark.parametrize("store", [
    {"uri": "s3://bucket/study", "aws_secret_access_key": SECRET},
    {"uri": "s3://bucket/study", "options": {"key": KEY_ID}},
    {"uri": f"s3://{KEY_ID}:{SECRET}@bucket/study"},
])
def test_a_credential_in_the_study_file_is_refused(store, tmp_path, capsys):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study_text("s3://bucket/study", store=store))
    assert cli.main(["plan", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "credentials do not belong in a study file" in err and leaks(err) == []


# ------------------------------------------------------------------------------------------------ the store root


ESCAPES = ["../x", "a/../../x", "/etc/passwd", "..", ".", "a/./b", "a\\..\\b", "~/x", ".hidden", "a//b", "a/", "",
           "a b", "a\x00b", "c:/x", "%2e%2e/x"]


@pytest.mark.parametrize("key", ESCAPES)
def test_no_key_can_leave_the_store_root(key, tmp_path):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(ValueError, match=r"store key|non-empty"):
        check_key(key)
    with pytest.raises(ValueError):
        store.path(key)
    with pytest.raises(ValueError):
        store.write_bytes(key, b"x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".x", "a\\b", "", "-x"])
def test_no_id_or_layer_name_can_leave_the_store_root(name):
    with pytest.raises(ValueError, match="cannot be used in a store key"):
        check_name(name, "layer name")
    for fields in ({"layer": name}, {"model_id": name}, {"probe_id": name}):
        with pytest.raises(ValueError, match="cannot be used in a store key"):
            ActivationKey(**{"probe_id": "p", "model_id": "m", "layer": "relu1", **fields})


@pytest.mark.parametrize("edit, problem", [
    ({"population": {"checkpoints": ["../../etc/passwd", "checkpoints/seed1.safetensors"]}},
     "population.checkpoints[0]: store key '../../etc/passwd' has an unsafe part '..'"),
    ({"layers": ["relu1", "../x"]}, "layers[1]: unknown layer '../x'"),
    ({"name": "../x"}, "name: use letters, digits and _ . - only"),
    ({"population": {"glob": "/etc/*"}}, "population.glob: must be a pattern of store keys, relative to the store"),
])
def test_the_command_line_refuses_keys_that_would_escape(edit, problem, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: pytest.fail("Ray was started"))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study_text(str(tmp_path / "store"), **edit))
    assert cli.main(["run", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert f"\n  {problem}" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_a_glob_that_climbs_out_of_the_store_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: pytest.fail("Ray was started"))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study_text(str(tmp_path / "store"), population={"glob": "../../*.safetensors"}))
    assert cli.main(["run", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "store key '../..' has an unsafe part '..'" in err, err
    assert not (tmp_path / "store").exists()
