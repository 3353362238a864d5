"""The store on a local folder and on moto S3: atomic objects, safe keys, round trips, errors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from raymatch.match import factor
from raymatch.store import (
    ActivationKey,
    ActivationWriter,
    Store,
    StoreError,
    cached_factor,
    factor_prefix,
    is_stored,
    iter_shards,
    read_activations,
    read_manifest,
    write_activations,
)


def relu_matrix(rows=300, cols=17, seed=0):
    return np.maximum(np.random.default_rng(seed).standard_normal((rows, cols)), 0).astype(np.float32)


def test_bytes_and_json_round_trip(store):
    store.check()
    store.write_bytes("a/b/c.bin", b"\x00\x01payload")
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01payload"
    store.write_json("a/meta.json", {"x": [1, 2], "y": "z"})
    assert store.read_json("a/meta.json") == {"x": [1, 2], "y": "z"}
    assert store.list("a") == ["a/b/c.bin", "a/meta.json"]
    assert store.exists("a/meta.json") and not store.exists("a/missing.json")
    store.delete("a/b/c.bin")
    assert store.list("a") == ["a/meta.json"]


def test_read_many_returns_each_object_in_order_and_none_where_there_is_none(store):
    store.write_bytes("m/one.json", b"1")
    store.write_bytes("m/deep/two.json", b"22")
    assert store.read_many(["m/deep/two.json", "m/none.json", "m/one.json", "other/x"]) == [b"22", None, b"1", None]
    assert store.read_many([]) == []


def test_stored_repeats_of_many_matrices_follow_the_first_manifest(store):
    from raymatch.store.activations import stored_repeats, stored_repeats_of

    policy = {"row_policy": {"repeats": 3, "rows": 10}}
    for repeat in range(3):  # complete: 3 of 3
        write_activations(store, ActivationKey("p", "m1", "conv", repeat), relu_matrix(10, 4), metadata=policy)
    for repeat in (0, 2):  # repeat 1 missing: not stored
        write_activations(store, ActivationKey("p", "m2", "conv", repeat), relu_matrix(10, 4), metadata=policy)
    write_activations(store, ActivationKey("p", "m1", "fc"), relu_matrix(10, 4))  # every row: one repeat
    got = stored_repeats_of(store, "p", [("m1", "conv"), ("m2", "conv"), ("m1", "fc"), ("m3", "fc")])
    assert got == {("m1", "conv"): 3, ("m2", "conv"): None, ("m1", "fc"): 1, ("m3", "fc"): None}
    assert all(stored_repeats(store, "p", *matrix) == count for matrix, count in got.items())


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_activations_round_trip_bit_exact_across_shards(store, fmt):
    matrix = relu_matrix(1000, 23)
    key = ActivationKey("probe0", "model0", "features.3", 2)
    manifest = write_activations(store, key, matrix, metadata={"row_policy": "all"}, shard_rows=300, fmt=fmt)
    assert manifest["shape"] == [1000, 23] and len(manifest["parts"]) == 4
    assert is_stored(store, key)
    back = read_activations(store, key)
    assert back.dtype == np.float32 and back.flags.f_contiguous
    np.testing.assert_array_equal(back, matrix)
    np.testing.assert_array_equal(np.vstack(list(iter_shards(store, key))), matrix)
    stored = read_manifest(store, key)
    assert (stored["model_id"], stored["layer"], stored["probe_id"], stored["repeat"]) == (
        "model0", "features.3", "probe0", 2)
    assert stored["row_policy"] == "all" and stored["dtype"] == "float32"


def test_every_part_carries_its_provenance(store):
    from raymatch.store.arrays import decode, table_metadata

    key = ActivationKey("probeP", "modelM", "relu1")
    write_activations(store, key, relu_matrix(50, 4), metadata={"row_policy": "all"}, fmt="parquet")
    part = read_manifest(store, key)["parts"][0]["name"]
    meta = table_metadata(decode(store.read_bytes(f"{key.prefix}/{part}"), "parquet"))
    assert meta["model_id"] == "modelM" and meta["layer"] == "relu1" and meta["probe_id"] == "probeP"
    assert meta["row_policy"] == "all" and meta["dtype"] == "float32" and meta["shape"] == [50, 4]


def test_an_interrupted_write_is_invisible_and_leaves_no_parts(store):
    key = ActivationKey("probe0", "model1", "fc1")
    writer = ActivationWriter(store, key, 5, shard_rows=10)
    writer.append(relu_matrix(35, 5))  # three parts written, no manifest yet
    assert not is_stored(store, key)
    writer.abort()
    assert store.list(key.prefix) == []


def test_local_writes_go_through_a_temporary_name(local_store, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    local_store.write_bytes("x/y.bin", b"1")
    assert seen and seen[0][0].startswith(".tmp-") and seen[0][1] == "y.bin"


def test_a_failed_local_write_leaves_nothing(local_store, monkeypatch):
    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match=r"cannot write 'x/y\.bin'.*No space left"):
        local_store.write_bytes("x/y.bin", b"payload")
    folder = os.path.join(local_store.root, "x")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../../b", "a//b", ".hidden/x", "a/b c", "", "a/-x"])
def test_keys_cannot_escape_the_root(store, bad):
    with pytest.raises(ValueError, match="store key"):
        store.write_bytes(bad, b"x")


@pytest.mark.parametrize("field,value", [("model_id", "../m"), ("layer", "a/b"), ("probe_id", "p q")])
def test_ids_and_layer_names_are_checked(field, value):
    parts = {"probe_id": "p", "model_id": "m", "layer": "l", field: value}
    with pytest.raises(ValueError, match="cannot be used in a store key"):
        ActivationKey(**parts)


def test_factor_is_cached_and_round_trips_exactly(store):
    matrix = relu_matrix(200, 12)
    matrix[:, 3] = 0.0  # a dead neuron
    key = ActivationKey("probe0", "model2", "relu2")
    write_activations(store, key, matrix)
    first = cached_factor(store, key)
    assert store.exists(f"{factor_prefix(key, False)}/_manifest.json")
    second = cached_factor(store, key)  # the stored compact factor, rebuilt from the stored activations
    direct = factor(matrix)
    for name in ("basis", "coords", "live", "norms", "means"):  # the same stored state gives the same factor
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    for value in (first, second):  # and the factor of the array, to rounding
        np.testing.assert_allclose(value.basis, direct.basis, rtol=0, atol=1e-12)
        np.testing.assert_allclose(value.coords, direct.coords, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(value.live, direct.live)
        np.testing.assert_array_equal(value.norms, direct.norms)
        np.testing.assert_array_equal(value.means, direct.means)
        assert (value.n_samples, value.n_neurons, value.centered) == (200, 12, False)


def test_store_pickles_without_live_sessions(store):
    twin = pickle.loads(pickle.dumps(store))
    store.write_bytes("k.bin", b"v")
    assert twin.read_bytes("k.bin") == b"v"
    assert "secret" not in repr(store)


def test_unwritable_local_store_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/raymatch-cannot-write-here"  # root ignores permission bits; /proc refuses
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "store")
    with pytest.raises(StoreError, match="cannot reach"):
        Store(target).check()


def test_missing_bucket_and_wrong_credentials_are_clear_errors(s3_store, moto_endpoint):
    missing = Store("s3://no-such-bucket/x", endpoint_url=moto_endpoint, key="testing-key", secret="testing-secret")
    with pytest.raises(StoreError, match="no-such-bucket") as info:
        missing.check()
    assert "testing-secret" not in str(info.value)


def test_unreachable_endpoint_is_a_clear_error():
    store = Store("s3://bucket/x", endpoint_url="http://127.0.0.1:9", key="k", secret="sshh-secret",
                  storage_options={"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:9") as info:
        store.check()
    assert "sshh-secret" not in str(info.value)


def test_unsupported_scheme_is_refused():
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        Store("gs://bucket/x")


def test_wrong_credentials_are_a_clear_error_without_the_secret(s3_store, moto_endpoint, monkeypatch):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks access keys
    wrong = Store(s3_store.uri, endpoint_url=moto_endpoint, key="AKIAWRONGWRONGWRONG1", secret="wrong-secret-xyz")
    with pytest.raises(StoreError, match="raymatch-test") as info:
        wrong.check()
    assert "wrong-secret-xyz" not in str(info.value)


def test_a_writer_killed_mid_matrix_leaves_nothing_visible(local_store):
    import subprocess
    import sys
    import time

    script = (
        "import sys, time, numpy as np\n"
        "from raymatch.store import Store, ActivationKey, ActivationWriter\n"
        "store = Store(sys.argv[1])\n"
        "writer = ActivationWriter(store, ActivationKey('probe', 'model', 'layer'), 8, shard_rows=10)\n"
        "while True:\n"
        "    writer.append(np.ones((10, 8), np.float32))\n"
        "    time.sleep(0.01)\n"
    )
    key = ActivationKey("probe", "model", "layer")
    process = subprocess.Popen([sys.executable, "-c", script, local_store.root])
    try:
        deadline = time.monotonic() + 60
        while len(local_store.list(key.prefix)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no cleanup runs
        process.wait()
    assert len(local_store.list(key.prefix)) >= 3  # parts were written ...
    assert not is_stored(local_store, key)  # ... but the matrix is not visible
    with pytest.raises(FileNotFoundError):
        read_activations(local_store, key)


def test_a_failed_part_in_the_writer_thread_means_no_manifest(local_store, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    real_write = Store.write_bytes

    def failing(self, key, data):
        if key.endswith("part-00001.arrow"):
            raise StoreError("cannot write: disk full")
        real_write(self, key, data)

    monkeypatch.setattr(Store, "write_bytes", failing)
    key = ActivationKey("probe0", "model9", "relu")
    with ThreadPoolExecutor(max_workers=1) as executor:
        writer = ActivationWriter(local_store, key, 4, shard_rows=10, executor=executor)
        writer.append(relu_matrix(25, 4))
        writer.close()
        with pytest.raises(StoreError, match="disk full"):
            writer.result()
    assert not is_stored(local_store, key)
    writer.abort()
    assert local_store.list(key.prefix) == []
