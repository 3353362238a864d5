"""One study store: a root on a local folder or an S3 bucket (its :class:`StoreLocation`), one code path for both.

Every object is written whole: locally to a temporary name in the same folder and then renamed,
on S3 with a single PUT (an object is never visible half-written). Keys are relative, ``/``-separated
and restricted to a safe alphabet, so ids and layer names cannot escape the store root.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .location import StoreLocation

#: Requests :meth:`Store.read_many` keeps in flight at once.
READ_MANY_THREADS = 16

_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")


class StoreError(OSError):
    """A store that cannot be reached, read or written (the message names the store, never secrets)."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError`` naming it.

    A key is ``/``-separated parts of letters, digits and ``_ . = + -``, none starting with ``.``
    or ``-`` (so no ``..``, no hidden names, no absolute paths, no escape from the root).
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"store key must be a non-empty string; got {key!r}")
    parts = key.split("/")
    bad = [part for part in parts if not _KEY_PART.match(part)]
    if bad:
        raise ValueError(f"store key {key!r} has an unsafe part {bad[0]!r} (allowed: letters, digits, _ . = + -)")
    return key


def check_name(name: str, what: str) -> str:
    """Validate one key part (an id, a layer name) and return it."""
    if not isinstance(name, str) or "/" in name or not _KEY_PART.match(name):
        raise ValueError(f"{what} {name!r} cannot be used in a store key (allowed: letters, digits, _ . = + -)")
    return name


