"""A catalogue of bad inputs, each through the ``raymatch`` command line (docs/reliability.md, "Bad inputs").

Every case must end with exit code 2, one line on stderr that names the problem (a study file's problems: a
header line and one line per problem), no traceback, and nothing written to the store. All but one case must
fail before Ray starts: ``cli._connect_ray`` is replaced by a recorder, and those cases assert it was never
called. Non-finite activations can only be seen by running the model, so that one case runs on the session's
Ray cluster.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import requests
import torch
import yaml

from raymatch import cli
from raymatch.models import build_model, checkpoint_bytes, checkpoint_id

from .conftest import S3_KEY, S3_SECRET

ARCH = {"in_channels": 1, "num_classes": 10, "width": 0.25, "input_size": 8}
SEEDS = ("checkpoints/seed0.safetensors", "checkpoints/seed1.safetensors")


# ------------------------------------------------------------------------------------------------ helpers


def tiny_checkpoint(seed: int = 0, arch: str = "small_cnn", **overrides) -> bytes:
    torch.manual_seed(seed)
    return checkpoint_bytes(build_model(arch, **{**ARCH, **overrides}))


def put(root: Path, key: str, data: bytes) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def study(store_uri: str, **edits) -> dict:
    """The tiny study's fields; ``edits`` replace them, ``section__field`` one field of a section."""
    data = {
        "name": "bad-inputs",
        "store": {"uri": store_uri},
        "population": {"checkpoints": list(SEEDS)},
        "architecture": {"name": "small_cnn", **ARCH},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 40, "seed": 0, "rows": "all"},
        "layers": ["relu1", "relu3"],
        "eps": [0.25, 0.5],
        "cka": False,
        "resources": {"gpus_per_actor": 0, "pair_block": 2, "max_in_flight": 2},
    }
    for name, value in edits.items():
        section, _, field = name.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return data


def write_study(tmp_path: Path, data: dict | str, name: str = "study.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def snapshot(root: Path) -> dict | None:
    """Every file (its digest) and folder under ``root``; None when ``root`` does not exist."""
    if not root.exists():
        return None
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            found[os.path.relpath(os.path.join(folder, name), root)] = "<dir>"
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


@pytest.fixture
def ray_starts(monkeypatch):
    """Records every attempt of the command line to connect to (or start) Ray, without connecting."""
    calls = []
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: calls.append(args))
    return calls


@pytest.fixture
def store_root(tmp_path) -> Path:
    """A local store holding the two tiny checkpoints of the study."""
    root = tmp_path / "store"
    for seed, key in enumerate(SEEDS):
        put(root, key, tiny_checkpoint(seed))
    return root


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


