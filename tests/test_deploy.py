"""Offline checks of deploy/: the KubeRay manifests, the cluster launcher config, the image and its build script.

No cluster, registry or Docker daemon is needed. The KubeRay manifests are validated against the OpenAPI v3 schemas of
the KubeRay v1.7.0 CRDs in ``../shared/kuberay-crds-v1.7.0/`` (skipped, with the reason, when that folder is absent),
made strict the way the API server is (see :func:`_strict`); the launcher config against Ray's own
``ray-schema.json``. Everything else is cross-checked against the repository: the entry points and study files, the
package version (image tags), the pins in pyproject.toml, ports, GPU counts, token authentication and secrets.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zoneinfo
from pathlib import Path

import jsonschema
import pytest
import yaml

import raymatch

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "cluster" / "aws-gpu.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def _crd_dir() -> Path:
    """The KubeRay v1.7.0 CRDs: ``$RAYMATCH_KUBERAY_CRDS``, else ``shared/kuberay-crds-v1.7.0`` beside the checkout
    or beside any folder above it (a clone in a sub-folder of the workspace still finds them)."""
    if os.environ.get("RAYMATCH_KUBERAY_CRDS"):
        return Path(os.environ["RAYMATCH_KUBERAY_CRDS"])
    for folder in ROOT.parents:
        candidate = folder / "shared" / "kuberay-crds-v1.7.0"
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "kuberay-crds-v1.7.0"


CRD_DIR = _crd_dir()

MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "raycronjob.yaml": "RayCronJob"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCronJob": "ray.io_raycronjobs.yaml"}
# KubeRay's limits: a RayCluster name must leave room for "-serve-svc" in 63 characters, a RayJob's for the "-xxxxx"
# of the cluster it creates, a RayCronJob's for the "-xxxxx" of the RayJobs it creates.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 41}
# The head container ports KubeRay builds the head Service from, at Ray's defaults.
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
SECRET_ENV_NAME = re.compile(r"^AWS_|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

needs_crds = pytest.mark.skipif(
    not CRD_DIR.is_dir(),
    reason=f"KubeRay v1.7.0 CRDs not found at {CRD_DIR} (the shared folder beside the checkout, or set "
           "RAYMATCH_KUBERAY_CRDS)"
)


# --------------------------------------------------------------------------------------------------------------------
# Loading


@functools.cache
def _manifest(name: str) -> dict:
    """One KubeRay manifest of deploy/kuberay/, parsed with ``yaml.safe_load`` (each file holds one document)."""
    with open(KUBERAY / name, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def manifest(name: str) -> dict:
    """A fresh copy of a manifest, safe to change."""
    return copy.deepcopy(_manifest(name))


@functools.cache
def _launcher() -> dict:
    """The cluster launcher config, parsed with ``yaml.safe_load``."""
    with open(LAUNCHER, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def launcher() -> dict:
    """A fresh copy of the cluster launcher config."""
    return copy.deepcopy(_launcher())


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec of the manifests: the RayCluster's, the RayJob's and the RayCronJob's template's."""
    return [
        ("raycluster.yaml", _manifest("raycluster.yaml")["spec"]),
        ("rayjob.yaml", _manifest("rayjob.yaml")["spec"]["rayClusterSpec"]),
        ("raycronjob.yaml", _manifest("raycronjob.yaml")["spec"]["jobTemplate"]["rayClusterSpec"]),
    ]


def job_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec of the manifests: the RayJob's and the RayCronJob's job template."""
    return [("rayjob.yaml", _manifest("rayjob.yaml")["spec"]),
            ("raycronjob.yaml", _manifest("raycronjob.yaml")["spec"]["jobTemplate"])]


def groups(spec: dict) -> list[tuple[str, dict]]:
    """The head group and the worker groups of a RayCluster spec, as (name, group spec)."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def ray_container(group: dict) -> dict:
    """The Ray container of a group: KubeRay takes the first container of the pod template."""
    return group["template"]["spec"]["containers"][0]


