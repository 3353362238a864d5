"""One study store: a root URI on a local folder or an S3 bucket, one code path for both.

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

#: Requests :meth:`Store.read_many` keeps in flight at once.
READ_MANY_THREADS = 16

_KEY_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")
#: ``s3:/bucket`` or ``file:relative``: a storage scheme without its ``//``, which would read as a local folder.
_MALFORMED_SCHEME = re.compile(r"^(s3|s3a|file|gs|gcs|az|abfs|hdfs|http|https):(?!//)", re.IGNORECASE)


def check_uri(uri: str) -> str:
    """Return ``uri`` if it names a store: a local path, ``file://…`` or ``s3://bucket/…``; else ``ValueError``.

    A scheme missing a slash (``s3:/bucket/x``) is refused rather than read as the local folder ``./s3:/bucket/x``.

    Examples
    --------
    >>> check_uri("s3://bucket/store")
    's3://bucket/store'
    >>> check_uri("s3:/bucket/store")
    Traceback (most recent call last):
    ...
    ValueError: store URI 's3:/bucket/store' is malformed: write s3://bucket/store (two slashes after 's3:')
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"store URI must be a non-empty string; got {uri!r}")
    malformed = _MALFORMED_SCHEME.match(uri)
    if malformed:
        scheme = malformed.group(1)
        rest = uri[len(scheme) + 1:].lstrip("/")
        raise ValueError(f"store URI {uri!r} is malformed: write {scheme}://{rest} "
                         f"(two slashes after {scheme + ':'!r})")
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol not in ("file", "s3"):
        raise ValueError(f"store URI {uri!r}: unsupported scheme {protocol!r} (use a local path, file:// or s3://)")
    return uri


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
    """A study store rooted at ``uri``.

    Parameters
    ----------
    uri : str
        A local path, ``file://…``, or ``s3://bucket/prefix``.
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
    """

    def __init__(self, uri: str, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None, storage_options: dict | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 retries: int | None = None):
        self.uri = check_uri(uri)
        self.endpoint_url = endpoint_url
        self.connect_timeout, self.read_timeout, self.retries = connect_timeout, read_timeout, retries
        options = dict(storage_options or {})
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        self.protocol = protocol
        if protocol == "s3":
            if endpoint_url:
                options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint_url
            if key is not None:
                options["key"] = key
            if secret is not None:
                options["secret"] = secret
            options.setdefault("skip_instance_cache", True)
            # Transient failures (an endpoint restarting, a connection refused or dropped, a throttled request)
            # are retried by botocore with exponential backoff and full jitter: 6 attempts, waiting at most
            # 1 + 2 + 4 + 8 + 16 = 31 s in all, then the call fails (docs/reliability.md, "Faults"). The standard
            # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE variables, or storage_options' config_kwargs, override this.
            config = dict(options.get("config_kwargs") or {})
            if retries is not None:  # the study's own: every call tried retries + 1 times, by botocore alone
                config["retries"] = {"mode": "standard", "total_max_attempts": retries + 1}
            elif not {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):
                config.setdefault("retries", {"mode": "standard", "total_max_attempts": 6})
            for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
                if seconds is not None:
                    config[name] = float(seconds)
            options["config_kwargs"] = config
            # Other processes write to the same bucket: a cached listing would hide their objects from exists().
            options.setdefault("use_listings_cache", False)
            self.root = uri.split("://", 1)[1].strip("/")
            if not self.root:
                raise ValueError(f"store URI {uri!r} names no bucket")
        else:
            path = uri.split("://", 1)[1] if uri.startswith("file://") else uri
            self.root = os.path.abspath(os.path.expanduser(path))
        self._options = options
        self.fs = self._filesystem()

    @classmethod
    def open_existing(cls, uri: str, *, endpoint_url: str | None = None) -> Store:
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
        if self.protocol == "s3" and getattr(self, "retries", None) is not None:
            fs.retries = 1  # one try at s3fs's level: botocore makes the retries + 1 tries
        return fs

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"Store({self.uri!r}{endpoint})"

    @property
    def is_local(self) -> bool:
        """Whether the store is a local folder."""
        return self.protocol == "file"

    def path(self, key: str) -> str:
        """Full filesystem path of ``key`` under the root."""
        return f"{self.root}/{check_key(key)}"

    def _describe(self) -> str:
        return f"store {self.uri}" + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")

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
                folder = os.path.dirname(path)
                os.makedirs(folder, exist_ok=True)
                temporary = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
                try:
                    with open(temporary, "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.replace(temporary, path)
                finally:
                    if os.path.exists(temporary):
                        os.remove(temporary)
            else:
                self.fs.pipe_file(path, bytes(data))  # one PUT (multipart completes atomically too)
        except Exception as error:
            raise self._fail("write", key, error) from None

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