def assert_problem(code: int, err: str, study_file: str, *needles: str) -> str:
    """A study file's problems: the header line, then each problem on its own line; returns the problem lines."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    assert lines[0].startswith(f"raymatch: error: {study_file}: ") and lines[0].endswith(" problem(s)"), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    problems = "\n".join(lines[1:])
    for needle in needles:
        assert needle in problems, err
    return problems


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit code 2 and exactly one line, ``raymatch: error: …``, naming the problem."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("raymatch: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# ------------------------------------------------------------------------------------------------ the study file


STUDY_FILE_CASES = {
    "malformed YAML": ("name: x\nstore: {uri: /tmp/x\nlayers: [relu\n", ["malformed YAML at line"]),
    "not a mapping": ("- just\n- a list\n", ["the top level must be a mapping of study fields"]),
    "unknown key": (dict(frobnicate=1, probe__sized=10), ["frobnicate: unknown key", "probe.sized: unknown key"]),
    "wrong types": (dict(architecture__width="wide", resources__pair_block="two", cka="maybe"),
                    ["architecture.width: must be a positive number; got 'wide'",
                     "resources.pair_block: must be a positive integer; got 'two'",
                     "cka: must be true or false; got 'maybe'"]),
    "empty population": (dict(population={"checkpoints": []}), ["population: give checkpoints"]),
    "a single model": (dict(population__checkpoints=[SEEDS[0]]),
                       ["population.checkpoints: a study needs at least 2 models; got 1"]),
    "unknown layer": (dict(layers=["relu1", "features.9"]), ["layers[1]: unknown layer 'features.9'; available:"]),
    "unknown dataset": (dict(probe__dataset="mnist"), ["probe.dataset: must be one of digits, fashion-mnist, cifar10"]),
    "probe larger than the dataset": (dict(probe__n_examples=5000),
                                      ["probe.n_examples: asks for 5000 examples but digits/test has 360"]),
    "probe images of other channels": (dict(architecture__in_channels=3),
                                       ["probe: digits images are 1×8×8, which architecture small_cnn (in_channels 3, "
                                        "input_size 8) cannot take: Invalid channel dimensions"]),
    "probe images of another size": (dict(architecture__input_size=32),
                                     ["probe: digits images are 1×8×8, which architecture small_cnn (in_channels 1, "
                                      "input_size 32) cannot take:"]),
    "fewer samples than neurons": (dict(probe__n_examples=10),
                                   ["layers: relu3 has 16 neurons but the probe gives it only 10 samples, so every "
                                    "neuron matches trivially: raise probe.n_examples (or pass --allow-few-samples)"]),
    "as many samples as neurons": (dict(probe__n_examples=16),
                                   ["layers: relu3 has 16 neurons but the probe gives it only 16 samples"]),
    "fewer sampled rows than neurons": (dict(probe__rows={"rows": 3}),
                                        ["layers: relu1 has 4 neurons but the probe gives it only 3 samples",
                                         "raise probe.rows.rows"]),
    "more sampled rows than a layer has": (dict(layers=["relu1", "pool", "relu3"], probe__rows={"rows": 1000}),
                                           ["probe.rows.rows: asks for 1000 rows but layer 'pool' of 40 images × 4×4 "
                                            "positions has only 640"]),
    "eps outside [0, 1]": (dict(eps=[0.25, 1.5, -0.1]),
                           ["eps[1]: must lie in [0, 1]; got 1.5", "eps[2]: must lie in [0, 1]; got -0.1"]),
    "empty eps grid": (dict(eps=[]), ["eps: must not be empty"]),
    "path-traversal checkpoint key": (dict(population__checkpoints=["../../etc/passwd", SEEDS[1]]),
                                      ["population.checkpoints[0]: store key '../../etc/passwd' has an unsafe part "
                                       "'..'"]),
    "training: bad recipe key": (dict(population={"training": {"seeds": [0, 1], "recipe": "quick",
                                                                "dataset": "digits", "frobnicate": 3}}),
                                 ["population.training.frobnicate: unknown key (allowed: seeds, save_every, dataset, "
                                  "recipe,"]),
    "training: unknown recipe": (dict(population={"training": {"seeds": [0, 1], "recipe": "turbo"}}),
                                 ["population.training.recipe: unknown training recipe 'turbo'"]),
}


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize("case", list(STUDY_FILE_CASES))
def test_a_bad_study_file_is_refused_before_anything_runs(case, command, tmp_path, capsys, ray_starts):
    content, needles = STUDY_FILE_CASES[case]
    store = tmp_path / "store"
    study_file = write_study(tmp_path, content if isinstance(content, str) else study(str(store), **content))
    code, err = run_cli(capsys, command, study_file)
    assert_problem(code, err, study_file, *needles)
    assert not store.exists() and ray_starts == []


def test_few_samples_are_planned_only_when_allowed(tmp_path, store_root, capsys, ray_starts):
    study_file = write_study(tmp_path, study(str(store_root), probe__n_examples=10))
    assert cli.main(["plan", study_file, "--allow-few-samples"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("raymatch: warning: layer relu3 has 16 neurons and only 10 samples: its rows match "
                            "trivially (chance = 0)\n")
    assert "extract       0      2" in captured.out


def test_debug_shows_the_traceback(tmp_path, capsys, ray_starts):
    study_file = write_study(tmp_path, study(str(tmp_path / "store"), eps=[]))
    with pytest.raises(ValueError, match="eps: must not be empty"):
        cli.main(["--debug", "run", study_file])


def test_more_sampled_rows_than_a_layer_has_stop_a_runnable_study_before_ray(tmp_path, store_root, capsys,
                                                                             ray_starts):
    """Issue 15, defect 6: with every checkpoint there, the study used to start Ray and fail in extraction."""
    before = snapshot(store_root)
    study_file = write_study(tmp_path, study(str(store_root), layers=["relu1", "pool"],
                                             probe__rows={"rows": 1000, "repeats": 2}))
    code, err = run_cli(capsys, "run", study_file)
    problems = assert_problem(code, err, study_file)
    assert problems == ("  probe.rows.rows: asks for 1000 rows but layer 'pool' of 40 images × 4×4 positions has "
                        "only 640")
    assert snapshot(store_root) == before and ray_starts == []


def test_a_missing_study_file(tmp_path, capsys, ray_starts):
    code, err = run_cli(capsys, "run", str(tmp_path / "nowhere.yaml"))
    assert_one_line(code, err, "No such file or directory", "nowhere.yaml")


# ------------------------------------------------------------------------------------------------ the checkpoints


def test_a_missing_checkpoint(tmp_path, store_root, capsys, ray_starts):
    before = snapshot(store_root)
    study_file = write_study(tmp_path, study(str(store_root), population__checkpoints=[*SEEDS,
                                                                                       "checkpoints/seed9.safetensors"]))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, "checkpoint 'checkpoints/seed9.safetensors' is not in")
    assert snapshot(store_root) == before and ray_starts == []


def test_two_keys_with_identical_bytes_are_the_same_model(tmp_path, store_root, capsys, ray_starts):
    put(store_root, "checkpoints/copy.safetensors", (store_root / SEEDS[0]).read_bytes())
    before = snapshot(store_root)
    study_file = write_study(tmp_path, study(str(store_root), population__checkpoints=[
        *SEEDS, "checkpoints/copy.safetensors"]))
    code, err = run_cli(capsys, "run", study_file)
    model = checkpoint_id((store_root / SEEDS[0]).read_bytes())
    assert_one_line(code, err, f"checkpoints '{SEEDS[0]}' and 'checkpoints/copy.safetensors' are the same model "
                               f"(id {model})")
    assert snapshot(store_root) == before and ray_starts == []


BAD_CHECKPOINTS = {
    "corrupt: random bytes": (lambda: os.urandom(4096),
                              "is not a readable safetensors or torch state_dict checkpoint"),
    "corrupt: truncated header": (lambda: tiny_checkpoint(0)[:50], "(truncated?)"),
    "corrupt: truncated data": (lambda: tiny_checkpoint(0)[:1000], "safetensors failed: Error while deserializing"),
    "corrupt: empty": (lambda: b"", "it is empty"),
    "another architecture": (lambda: tiny_checkpoint(0, arch="mlp"),
                             "does not fit small_cnn: parameter 'conv1.weight' (shape (4, 1, 3, 3)) is missing"),
    "another width": (lambda: tiny_checkpoint(0, width=0.5),
                      "does not fit small_cnn: parameter 'conv1.weight' has shape (8, 1, 3, 3) in the checkpoint "
                      "but (4, 1, 3, 3) in the model"),
    "NaN weights": (lambda: _with_weights(float("nan")), "'conv1.weight' holds 36 non-finite values (NaN or Inf)"),
}


def _with_weights(value: float) -> bytes:
    torch.manual_seed(2)
    model = build_model("small_cnn", **ARCH)
    with torch.no_grad():
        model.conv1.weight.fill_(value)
    return checkpoint_bytes(model)


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_before_ray_starts(case, tmp_path, store_root, capsys, ray_starts):
    make, needle = BAD_CHECKPOINTS[case]
    put(store_root, "checkpoints/bad.safetensors", make())
    before = snapshot(store_root)
    study_file = write_study(tmp_path, study(str(store_root), population__checkpoints=[
        SEEDS[0], "checkpoints/bad.safetensors", SEEDS[1]]))
    code, err = run_cli(capsys, "run", study_file)
    line = assert_one_line(code, err, "checkpoints/bad.safetensors", needle)
    assert "seed0" not in line  # the good checkpoints are not blamed
    assert snapshot(store_root) == before and ray_starts == []
    # `plan` reads the same checkpoints and refuses the same way
    code, err = run_cli(capsys, "plan", study_file)
    assert_one_line(code, err, "checkpoints/bad.safetensors", needle)


# ------------------------------------------------------------------------------------------------ the store


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_unreachable_store(tmp_path, capsys, ray_starts, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's default retries take ~8 s to give the same line
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    study_file = write_study(tmp_path, study("s3://raymatch-nowhere/study", store__endpoint_url=endpoint))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, f"cannot reach store s3://raymatch-nowhere/study (endpoint {endpoint})",
                    "Could not connect to the endpoint URL")
    assert ray_starts == []


@pytest.fixture
def moto_with_auth(moto_endpoint):
    """The moto server with IAM authentication on: a bucket, a user allowed everything on S3, and its key.

    moto accepts any credentials by default; after ``POST /moto-api/reset-auth 0`` it checks every request's
    signature against the IAM users it holds. The threshold is global to the (in-process) moto server, so it is
    put back to "never" afterwards.
    """
    import boto3

    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10)
    options = {"endpoint_url": moto_endpoint, "aws_access_key_id": S3_KEY, "aws_secret_access_key": S3_SECRET,
               "region_name": "us-east-1"}
    s3 = boto3.client("s3", **options)
    s3.create_bucket(Bucket="raymatch-auth")
    for seed, key in enumerate(SEEDS):
        s3.put_object(Bucket="raymatch-auth", Key=f"study/{key}", Body=tiny_checkpoint(seed))
    iam = boto3.client("iam", **options)
    iam.create_user(UserName="raymatch")
    iam.put_user_policy(UserName="raymatch", PolicyName="s3", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
    access = iam.create_access_key(UserName="raymatch")["AccessKey"]

    requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        yield moto_endpoint, access["AccessKeyId"], access["SecretAccessKey"]
    finally:
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                      region_name="us-east-1")
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.mark.parametrize("wrong", ["unknown key id", "wrong secret"])
def test_wrong_credentials(wrong, moto_with_auth, tmp_path, capsys, ray_starts, monkeypatch):
    endpoint, key_id, secret = moto_with_auth
    if wrong == "unknown key id":
        key_id, reason = "AKIAWRONG00000000000", "The AWS Access Key Id you provided does not exist in our records"
    else:
        secret, reason = "wrong-secret-0123456789", "The request signature we calculated does not match"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    study_file = write_study(tmp_path, study("s3://raymatch-auth/study", store__endpoint_url=endpoint))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, "cannot reach store s3://raymatch-auth/study", reason)
    assert key_id not in err and secret not in err
    assert ray_starts == []
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)  # to list the bucket
    assert bucket_keys(endpoint, "raymatch-auth") == [f"study/{key}" for key in SEEDS]  # nothing new


def test_the_right_credentials_pass_the_same_checks(moto_with_auth, tmp_path, capsys, ray_starts, monkeypatch):
    """The control for the case above: with the IAM user's own key the store is reachable and the plan reads
    the checkpoints (so the refusals above are about the credentials, not the set-up)."""
    endpoint, key_id, secret = moto_with_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    study_file = write_study(tmp_path, study("s3://raymatch-auth/study", store__endpoint_url=endpoint))
    assert cli.main(["plan", study_file]) == 0
    assert "extract       0      2" in capsys.readouterr().out


def test_a_missing_bucket(s3_store, moto_endpoint, tmp_path, capsys, ray_starts, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    study_file = write_study(tmp_path, study("s3://raymatch-no-such-bucket/study", store__endpoint_url=moto_endpoint))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, "cannot reach store s3://raymatch-no-such-bucket/study")
    assert ray_starts == [] and s3_store.list() == []  # and no bucket was made: moto holds only the fixture's
    assert [bucket["name"] for bucket in s3_store.fs.ls("", detail=True, refresh=True)] == ["raymatch-test"]


def test_an_unwritable_store_under_a_file(tmp_path, capsys, ray_starts):
    """A store whose folder cannot be created (its parent is a regular file): refused by root and users alike."""
    for seed in range(2):
        put(tmp_path, f"models/seed{seed}.safetensors", tiny_checkpoint(seed))
    checkpoints = [str(tmp_path / "models" / f"seed{seed}.safetensors") for seed in range(2)]
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    study_file = write_study(tmp_path, study(str(blocker / "store"), population__checkpoints=checkpoints))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, f"cannot reach store {blocker / 'store'}", "Not a directory")
    assert blocker.read_bytes() == b"not a folder" and ray_starts == []


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: a folder's mode 0o500 does not stop root writing")
def test_an_unwritable_store_folder(tmp_path, store_root, capsys, ray_starts):
    before = snapshot(store_root)
    store_root.chmod(0o500)
    try:
        study_file = write_study(tmp_path, study(str(store_root)))
        code, err = run_cli(capsys, "run", study_file)
    finally:
        store_root.chmod(0o700)
    assert_one_line(code, err, "cannot write '_raymatch_probe-", "Permission denied")
    assert snapshot(store_root) == before and ray_starts == []


# ------------------------------------------------------------------------------------------------ only seen running


@pytest.mark.slow
def test_few_samples_run_when_allowed_and_their_rows_are_marked(ray_cluster, tmp_path, store_root, capsys):
    study_file = write_study(tmp_path, study(str(store_root), probe__n_examples=16, layers=["relu3"], eps=[0.25]))
    code = cli.main(["run", study_file, "--allow-few-samples", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "raymatch: warning: layer relu3 has 16 neurons and only 16 samples" in captured.err
    from raymatch.results import load
    from raymatch.store import Store

    rows = load(Store(str(store_root)), "matches")
    assert len(rows) == 1 and rows["status"].tolist() == ["ok"]
    assert rows["chance"].tolist() == [0.0] and rows["n_samples"].tolist() == [16] and rows["n_a"].tolist() == [16]


@pytest.mark.slow
def test_non_finite_activations_stop_the_run_with_one_line(ray_cluster, tmp_path, store_root, capsys):
    """Finite weights whose activations overflow to Inf (and then NaN): only running the model shows it.

    The run starts (Ray, a runs-table row, the study record), ends with exit code 2 and one line naming the
    model and layer, and leaves no activation of the bad model and no results.
    """
    put(store_root, "checkpoints/overflow.safetensors", _with_weights(1e38))
    bad = checkpoint_id((store_root / "checkpoints/overflow.safetensors").read_bytes())
    study_file = write_study(tmp_path, study(  # one actor (2 CPUs each), the bad model first: the shortest run
        str(store_root), population__checkpoints=["checkpoints/overflow.safetensors", SEEDS[0]],
        resources__cpus_per_task=2))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, f"activations of model {bad}, layer relu1 have", "non-finite values (NaN or Inf)")
    written = [str(path.relative_to(store_root)) for path in store_root.rglob("*") if path.is_file()]
    assert not [key for key in written if f"/{bad}/" in key]
    assert not [key for key in written if key.startswith(("results/matches", "results/cka", "factors/"))]
    from raymatch.results import load
    from raymatch.store import Store

    (run,) = load(Store(str(store_root)), "runs").itertuples()
    assert run.status == "failed" and "non-finite values" in run.error
