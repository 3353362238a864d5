"""A store URI and its settings parsed once (issue 21, point 4; issue 26, point 1): what each URI names, the one
error of a bad URI, and the options of every client derived from the one location."""

from __future__ import annotations

import os
import pickle

import pytest
from pyarrow import fs as pafs

from raymatch.store import Store, StoreLocation, StoreURIError, check_uri, parse_uri

from ..conftest import S3_KEY, S3_SECRET


@pytest.mark.parametrize(("uri", "parsed"), [
    ("raymatch-store", ("file", "raymatch-store")),
    ("./a/b", ("file", "./a/b")),
    ("/data/store", ("file", "/data/store")),
    ("~/store", ("file", "~/store")),
    ("file:///data/store", ("file", "/data/store")),
    ("file://./raymatch-store", ("file", "./raymatch-store")),
    ("file://../store", ("file", "../store")),
    ("file://~/store", ("file", "~/store")),
    ("s3://bucket", ("s3", "bucket")),
    ("s3://bucket/prefix/", ("s3", "bucket/prefix")),
])
def test_what_a_store_uri_names(uri, parsed):
    assert parse_uri(uri) == parsed
    assert check_uri(uri) == uri


@pytest.mark.parametrize(("uri", "kind", "needle"), [
    ("", "empty", "must be a non-empty string"),
    ("s3:/bucket/x", "malformed", "is malformed: write s3://bucket/x (two slashes after 's3:')"),
    ("file:/abs/path", "malformed", "is malformed: write file:///abs/path (file:// then the absolute path)"),
    ("file:relative/x", "malformed", "is malformed: write file://./relative/x"),
    ("gs://bucket", "scheme", "unsupported scheme 'gs' (use a local path, file:// or s3://)"),
    ("s3://", "bucket", "names no bucket"),
    ("file://", "folder", "names no folder"),
    ("file://tmp/x/store", "host", "names the host 'tmp', which a local store cannot have: write "
                                   "file:///tmp/x/store for the folder /tmp/x/store, or file://./tmp/x/store"),
    ("file://server/share", "host", "write file:///server/share"),
    ("file://localhost/data", "host", "write file:///data for the folder /data"),
    ("file://x", "host", "write file:///x for the folder /x"),
])
def test_a_bad_uri_is_one_error_naming_it_and_what_to_write(uri, kind, needle):
    with pytest.raises(StoreURIError) as caught:
        parse_uri(uri)
    error = caught.value
    assert isinstance(error, ValueError) and error.kind == kind
    assert needle in str(error) and needle.removeprefix("is ") in error.problem and "\n" not in str(error)
    assert str(error).startswith(f"store URI {uri!r}" if uri else "store URI must be")


def test_credentials_in_a_uri_are_refused_without_being_echoed():
    with pytest.raises(StoreURIError) as caught:
        parse_uri("s3://AKIA:hunter2@bucket/x")
    assert caught.value.kind == "credentials"
    assert "hunter2" not in str(caught.value) and "hunter2" not in caught.value.problem
    with pytest.raises(StoreURIError, match="endpoint") as caught:
        StoreLocation.from_uri("s3://bucket/x", endpoint_url="http://AKIA:hunter2@127.0.0.1:9000")
    assert caught.value.kind == "credentials" and "hunter2" not in str(caught.value)


@pytest.mark.parametrize("uri", ["file://tmp/x/store", "file:/tmp/x/store", "file:tmp/x"])
def test_a_host_or_one_slash_never_becomes_a_folder_under_the_working_directory(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreURIError):
        Store(uri)
    with pytest.raises(StoreURIError):
        Store.open_existing(uri)
    assert os.listdir(tmp_path) == []


def test_relative_and_home_paths_resolve_where_the_location_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for uri in ("file://./x/store", "./x/store", "x/store"):
        location = StoreLocation.from_uri(uri)
        assert location.root == str(tmp_path / "x" / "store") and location.is_relative and location.is_local
    for uri in ("file://~/store", "~/store"):
        location = StoreLocation.from_uri(uri)
        assert location.root == str(tmp_path / "home" / "store") and not location.is_relative
    absolute = StoreLocation.from_uri(f"file://{tmp_path}/store")
    assert absolute.root == f"{tmp_path}/store" and absolute.path == f"{tmp_path}/store"
    store = Store("file://./x/store")
    store.write_bytes("k.bin", b"v")
    assert (tmp_path / "x" / "store" / "k.bin").read_bytes() == b"v"


def test_a_store_opened_from_a_location_equals_one_opened_from_its_uri(moto_endpoint):
    location = StoreLocation.from_uri("s3://bucket/study", endpoint_url=moto_endpoint, key=S3_KEY, secret=S3_SECRET,
                                      connect_timeout=2, read_timeout=7.5, retries=3)
    by_location = Store(location)
    by_uri = Store("s3://bucket/study", endpoint_url=moto_endpoint, key=S3_KEY, secret=S3_SECRET, connect_timeout=2,
                   read_timeout=7.5, retries=3)
    assert by_location.location == by_uri.location == location
    assert by_location._options == by_uri._options
    assert (by_location.uri, by_location.root, by_location.protocol, by_location.endpoint_url) == (
        "s3://bucket/study", "bucket/study", "s3", moto_endpoint)
    assert (by_location.connect_timeout, by_location.read_timeout, by_location.retries) == (2.0, 7.5, 3)
    assert S3_SECRET not in repr(location) and S3_SECRET not in repr(by_location)
    assert pickle.loads(pickle.dumps(by_location)).location == location
    with pytest.raises(TypeError, match="the location holds the settings"):
        Store(location, retries=1)


def test_every_clients_options_come_from_the_location(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    location = StoreLocation.from_uri("s3://bucket/study", endpoint_url="http://127.0.0.1:9000", key="k",
                                      secret="s", connect_timeout=2, read_timeout=7.5, retries=3)
    assert location.fsspec_options() == {
        "key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
        "skip_instance_cache": True, "use_listings_cache": False,
        "config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 4}, "connect_timeout": 2.0,
                          "read_timeout": 7.5}}
    assert location.deltalake_storage_options() == {
        "conditional_put": "etag", "max_retries": "3", "retry_timeout": "60s", "backoff_config.init_backoff": "500ms",
        "backoff_config.max_backoff": "8s", "connect_timeout": "2000ms", "timeout": "7500ms",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
    arrow = location.pyarrow_filesystem()
    assert isinstance(arrow, pafs.S3FileSystem) and arrow.region == "us-east-1"
    regional = StoreLocation.from_uri("s3://b", storage_options={"client_kwargs": {"region_name": "eu-west-3"}})
    assert regional.deltalake_storage_options()["AWS_REGION"] == "eu-west-3"
    assert regional.pyarrow_filesystem().region == "eu-west-3"
    local = StoreLocation.from_uri("/data/store")
    assert local.fsspec_options() == {} and local.deltalake_storage_options() == {}
    assert isinstance(local.pyarrow_filesystem(), pafs.LocalFileSystem)


def test_pyarrow_reads_what_the_store_wrote_on_s3(s3_store):
    s3_store.write_bytes("a/b.bin", b"payload")
    arrow = s3_store.location.pyarrow_filesystem()
    with arrow.open_input_stream(s3_store.path("a/b.bin")) as stream:
        assert stream.read() == b"payload"
    assert s3_store.url("a/b.bin") == f"s3://{s3_store.root}/a/b.bin"