class Store:
    """A study store at a :class:`~raymatch.store.location.StoreLocation` (or a URI and its settings).

    Parameters
    ----------
    uri : str or StoreLocation
        A local path, ``file://…``, or ``s3://bucket/prefix``; or a location, which holds every setting below
        (then none may be given here).
    endpoint_url, key, secret : str, optional
        S3 endpoint and credentials; by default the standard AWS environment and config apply.
        Passed explicitly, they travel with the store (to Ray workers, whose environment may differ).
    storage_options : dict, optional
        Further fsspec options for the filesystem.
    connect_timeout, read_timeout : float, optional
        Seconds an S3 request waits to connect, and for an answer (default: s3fs's 5 and 15); also the
        results tables' ``connect_timeout`` and request ``timeout`` (default there: 5 and 30).
    retries : int, optional
        Retries of a failed S3 request: each call is tried ``retries + 1`` times in all by botocore (s3fs's own
        repetition of timed-out calls is then off), and results-table requests retry ``retries`` times. Default:
        botocore 6 tries (``AWS_MAX_ATTEMPTS`` overrides), s3fs up to 5 on a timeout, tables 20 within 60 s.

    Raises
    ------
    StoreURIError
        A ``ValueError``: the URI names no store (``s3:/x``, ``file://host/x``, ``gs://x`` …).
    """

    def __init__(self, uri: str | StoreLocation, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None, storage_options: dict | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 retries: int | None = None):
        if isinstance(uri, StoreLocation):
            given = (endpoint_url, key, secret, storage_options, connect_timeout, read_timeout, retries)
            if any(value is not None for value in given):
                raise TypeError("Store(location): the location holds the settings; give none beside it")
            self.location = uri
        else:
            self.location = StoreLocation.from_uri(
                uri, endpoint_url=endpoint_url, key=key, secret=secret, storage_options=storage_options,
                connect_timeout=connect_timeout, read_timeout=read_timeout, retries=retries)
        # Computed once, here: pickled to Ray workers as is, so a worker's environment cannot change them.
        self._options = self.location.fsspec_options()
        self.fs = self._filesystem()

    @property
    def uri(self) -> str:
        """The store's URI, as given."""
        return self.location.uri

    @property
    def root(self) -> str:
        """The absolute local folder, or ``bucket/prefix``."""
        return self.location.root

    @property
    def protocol(self) -> str:
        """``'file'`` or ``'s3'``."""
        return self.location.scheme

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint given to the store."""
        return self.location.endpoint_url

    @property
    def connect_timeout(self) -> float | None:
        """Seconds an S3 request waits to connect (None: the clients' default)."""
        return self.location.connect_timeout

    @property
    def read_timeout(self) -> float | None:
        """Seconds an S3 request waits for an answer (None: the clients' default)."""
        return self.location.read_timeout

    @property
    def retries(self) -> int | None:
        """Retries of a failed S3 request (None: the clients' default)."""
        return self.location.retries

    @classmethod
    def open_existing(cls, uri: str | StoreLocation, *, endpoint_url: str | None = None) -> Store:
        """A store to read from, which must already exist.

        A local folder that is there, or a bucket that answers (a read-only check). Raises ``ValueError`` or
        :class:`StoreError` with one line naming it.
        """
        store = cls(uri, endpoint_url=endpoint_url)
        if store.is_local:
            if not os.path.isdir(store.root):
                raise ValueError(f"store {uri!r} does not exist (no folder {store.root})")
        else:
            store.check(write=False)
        return store

    # Pickled into Ray workers: rebuild the filesystem there from the options (no live sessions).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["fs"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fs = self._filesystem()

    def _filesystem(self):
        """The fsspec filesystem of the store's options (s3fs repeats no timed-out call when retries are given)."""
        fs = fsspec.filesystem(self.protocol, **self._options)
        if self.protocol == "s3" and self.retries is not None:
            fs.retries = 1  # one try at s3fs's level: botocore makes the retries + 1 tries
        return fs

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"Store({self.uri!r}{endpoint})"

    @property
    def is_local(self) -> bool:
        """Whether the store is a local folder."""
        return self.location.is_local

    def path(self, key: str) -> str:
        """Full filesystem path of ``key`` under the root."""
        return f"{self.root}/{check_key(key)}"

    def url(self, key: str = "") -> str:
        """``key`` (or the root) as other clients name it: a local path, or ``s3://bucket/…``."""
        return self.location.url(self.path(key) if key else self.root)

    def _describe(self) -> str:
        return self.location.describe()

    def _fail(self, action: str, key: str, error: Exception) -> StoreError:
        reason = str(error) or type(error).__name__
        what = f"{key!r} in " if key else ""
        return StoreError(f"cannot {action} {what}{self._describe()}: {reason}")

    def check(self, *, write: bool = True) -> None:
        """Fail early, with one clear error, when the store cannot be reached (or written)."""
        probe = f"_raymatch_probe-{uuid.uuid4().hex}"  # at the root: deleting it leaves no folder behind
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
                if write:
                    self.write_bytes(probe, b"")
                    self.delete(probe)
            else:
                self.fs.ls(self.root.split("/", 1)[0], refresh=True)
                if write:
                    self.write_bytes(probe, b"")
                    self.delete(probe)
        except StoreError:
            raise
        except Exception as error:
            raise self._fail("reach", "", error) from None

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        try:
            return self.fs.exists(self.path(key))
        except Exception as error:
            raise self._fail("check", key, error) from None

    def read_bytes(self, key: str) -> bytes:
        """The object at ``key``; :class:`StoreError` (or FileNotFoundError) when it cannot be read."""
        return self._get(key)

    def _get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except (FileNotFoundError, NotADirectoryError):  # a file where a folder of the key would be: no object
            raise FileNotFoundError(f"{key!r} is not in {self._describe()}") from None
        except Exception as error:
            raise self._fail("read", key, error) from None

    def read_many(self, keys: list[str]) -> list[bytes | None]:
        """The objects at ``keys``, in order, None where there is none; one GET each, several at a time.

        What planning needs for thousands of manifests: on S3 the requests overlap instead of queueing.
        Raises :class:`StoreError` when the store fails.
        """
        def one(key: str) -> bytes | None:
            try:
                return self._get(key)
            except FileNotFoundError:
                return None

        if len(keys) < 2:
            return [one(key) for key in keys]
        with ThreadPoolExecutor(max_workers=min(READ_MANY_THREADS, len(keys))) as pool:
            return list(pool.map(one, keys))

    def write_bytes(self, key: str, data: bytes | memoryview) -> None:
        """Write ``data`` (any bytes-like object) under ``key`` whole: never visible half-written."""
        path = self.path(key)
        try:
            if self.is_local:
                _publish_local(path, data, os.replace)
            else:
                self.fs.pipe_file(path, bytes(data))  # one PUT (multipart completes atomically too)
        except Exception as error:
            raise self._fail("write", key, error) from None

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` whole, only if nothing is stored there; whether it was written.

        Locally a temporary file hard-linked to its name (the link fails if the name exists: atomic, never seen
        half-written); on S3 a conditional PUT (``If-None-Match: *``). An S3-compatible store that ignores the
        condition overwrites instead: two processes creating the same key at the same moment may then both see
        True (a claim, :mod:`raymatch.engine.leases`, then costs duplicated work, never a wrong object).
        """
        path = self.path(key)
        try:
            if not self.is_local:
                self.fs.pipe_file(path, bytes(data), mode="create")
                return True
            _publish_local(path, data, os.link)
            return True
        except FileExistsError:
            return False
        except Exception as error:
            raise self._fail("create", key, error) from None

    def delete(self, key: str) -> None:
        """Delete the object at ``key`` (nothing when it does not exist)."""
        try:
            if self.fs.exists(self.path(key)):
                self.fs.rm(self.path(key), recursive=True)
        except Exception as error:
            raise self._fail("delete", key, error) from None

    def list(self, prefix: str = "") -> list[str]:
        """Keys of the objects under ``prefix`` (recursively), sorted; temporaries excluded."""
        base = self.path(prefix) if prefix else self.root
        try:
            if not self.fs.exists(base):
                return []
            found = self.fs.find(base)
        except Exception as error:
            raise self._fail("list", prefix, error) from None
        start = len(self.root) + 1
        keys = [path[start:] if path.startswith(self.root + "/") else path for path in found]
        return sorted(k for k in keys if not any(part.startswith(".") for part in k.split("/")))

    def write_json(self, key: str, value: Any) -> None:
        """Write ``value`` as JSON (sorted keys), whole, at ``key``."""
        self.write_bytes(key, json.dumps(value, sort_keys=True, indent=1).encode())

    def read_json(self, key: str) -> Any:
        """The JSON object at ``key``."""
        return json.loads(self.read_bytes(key))

    def write_table(self, key: str, table: pa.Table, *, compression: str = "zstd") -> None:
        """Write an Arrow table as one Parquet object."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=compression)
        self.write_bytes(key, sink.getvalue())

    def read_table(self, key: str) -> pa.Table:
        """The Parquet table at ``key``."""
        return pq.read_table(io.BytesIO(self.read_bytes(key)))


def _publish_local(path: str, data, publish) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then ``publish(temporary, path)``.

    ``os.replace`` overwrites atomically; ``os.link`` fails with ``FileExistsError`` if ``path`` exists. Either
    way no reader sees a half-written object, and the temporary file is gone afterwards.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        publish(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
