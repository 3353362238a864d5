"""Shared fixtures: a real moto S3 server on 127.0.0.1, stores on it and on a temporary folder, and
a real local Ray cluster (with two fake GPUs, so GPU scheduling is testable without a GPU)."""

from __future__ import annotations

import os
import socket

import pytest

# Ray on these machines (DESIGN.md §5): loopback only, no token auth for loopback tests, no usage
# reporting (no network). Set before Ray is imported anywhere.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Hugging Face: never the network (a Hub id resolves through a cache folder a test lays out).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

BUCKET = "raymatch-test"
S3_KEY, S3_SECRET = "testing-key", "testing-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(moto_endpoint):
    """A store in a fresh bucket of a reset moto server."""
    import boto3
    import requests
    import s3fs

    from raymatch.store import Store

    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id=S3_KEY,
                          aws_secret_access_key=S3_SECRET, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return Store(f"s3://{BUCKET}/study", endpoint_url=moto_endpoint, key=S3_KEY, secret=S3_SECRET)


@pytest.fixture
def local_store(tmp_path):
    from raymatch.store import Store

    return Store(str(tmp_path / "store"))


@pytest.fixture(params=["local", "s3"])
def store(request):
    """Every store test runs twice: on a temporary folder and on the moto S3 server."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """Run the `ray job submit` and two-node tests first: they start clusters of their own, which must not share
    this process with the local Ray that the other tests start (a job then hangs; see tests/test_cluster_job.py)."""
    first = ("test_two_nodes",)
    items.sort(key=lambda item: 0 if item.path.stem.startswith("test_cluster_job") or item.path.stem in first
               else 1)  # doctest items have no module