def walk(node):
    """Every dict inside ``node`` (lists and dicts, recursively), ``node`` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def items(node: dict, key: str) -> list:
    """``node[key]`` when it is a list (a container list, an env list), else an empty list."""
    value = node.get(key)
    return value if isinstance(value, list) else []


def env_vars(doc) -> list[dict]:
    """Every env var entry of every container (or other ``env`` list) inside ``doc``."""
    return [var for node in walk(doc) for var in items(node, "env")]


def pyproject_pin(package: str) -> str:
    """The ``==`` pin of a dependency in pyproject.toml (``ray`` matches ``ray[default]==...``)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^";]+)"', text)
    assert found, f"no {package}==... pin in pyproject.toml"
    return found.group(1).strip()


# --------------------------------------------------------------------------------------------------------------------
# CRD schemas, made strict


def _strict(schema: dict) -> dict:
    """A copy of a CRD's OpenAPI v3 schema that a JSON-schema (Draft 7) validator checks as the API server would.

    The API server prunes (drops) fields that a structural schema does not declare, and ``kubectl apply``, whose
    field validation is strict by default, refuses them: either way a misspelt field never takes effect. Here it is
    an error: every object schema with ``properties`` and without ``x-kubernetes-preserve-unknown-fields`` gets
    ``additionalProperties: false``. ``x-kubernetes-int-or-string`` accepts integers and strings, ``nullable`` adds
    null to the type. The validator ignores the other ``x-kubernetes-*`` keys except ``x-kubernetes-list-type`` (see
    :func:`_list_type`); the CEL rules of ``x-kubernetes-validations`` are not evaluated.

    Parameters
    ----------
    schema : dict
        A schema node of ``spec.versions[*].schema.openAPIV3Schema``.

    Returns
    -------
    dict
        The transformed copy.
    """
    node = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in node:
            node[key] = {name: _strict(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = _strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict(sub) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


def _list_type(validator, list_type, instance, schema):
    """``x-kubernetes-list-type``: ``map`` lists have one item per value of their key fields, ``set`` lists no repeats.

    Key fields left out count at their schema default (a port without ``protocol`` is TCP), as on the API server.
    """
    if not validator.is_type(instance, "array"):
        return
    seen: dict[str, int] = {}
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        fields = schema.get("items", {}).get("properties", {})
        for index, item in enumerate(instance):
            if isinstance(item, dict):
                ident = json.dumps([item.get(key, fields.get(key, {}).get("default")) for key in keys])
                if ident in seen:
                    yield jsonschema.ValidationError(
                        f"items {seen[ident]} and {index} repeat the list-map keys {keys} = {ident}")
                seen[ident] = index
    elif list_type == "set":
        for index, item in enumerate(instance):
            ident = json.dumps(item, sort_keys=True)
            if ident in seen:
                yield jsonschema.ValidationError(f"items {seen[ident]} and {index} repeat {ident} in a list-type set")
            seen[ident] = index


def _format_checker() -> jsonschema.FormatChecker:
    """The OpenAPI integer formats (other formats are not checked)."""
    checker = jsonschema.FormatChecker(formats=())

    def within(bounds):
        return lambda value: not isinstance(value, int) or bounds[0] <= value <= bounds[1]

    checker.checks("int32")(within(INT32))
    checker.checks("int64")(within(INT64))
    return checker


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type}
)


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    """A strict validator for one kind at one API version, from the KubeRay v1.7.0 CRD."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 56k lines of CRDs 5x faster
    with open(CRD_DIR / CRD_FILES[kind], encoding="utf-8") as handle:
        crd = yaml.load(handle, Loader=loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{kind} {version} is not served by KubeRay v1.7.0"
    schema = _strict(entry["schema"]["openAPIV3Schema"])
    return KubernetesValidator(schema, format_checker=_format_checker())


def schema_errors(doc: dict) -> list[str]:
    """Every schema violation of a KubeRay manifest, as 'path: message' lines (empty when valid)."""
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    errors = crd_validator(doc["kind"], version).iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


# --------------------------------------------------------------------------------------------------------------------
# The manifests against the CRDs


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_one_named_object_of_its_kind(name):
    doc = _manifest(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == MANIFESTS[name]
    object_name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", object_name), "not a DNS-1035 label"
    assert len(object_name) <= MAX_NAME[doc["kind"]]
    with open(KUBERAY / name, encoding="utf-8") as handle:
        assert len(list(yaml.safe_load_all(handle))) == 1


@needs_crds
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_its_crd_schema(name):
    assert schema_errors(_manifest(name)) == []


def _parent(doc, path: str):
    """The container of the field at a JSON-pointer-like path ('/'-separated, '~1' for a '/' inside a name)."""
    *parents, last = [part.replace("~1", "/") for part in path.split("/")]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


def _set(path: str, value):
    """A change to a manifest: set the field at ``path`` to ``value``."""

    def change(doc):
        node, last = _parent(doc, path)
        node[last] = value

    return change


def _rename(path: str, new: str):
    """A change to a manifest: rename the field at ``path`` to ``new``, keeping its value."""

    def change(doc):
        node, last = _parent(doc, path)
        node[new] = node.pop(last)

    return change


WORKER = "spec/workerGroupSpecs/0"
BROKEN = {
    "misspelt-shutdownAfterJobFinish": (
        "rayjob.yaml", _rename("spec/shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "'shutdownAfterJobFinish' was unexpected"),
    "ttl-not-an-integer": (
        "rayjob.yaml", _set("spec/ttlSecondsAfterFinished", "ten"), "'ten' is not of type 'integer'"),
    "deadline-over-int32": ("rayjob.yaml", _set("spec/activeDeadlineSeconds", 2**31), "is not a 'int32'"),
    "entrypoint-a-list": (
        "rayjob.yaml", _set("spec/entrypoint", ["python", "jobs/study.py"]), "is not of type 'string'"),
    "misspelt-autoscaling": (
        "raycluster.yaml", _rename("spec/enableInTreeAutoscaling", "enableInTreeAutoscalling"),
        "'enableInTreeAutoscalling' was unexpected"),
    "auth-mode-not-in-enum": ("raycluster.yaml", _set("spec/authOptions/mode", "tokens"), "'tokens' is not one of"),
    "num-gpus-not-a-string": (
        "raycluster.yaml", _set(f"{WORKER}/rayStartParams/num-gpus", 1), "1 is not of type 'string'"),
    "max-replicas-a-string": ("raycluster.yaml", _set(f"{WORKER}/maxReplicas", "8"), "'8' is not of type 'integer'"),
    "misspelt-field-deep-in-the-pod-template": (
        "raycluster.yaml", _rename(f"{WORKER}/template/spec/containers/0/volumeMounts", "volumeMount"),
        "'volumeMount' was unexpected"),
    "gpu-quantity-not-a-quantity": (
        "raycluster.yaml", _set(f"{WORKER}/template/spec/containers/0/resources/limits/nvidia.com~1gpu", "one"),
        "does not match"),
    "env-name-repeated": (
        "raycluster.yaml",
        lambda doc: doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "AWS_ACCESS_KEY_ID", "value": "x"}),
        "repeat the list-map keys"),
    "port-repeated": (
        "raycluster.yaml",
        lambda doc: doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].append(
            {"containerPort": 6379, "name": "gcs-again", "protocol": "TCP"}),
        "repeat the list-map keys"),
    "cron-without-schedule": ("raycronjob.yaml", lambda doc: doc["spec"].pop("schedule"), "'schedule' is a required"),
    "cron-has-no-concurrencyPolicy": (
        "raycronjob.yaml", _set("spec/concurrencyPolicy", "Forbid"), "'concurrencyPolicy' was unexpected"),
    "cron-template-misspelt": (
        "raycronjob.yaml", _rename("spec/jobTemplate/ttlSecondsAfterFinished", "ttlSecondAfterFinished"),
        "'ttlSecondAfterFinished' was unexpected"),
}


@needs_crds
@pytest.mark.parametrize("case", BROKEN)
def test_broken_manifest_fails_its_crd_schema(case):
    name, change, expected = BROKEN[case]
    doc = manifest(name)
    change(doc)
    errors = schema_errors(doc)
    # Exactly one error, the one planted: the rest of the manifest stays valid.
    assert len(errors) == 1, errors
    assert expected in errors[0]


@needs_crds
def test_int_or_string_quantities_accept_integers_and_strings():
    doc = manifest("raycluster.yaml")
    limits = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits["cpu"], limits["memory"] = 4, "16Gi"
    assert schema_errors(doc) == []
    limits["cpu"] = "4000m"
    assert schema_errors(doc) == []
    limits["cpu"] = 4.5  # a float is neither: the API server wants "4500m" or "4.5"
    assert schema_errors(doc)


# --------------------------------------------------------------------------------------------------------------------
# The jobs: entry point, study file, working directory, lifecycle


APP_DIR = "/home/ray/app"  # the image's WORKDIR, holding jobs/


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_entrypoint_runs_a_study_file_of_the_repository(name):
    from raymatch.study import load_study

    spec = dict(job_specs())[name]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/study.py"] and len(argv) == 3, argv
    assert (ROOT / argv[1]).is_file()
    assert (ROOT / argv[2]).is_file(), f"{argv[2]} is not in the repository"
    study = load_study(ROOT / argv[2])
    # The job's cluster is deleted when it ends: only a remote store outlives it.
    assert study.store.uri.startswith("s3://"), study.store.uri
    # Relative paths resolve in the job's working_dir, which must be the image folder holding jobs/.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == APP_DIR
    # ray job submit (K8sJobMode's submitter pod) uploads a local working_dir; HTTPMode could not.
    assert spec["submissionMode"] == "K8sJobMode"


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_study_fits_the_cluster(name):
    """The probe data is mounted where the study looks for it, and its actors and tasks fit in a worker pod."""
    from raymatch.study import load_study

    job = dict(job_specs())[name]
    study = load_study(ROOT / shlex.split(job["entrypoint"])[2])
    spec = job["rayClusterSpec"]
    for group_name, group in groups(spec):
        mounts = [m["mountPath"] for m in ray_container(group).get("volumeMounts", [])]
        if study.probe.data_dir is not None:
            assert any(Path(study.probe.data_dir).is_relative_to(m) for m in mounts), (group_name, mounts)
    workers = [g for _, g in groups(spec)[1:]]
    assert any(float(g["rayStartParams"]["num-gpus"]) >= study.resources.gpus_per_actor for g in workers)
    assert any(_cpus(ray_container(g)) >= study.resources.cpus_per_task for g in workers)


def _cpus(container: dict) -> float:
    """The CPUs KubeRay gives Ray in a container: its CPU limit (else request), in cores."""
    resources = container.get("resources", {})
    value = str(resources.get("limits", {}).get("cpu", resources.get("requests", {}).get("cpu", "0")))
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_job_cleans_up_after_itself(name):
    spec = dict(job_specs())[name]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    assert spec["activeDeadlineSeconds"] > 0
    assert 0 < spec.get("preRunningDeadlineSeconds", 1) < spec["activeDeadlineSeconds"]
    assert spec.get("backoffLimit", 0) == 0
    assert "clusterSelector" not in spec, "a job that brings its own cluster must not also select one"


def _cron_field(text: str, low: int, high: int) -> list[int]:
    """The values of one field of a standard (5-field) cron schedule: *, a, a-b, with /step and comma lists."""
    values: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        else:
            first_text, _, last_text = span.partition("-")
            first, last = int(first_text), int(last_text or (high if step else first_text))
        assert low <= first <= last <= high, f"{part!r} outside {low}-{high}"
        values.update(range(first, last + 1, int(step or 1)))
    return sorted(values)


def test_cron_schedule_is_daily_and_runs_cannot_overlap():
    spec = _manifest("raycronjob.yaml")["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    bounds = [(minute, 0, 59), (hour, 0, 23), (day, 1, 31), (month, 1, 12), (weekday, 0, 6)]
    minutes, hours, *_ = [_cron_field(field, low, high) for field, low, high in bounds]
    assert len(minutes) == len(hours) == 1 and (day, month, weekday) == ("*", "*", "*"), "not once a day"
    if zoneinfo.available_timezones():  # an IANA name the operator can load (where this machine has the database)
        assert spec["timeZone"] in zoneinfo.available_timezones()
    assert spec.get("suspend", False) is False
    # The controller has no concurrencyPolicy: the deadline (plus the cluster's TTL) must end a run before the next.
    job = spec["jobTemplate"]
    assert job["activeDeadlineSeconds"] + job["ttlSecondsAfterFinished"] < 24 * 3600
    assert shlex.split(job["entrypoint"])[2] == "jobs/examples/nightly.yaml"


def test_job_and_cron_template_and_cluster_are_the_same():
    """One cluster definition in three places: the copies must not drift apart."""
    (_, cluster), (_, job_cluster), (_, cron_cluster) = cluster_specs()
    assert job_cluster == cluster
    assert cron_cluster == cluster
    (_, job), (_, cron_job) = job_specs()
    assert cron_job == job


# --------------------------------------------------------------------------------------------------------------------
# Versions: image tags, Ray, Python, torch


def _image_parts(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference; the tag is '' when there is none."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon was a registry port
        return image, ""
    return name, tag


def all_images() -> list[tuple[str, str]]:
    """Every image named by the manifests and the launcher config, as (where, image)."""
    found = []
    for name in MANIFESTS:
        for node in walk(_manifest(name)):
            for key in ("containers", "initContainers"):
                for container in items(node, key):
                    found.append((f"{name}: {container['name']}", container["image"]))
    docker = _launcher()["docker"]
    found += [(f"aws-gpu.yaml: docker.{key}", docker[key]) for key in ("image", "head_image", "worker_image")
              if key in docker]
    for node_type, config in _launcher()["available_node_types"].items():
        if "worker_image" in config.get("docker", {}):
            found.append((f"aws-gpu.yaml: {node_type}", config["docker"]["worker_image"]))
    return found


def test_every_image_is_the_project_image_at_the_package_version():
    images = all_images()
    assert len(images) >= 7  # head + worker in 3 manifests, and the launcher's
    for where, image in images:
        repository, tag = _image_parts(image)
        assert repository.rpartition("/")[2] == "raymatch", (where, image)
        assert tag == raymatch.__version__, (where, image)
    for name in MANIFESTS:
        for node in walk(_manifest(name)):
            labels = node.get("labels") if isinstance(node.get("labels"), dict) else {}
            if "app.kubernetes.io/version" in labels:
                assert labels["app.kubernetes.io/version"] == raymatch.__version__, name


def test_build_script_tags_with_the_package_version():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash on this machine")
    command = [bash, str(DEPLOY / "docker" / "build.sh"), "--print-tag"]
    env = {key: value for key, value in os.environ.items() if key != "REGISTRY"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip() == f"raymatch:{raymatch.__version__}"
    env["REGISTRY"] = "registry.example.com/team/"
    run = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip() == f"registry.example.com/team/raymatch:{raymatch.__version__}"


@functools.cache
def _dockerfile() -> tuple[tuple[str, str], ...]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            instructions.append((instruction.upper(), rest.strip()))
    return tuple(instructions)


def _dockerfile_args() -> dict[str, str]:
    return {name: value.strip('"') for instruction, rest in _dockerfile() if instruction == "ARG"
            for name, _, value in [rest.partition("=")]}


def test_dockerfile_base_image_is_the_pinned_ray_on_python_311_with_cuda():
    from packaging.specifiers import SpecifierSet

    args = _dockerfile_args()
    (base,) = [rest for instruction, rest in _dockerfile() if instruction == "FROM"]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    found = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<python>\d+)-(?P<variant>gpu|cu\d+)", image)
    assert found, image
    assert found["ray"] == pyproject_pin("ray") == "2.60.0"
    assert found["python"] == "311"
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "3.11" in SpecifierSet(requires.group(1))
    # The CUDA build of the pinned torch, installed before the package so that the pin finds it satisfied.
    assert args["TORCH_VERSION"] == pyproject_pin("torch")
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    runs = [rest for instruction, rest in _dockerfile() if instruction == "RUN"]
    torch_run = next(i for i, run in enumerate(runs) if "torch==${TORCH_VERSION}" in run)
    package_run = next(i for i, run in enumerate(runs) if "pip install --no-cache-dir /tmp/raymatch-src" in run)
    assert torch_run < package_run and "${TORCH_INDEX_URL}" in runs[torch_run]


def test_dockerfile_copies_files_that_exist_and_pass_the_context_filter():
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "*", "the context filter is an allow-list"
    allowed = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    copied = []
    for instruction, rest in _dockerfile():
        if instruction == "COPY":
            *sources, _ = [part for part in shlex.split(rest) if not part.startswith("--")]
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source in allowed, f"{source} is copied but excluded from the build context"
    readme = re.search(r'readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert {"pyproject.toml", readme, "raymatch", "jobs"} <= set(copied)
    workdirs = [rest for instruction, rest in _dockerfile() if instruction == "WORKDIR"]
    assert workdirs[-1] == APP_DIR
    last_copy = [rest for instruction, rest in _dockerfile() if instruction == "COPY"][-1]
    assert shlex.split(last_copy)[-2:] == ["jobs", "./jobs"], "jobs/ must land in the working directory"


# --------------------------------------------------------------------------------------------------------------------
# Secrets and token authentication


def inline_secrets(doc: dict) -> list[str]:
    """Secret-looking settings of a manifest that do not come from a Kubernetes Secret.

    Every env var whose name looks secret (AWS_*, *TOKEN*, *SECRET*, *PASSWORD*, *KEY*...) must come from
    ``valueFrom.secretKeyRef``; runtimeEnvYAML (plain text in the object) and rayStartParams must name none.
    """
    problems = [f"env {var['name']} is not read from a Secret" for var in env_vars(doc)
                if SECRET_ENV_NAME.search(var.get("name", ""))
                and ("value" in var or "secretKeyRef" not in var.get("valueFrom", {}))]
    for node in walk(doc):
        if isinstance(node.get("runtimeEnvYAML"), str):
            runtime_vars = (yaml.safe_load(node["runtimeEnvYAML"]) or {}).get("env_vars", {})
            problems += [f"runtimeEnvYAML sets {name}" for name in runtime_vars if SECRET_ENV_NAME.search(name)]
        if isinstance(node.get("rayStartParams"), dict):
            problems += [f"rayStartParams sets {name}" for name in node["rayStartParams"]
                         if re.search("password|token|secret", name, re.IGNORECASE)]
    return problems


SECRET_TEXT = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # name: value / name=value with a literal value (not $VAR, $(command), <placeholder> or {template}); a name
    # inside a path (~/.ray/auth_token) is a file, not a setting.
    re.compile(r"(?i)(?<![/.])\b(aws_secret_access_key|aws_access_key_id|aws_session_token|ray_auth_token|auth_token)"
               r"[\"']?\s*[:=]\s*[\"']?(?![\s\"'$<{(]|$)\S"),
]


def secret_lines(text: str) -> list[str]:
    """The lines of a text that look like they hold a secret value."""
    return [line.strip() for line in text.splitlines() if any(pattern.search(line) for pattern in SECRET_TEXT)]


@pytest.mark.parametrize("name", MANIFESTS)
def test_no_secret_value_is_inline_in_a_manifest(name):
    doc = _manifest(name)
    assert inline_secrets(doc) == []
    names = {var["name"] for var in env_vars(doc)}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names, "the store's credentials are not passed"


def test_no_secret_value_is_written_in_deploy_or_the_docs():
    files = [path for path in DEPLOY.rglob("*") if path.is_file()] + [ROOT / "docs" / "deploy.md"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert secret_lines(text) == [], path
        for doc in yaml.safe_load_all(text) if path.suffix in (".yaml", ".yml") else []:
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), f"{path} holds a Secret"


def test_the_secret_checks_catch_planted_secrets():
    doc = manifest("rayjob.yaml")
    container = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"][1] = {"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    doc["spec"]["runtimeEnvYAML"] += "  RAY_AUTH_TOKEN: abc\n"
    assert sorted(inline_secrets(doc)) == ["env AWS_SECRET_ACCESS_KEY is not read from a Secret",
                                           "runtimeEnvYAML sets RAY_AUTH_TOKEN"]
    assert secret_lines(yaml.safe_dump(doc))
    assert secret_lines("aws_secret_access_key = abc123") and secret_lines("key: AKIAIOSFODNN7EXAMPLE")
    assert secret_lines("--from-literal=auth_token=hunter2")
    assert not secret_lines('--from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"')
    assert not secret_lines('--from-literal=auth_token="$(ray get-auth-token)"')
    assert not secret_lines("key: AWS_SECRET_ACCESS_KEY")
    assert not secret_lines('"~/.ray/auth_token": "~/.ray/auth_token"')


@pytest.mark.parametrize(("name", "spec"), cluster_specs(), ids=[name for name, _ in cluster_specs()])
def test_token_authentication_is_on(name, spec):
    assert spec["authOptions"]["mode"] == "token"
    assert spec["authOptions"].get("secretName"), "clients need to know where the token is"
    # KubeRay refuses token mode without a rayVersion >= 2.52.0.
    assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0)
    assert spec["rayVersion"] == pyproject_pin("ray")
    for var in env_vars(spec):
        assert var["name"] != "RAY_AUTH_MODE" or var.get("value") == "token", name


def test_launcher_keeps_token_authentication_on():
    config = _launcher()
    options = " ".join(config["docker"].get("run_options", []) + config["docker"].get("head_run_options", [])
                       + config["docker"].get("worker_run_options", []))
    assert re.search(r"--env[ =]RAY_AUTH_MODE=token\b", options)
    assert "RAY_AUTH_MODE=disabled" not in LAUNCHER.read_text(encoding="utf-8")
    mounts = {remote: local for remote, local in config["file_mounts"].items()}
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token", "the nodes need the token ray start checks for"


def test_runtime_env_helper_passes_credentials_from_the_environment_only():
    spec = importlib.util.spec_from_file_location("deploy_runtime_env", DEPLOY / "cluster" / "runtime_env.py")
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    environ = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ENDPOINT_URL": "", "HOME": "/x"}
    assert helper.runtime_env(environ) == {"env_vars": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}}
    environ["AWS_DEFAULT_REGION"] = "eu-west-1"
    assert helper.runtime_env(environ)["env_vars"]["AWS_DEFAULT_REGION"] == "eu-west-1"
    with pytest.raises(KeyError, match="AWS_SECRET_ACCESS_KEY") as caught:
        helper.runtime_env({"AWS_ACCESS_KEY_ID": "id"})
    assert "id" not in str(caught.value).replace("AWS_ACCESS_KEY_ID", "")
    run = subprocess.run([sys.executable, str(DEPLOY / "cluster" / "runtime_env.py")], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 1 and run.stdout == "" and "AWS_ACCESS_KEY_ID" in run.stderr


# --------------------------------------------------------------------------------------------------------------------
# Ports, GPUs, autoscaling


@pytest.mark.parametrize(("name", "spec"), cluster_specs(), ids=[name for name, _ in cluster_specs()])
def test_head_ports_and_worker_addresses_agree(name, spec):
    head = spec["headGroupSpec"]
    ports = {port["name"]: port["containerPort"] for port in ray_container(head)["ports"]}
    assert len(set(ports.values())) == len(ports), ports
    assert {key: ports.get(key) for key in HEAD_PORTS} == HEAD_PORTS
    params = head["rayStartParams"]
    for param, port_name in (("port", "gcs-server"), ("dashboard-port", "dashboard"),
                             ("ray-client-server-port", "client")):
        assert int(params.get(param, ports[port_name])) == ports[port_name], param
    # The submitter and port-forwarded clients reach the dashboard through the head Service, not the pod's loopback.
    assert params.get("dashboard-host") == "0.0.0.0"
    for group_name, group in groups(spec)[1:]:
        # KubeRay points workers at <cluster>-head-svc:<gcs-server>; an address or port here would override that.
        assert not {"address", "port"} & set(group["rayStartParams"]), group_name


@pytest.mark.parametrize(("name", "spec"), cluster_specs(), ids=[name for name, _ in cluster_specs()])
def test_gpu_counts_and_autoscaling_bounds_agree(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    gpu_groups = 0
    for group_name, group in groups(spec):
        resources = ray_container(group).get("resources", {})
        limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
        request = resources.get("requests", {}).get("nvidia.com/gpu")
        assert request is None or int(request) == limit, f"{group_name}: GPU request and limit differ"
        # Ray must advertise exactly the GPUs the pod gets (KubeRay's default when num-gpus is left out).
        assert int(group["rayStartParams"].get("num-gpus", limit)) == limit, group_name
        # KubeRay rejects Ray resources given both in rayStartParams and in the group's resources field.
        assert not group.get("resources"), group_name
        if group_name == "head":
            assert limit == 0, "the head is a CPU pod"
            continue
        gpu_groups += limit > 0
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group_name
        assert 1 <= group["maxReplicas"] <= 64, f"{group_name}: maxReplicas {group['maxReplicas']} is not a bound"
    assert gpu_groups >= 1


# --------------------------------------------------------------------------------------------------------------------
# The cluster launcher


def test_launcher_config_passes_rays_own_validation():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(_launcher(), json.loads(schema_path.read_text(encoding="utf-8")))
    # What `ray up` does with the file before it contacts the cloud: fill in the AWS defaults, validate again.
    validate_config(prepare_config(launcher()))


def test_launcher_nodes_ports_and_gpus_agree():
    config = _launcher()
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    workers = {name: node for name, node in node_types.items() if name != config["head_node_type"]}
    assert any(node["resources"].get("GPU", 0) >= 1 for node in workers.values())
    for name, node in workers.items():
        assert 0 <= node.get("min_workers", 0) <= node["max_workers"] <= config["max_workers"], name
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    port = re.search(r"ray start --head\b.*?--port=(\d+)", head_start).group(1)
    assert re.search(rf"ray start --address=\$RAY_HEAD_IP:{port}\b", worker_start)
    assert "--dashboard-host=0.0.0.0" in head_start
    # The image carries everything; installing at boot would drift from it.
    assert not any(config.get(key) for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"))


# --------------------------------------------------------------------------------------------------------------------
# The docs


def test_deploy_docs_cover_every_step():
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in ("deploy/docker/build.sh", "docker push", "kubectl create secret generic",
                   "kubectl apply -f deploy/kuberay/raycluster.yaml", "kubectl apply -f deploy/kuberay/rayjob.yaml",
                   "kubectl apply -f deploy/kuberay/raycronjob.yaml", "ray job submit", "--runtime-env-json",
                   "ray job logs", "--follow", "raymatch query s3://", "--endpoint-url",
                   "ray up deploy/cluster/aws-gpu.yaml", "python jobs/study.py", "RAY_AUTH_MODE=token"):
        assert needle in text, needle
    assert re.search(r"(?i)validated offline", text) and re.search(r"(?i)not (been )?(run|tested|validated)", text)
