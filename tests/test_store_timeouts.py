"""Store timeouts and retries (issue 15, operations 7): ``store: {timeouts: {connect, read}, retries}``.

An endpoint on 127.0.0.1 that accepts connections and never answers: a store configured with short timeouts and
one retry ends with one clear error within about the configured time (each try waits ``read`` seconds), instead
of the clients' defaults (s3fs: 15 s a try, 6 tries by botocore, each repeated up to 5 times by s3fs).
"""

from __future__ import annotations

import pickle
import socket
import threading
import time

import pytest

from raymatch.results import data_files, storage_options
from raymatch.store import Store, StoreError
from raymatch.study import StudyError

from .conftest import S3_KEY, S3_SECRET
from .test_bad_inputs import ray_starts, run_cli, study, write_study  # noqa: F401 - ray_starts is a fixture

CONNECT, READ, RETRIES = 1.0, 1.0, 1
#: Generous: 4 × the configured time of every try (read × tries), plus 10 s of start-up and backoff.
BOUND = 4 * READ * (RETRIES + 1) + 10


class Silent(threading.Thread):
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.held.append(connection)

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        for connection in self.held:
            connection.close()
        self.server.close()


@pytest.fixture
def silent():
    server = Silent()
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.close()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def _timed(call):
    started = time.monotonic()
    try:
        call()
    except Exception as error:  # the test looks at it
        return error, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.slow
def test_a_store_on_a_silent_endpoint_fails_within_the_configured_time(silent, credentials):
    store = Store("s3://bucket/store", endpoint_url=silent, connect_timeout=CONNECT, read_timeout=READ,
                  retries=RETRIES)
    error, seconds = _timed(lambda: store.check(write=False))
    assert isinstance(error, StoreError), error
    message = str(error)
    assert message.startswith(f"cannot reach store s3://bucket/store (endpoint {silent}): ") and "\n" not in message
    assert "timeout" in message.lower(), message
    assert READ <= seconds < BOUND, seconds
    # the results tables (delta-rs) get the same settings
    error, seconds = _timed(lambda: data_files(store, "curves"))
    assert isinstance(error, StoreError) and "results table 'curves'" in str(error), error
    assert seconds < BOUND, seconds


@pytest.mark.slow
def test_raymatch_run_on_a_silent_endpoint_says_so_in_one_line_before_ray(silent, credentials, tmp_path, capsys,
                                                                          ray_starts):  # noqa: F811
    data = study("s3://bucket/store")
    data["store"].update(endpoint_url=silent, timeouts={"connect": CONNECT, "read": READ}, retries=RETRIES)
    study_file = write_study(tmp_path, data)
    started = time.monotonic()
    code, err = run_cli(capsys, "run", study_file)
    seconds = time.monotonic() - started
    assert code == 2 and ray_starts == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raymatch: error: cannot reach store s3://bucket/store"), err
    assert "timeout" in lines[0].lower(), err
    assert seconds < BOUND, seconds


def test_store_timeouts_and_retries_reach_both_clients(moto_endpoint):
    configured = Store("s3://bucket/store", endpoint_url=moto_endpoint, connect_timeout=2, read_timeout=7.5,
                       retries=3)
    assert configured._options["config_kwargs"] == {"retries": {"mode": "standard", "total_max_attempts": 4},
                                                    "connect_timeout": 2.0, "read_timeout": 7.5}
    assert configured.fs.retries == 1  # s3fs does not repeat botocore's tries ...
    assert pickle.loads(pickle.dumps(configured)).fs.retries == 1  # ... in Ray workers either
    options = storage_options(configured)
    assert (options["connect_timeout"], options["timeout"], options["max_retries"]) == ("2000ms", "7500ms", "3")
    default = storage_options(Store("s3://bucket/store", endpoint_url=moto_endpoint))
    assert "connect_timeout" not in default and "timeout" not in default and default["max_retries"] == "20"


def test_study_store_timeouts_are_checked(tmp_path):
    from raymatch.study import Study

    base = study(str(tmp_path / "store"))
    loaded = Study.from_dict({**base, "store": {"uri": base["store"]["uri"], "timeouts": {"connect": 3, "read": 20},
                                                 "retries": 2}})
    store = loaded.store.open()
    assert (store.connect_timeout, store.read_timeout, store.retries) == (3.0, 20.0, 2)
    assert loaded.config_hash == Study.from_dict(base).config_hash  # how the store is reached changes no row
    defaults = Study.from_dict(base).store
    assert (defaults.timeouts.connect, defaults.timeouts.read, defaults.retries) == (None, None, None)
    with pytest.raises(StudyError) as caught:
        Study.from_dict({**base, "store": {"uri": base["store"]["uri"], "timeouts": {"connect": 0, "read": "x",
                                                                                     "write": 1}, "retries": -1}})
    problems = "\n".join(caught.value.problems)
    for needle in ("store.timeouts.connect: must be a positive number", "store.timeouts.read: must be a positive",
                   "store.timeouts.write: unknown key", "store.retries: must be a non-negative integer"):
        assert needle in problems, problems
