"""Where a store lives: a URI and its settings, parsed once into a :class:`StoreLocation`.

Every client's options come from the location, here and nowhere else: s3fs/fsspec's (the store's objects),
delta-rs's (the results tables) and pyarrow's filesystem (the scans behind the DuckDB views, which DuckDB reads as
registered Arrow datasets: it opens no store of its own). A bad URI is one :class:`StoreURIError`, whose
``problem`` is what a study file's author reads after ``store.uri:``.

Store URIs:

- a local path (``raymatch-store``, ``/data/store``, ``~/store``), or ``file://`` followed by one
  (``file:///data/store``, ``file://./raymatch-store``, ``file://~/store``);
- ``s3://bucket/prefix``.

``file://tmp/x`` names a *host* ``tmp``, not a folder: it is refused, with ``file:///tmp/x`` as the likely
intent (and ``file://./tmp/x`` for a folder under the working directory).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["SCHEMES", "StoreLocation", "StoreURIError", "check_endpoint", "check_uri", "parse_uri"]

#: The schemes of a store URI (a plain path is ``file``).
SCHEMES = ("file", "s3")

#: ``s3:/bucket`` or ``file:relative``: a storage scheme without its ``//``, which would read as a local folder.
_MALFORMED_SCHEME = re.compile(r"^(s3|s3a|file|gs|gcs|az|abfs|hdfs|http|https):(?!//)", re.IGNORECASE)
#: What may stand between ``file://`` and the first ``/`` of a relative or home path: ``.``, ``..``, ``~user``.
_RELATIVE_START = re.compile(r"^(\.\.?|~[^/]*)$")

Kind = Literal["empty", "credentials", "malformed", "scheme", "bucket", "host", "folder"]


class StoreURIError(ValueError):
    """A URI that names no store.

    Parameters
    ----------
    message : str
        One line naming the URI (never its credentials) and what to write instead.
    kind : str
        What is wrong: ``"empty"``, ``"credentials"`` (a user or password in it), ``"malformed"`` (``s3:/x``),
        ``"scheme"`` (not ``file`` or ``s3``), ``"bucket"`` (``s3://`` without one), ``"host"`` (``file://host/…``)
        or ``"folder"`` (``file://`` without a path).
    problem : str
        The same problem as a study file's author reads it after the field's path (``store.uri: …``).
    """

    def __init__(self, message: str, *, kind: Kind, problem: str):
        super().__init__(message)
        self.kind, self.problem = kind, problem


def _has_user_info(url: str) -> bool:
    """Whether ``url`` holds ``user[:password]@`` before its host (or bucket)."""
    return "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]


def _refuse(uri: str, kind: Kind, what: str, *, got: bool = True) -> StoreURIError:
    """The error of ``uri``: ``store URI '<uri>' <what>``, and ``<what>; got '<uri>'`` as the field's problem."""
    return StoreURIError(f"store URI {uri!r} {what}", kind=kind, problem=f"{what}; got {uri!r}" if got else what)


def _malformed_fix(scheme: str, rest: str) -> tuple[str, str]:
    """What to write for ``<scheme>:<rest>`` (one or no slash after the colon), and why."""
    if scheme.lower() != "file":
        return f"{scheme}://{rest.lstrip('/')}", f"two slashes after {scheme + ':'!r}"
    if rest.startswith("/"):
        return f"file:///{rest.lstrip('/')}", "file:// then the absolute path"
    return f"file://./{rest}", "file:// then the path"


def _local_path(uri: str, rest: str) -> str:
    """The path a ``file://<rest>`` URI names, as written; :class:`StoreURIError` for a host or no path."""
    start = rest.split("/", 1)[0]
    if not rest:
        raise _refuse(uri, "folder", "names no folder")
    if start and not _RELATIVE_START.match(start):
        path = rest.split("/", 1)[1] if "/" in rest else ""
        # file://tmp/x is most likely /tmp/x with a slash missing; file://localhost/x is /x
        tail = (path if start.lower() == "localhost" else f"{start}/{path}").rstrip("/")
        raise _refuse(uri, "host", f"names the host {start!r}, which a local store cannot have: write "
                                   f"file:///{tail} for the folder /{tail}, or file://./{tail} for one under the "
                                   "working directory",
                      got=False)
    return rest


def parse_uri(uri: str) -> tuple[str, str]:
    """The scheme of a store URI and the path it names.

    Parameters
    ----------
    uri : str
        A local path, ``file://…`` or ``s3://bucket/…``.

    Returns
    -------
    tuple of (str, str)
        ``("file", path as written)`` (relative, ``~/…`` or absolute) or ``("s3", "bucket/prefix")``.

    Raises
    ------
    StoreURIError
        The URI names no store (see :class:`StoreURIError` for the kinds).

    Examples
    --------
    >>> parse_uri("file://./store"), parse_uri("/data/store"), parse_uri("s3://bucket/store/")
    (('file', './store'), ('file', '/data/store'), ('s3', 'bucket/store'))
    >>> parse_uri("file:/data/store")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    raymatch.store.location.StoreURIError: store URI 'file:/data/store' is malformed: write file:///data/store ...
    >>> parse_uri("file://tmp/x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    raymatch.store.location.StoreURIError: store URI 'file://tmp/x' names the host 'tmp', ...: write file:///tmp/x ...
    """
    if not isinstance(uri, str) or not uri:
        raise StoreURIError(f"store URI must be a non-empty string; got {uri!r}", kind="empty",
                            problem=f"must be a non-empty string; got {uri!r}")
    if _has_user_info(uri):
        raise StoreURIError("a store URI must not hold a user or password (user:password@…): pass credentials "
                            "through the environment", kind="credentials", problem="holds a user or password")
    malformed = _MALFORMED_SCHEME.match(uri)
    if malformed:
        scheme = malformed.group(1)
        fix, why = _malformed_fix(scheme, uri[len(scheme) + 1:])
        raise StoreURIError(f"store URI {uri!r} is malformed: write {fix} ({why})", kind="malformed",
                            problem=f"malformed: write {fix} ({why})")
    if "://" not in uri:
        return "file", uri
    scheme, rest = uri.split("://", 1)
    if scheme not in SCHEMES:
        what = f"unsupported scheme {scheme!r} (use a local path, file:// or s3://)"
        raise StoreURIError(f"store URI {uri!r}: {what}", kind="scheme", problem=f"{what}; got {uri!r}")
    if scheme == "s3":
        if not rest.strip("/"):
            raise _refuse(uri, "bucket", "names no bucket")
        return "s3", rest.strip("/")
    return "file", _local_path(uri, rest)


def check_uri(uri: str) -> str:
    """Return ``uri`` if it names a store: a local path, ``file://…`` or ``s3://bucket/…``.

    A scheme missing a slash (``s3:/bucket/x``) is refused rather than read as the local folder ``./s3:/bucket/x``,
    and ``file://host/…`` rather than read as the folder ``./host/…``.

    Raises
    ------
    StoreURIError
        A ``ValueError``: the URI names no store.

    Examples
    --------
    >>> check_uri("s3://bucket/store")
    's3://bucket/store'
    >>> check_uri("s3:/bucket/store")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    raymatch.store.location.StoreURIError: store URI 's3:/bucket/store' is malformed: write s3://bucket/store (...)
    """
    parse_uri(uri)
    return uri


def check_endpoint(url: str | None) -> str | None:
    """Return an S3 endpoint URL (or None) if it holds no user or password; else :class:`StoreURIError`."""
    if url is not None and _has_user_info(url):
        raise StoreURIError("an S3 endpoint URL must not hold a user or password: pass credentials through the "
                            "environment", kind="credentials", problem="holds a user or password")
    return url


def _seconds(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class StoreLocation:
    """A store's URI and its settings, parsed once; every client's options are derived from it.

    Build one with :meth:`from_uri`. Nothing is read or written: a location is only where the store is and how it
    is reached. Credentials and further fsspec options are held in ``options`` (left out of the repr and of
    comparisons).

    Attributes
    ----------
    uri : str
        As given.
    scheme : {'file', 's3'}
    path : str
        A local path as written (relative, ``~/…`` or absolute), or ``bucket/prefix``.
    root : str
        The absolute local folder (resolved against the working directory when the location was built), or
        ``bucket/prefix``.
    endpoint_url : str, optional
        The S3 endpoint (default: the standard AWS environment and config).
    connect_timeout, read_timeout : float, optional
        Seconds an S3 request waits to connect and for an answer (default: each client's own).
    retries : int, optional
        Retries of a failed S3 request (default: each client's own).
    shared : bool
        A local folder that every node of a cluster mounts at the same path.
    options : dict
        fsspec options (``key``, ``secret``, ``token``, ``client_kwargs``, ``config_kwargs`` …); read-only.
    """

    uri: str
    scheme: Literal["file", "s3"]
    path: str
    root: str
    endpoint_url: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    retries: int | None = None
    shared: bool = False
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None, storage_options: dict | None = None,
                 connect_timeout: float | None = None, read_timeout: float | None = None,
                 retries: int | None = None, shared: bool = False) -> StoreLocation:
        """Parse ``uri`` and its settings (see :class:`~raymatch.store.Store` for each).

        Raises
        ------
        StoreURIError
            The URI or the endpoint names no store.

        Examples
        --------
        >>> location = StoreLocation.from_uri("s3://bucket/study/", endpoint_url="http://127.0.0.1:9000")
        >>> location.scheme, location.root, location.bucket, location.is_local
        ('s3', 'bucket/study', 'bucket', False)
        >>> StoreLocation.from_uri("file:///data/store").root
        '/data/store'
        """
        scheme, path = parse_uri(uri)
        options = dict(storage_options or {})
        if scheme == "s3":
            check_endpoint(endpoint_url)
            if key is not None:
                options["key"] = key
            if secret is not None:
                options["secret"] = secret
            root = path
        else:
            root = os.path.abspath(os.path.expanduser(path))
        return cls(uri=uri, scheme=scheme, path=path, root=root, endpoint_url=endpoint_url,
                   connect_timeout=_seconds(connect_timeout), read_timeout=_seconds(read_timeout),
                   retries=retries, shared=bool(shared), options=options)

    @property
    def is_local(self) -> bool:
        """Whether the store is a local folder."""
        return self.scheme == "file"

    @property
    def is_relative(self) -> bool:
        """Whether the store is a local folder written as a relative path (``./store``, not ``/…`` or ``~/…``)."""
        return self.is_local and not os.path.isabs(os.path.expanduser(self.path))

    @property
    def bucket(self) -> str | None:
        """The S3 bucket (None for a local store)."""
        return None if self.is_local else self.root.split("/", 1)[0]

    def url(self, path: str) -> str:
        """``path`` (under :attr:`root`) as its clients name it: the path itself locally, ``s3://…`` on S3."""
        return path if self.is_local else f"{self.scheme}://{path}"

    def describe(self) -> str:
        """``store <uri>`` and the endpoint where there is one, for messages (never credentials)."""
        return f"store {self.uri}" + (f" (endpoint {self.endpoint_url})" if self.endpoint_url else "")

    # ------------------------------------------------------------------------------------------ fsspec / s3fs

    def fsspec_options(self) -> dict[str, Any]:
        """The fsspec filesystem options of the store's objects (``fsspec.filesystem(scheme, **options)``).

        On S3: the endpoint and credentials; no instance or listings cache (other processes write to the same
        bucket); botocore's standard retries with backoff, 6 tries (``retries + 1`` where given; without them, the
        ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` variables or ``config_kwargs`` in ``options`` override this);
        the connect and read timeouts where given.
        """
        options = {name: (dict(value) if isinstance(value, dict) else value) for name, value in self.options.items()}
        if self.is_local:
            return options
        if self.endpoint_url:
            options.setdefault("client_kwargs", {})["endpoint_url"] = self.endpoint_url
        options.setdefault("skip_instance_cache", True)
        # Transient failures (an endpoint restarting, a connection refused or dropped, a throttled request) are
        # retried by botocore with exponential backoff and full jitter: 6 attempts, waiting at most
        # 1 + 2 + 4 + 8 + 16 = 31 s in all, then the call fails (docs/reliability.md, "Faults").
        config = dict(options.get("config_kwargs") or {})
        if self.retries is not None:  # the study's own: every call tried retries + 1 times, by botocore alone
            config["retries"] = {"mode": "standard", "total_max_attempts": self.retries + 1}
        elif not {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):
            config.setdefault("retries", {"mode": "standard", "total_max_attempts": 6})
        for name, seconds in (("connect_timeout", self.connect_timeout), ("read_timeout", self.read_timeout)):
            if seconds is not None:
                config[name] = seconds
        options["config_kwargs"] = config
        options.setdefault("use_listings_cache", False)
        return options

    # ------------------------------------------------------------------------------------------ S3 settings

    def _endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def _region(self) -> str:
        region = (self.options.get("client_kwargs") or {}).get("region_name")
        return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def _credentials(self) -> dict[str, str]:
        """Credentials given to the store (``key``, ``secret``, ``token``); empty: the standard AWS environment."""
        return {name: self.options[name] for name in ("key", "secret", "token") if self.options.get(name) is not None}

    def deltalake_storage_options(self) -> dict[str, str]:
        """The delta-rs storage options of the results tables: empty for a local store.

        On S3: the endpoint (``http://`` allowed when the endpoint says so, e.g. a server on 127.0.0.1), the
        credentials given to the store (else delta-rs takes the standard ``AWS_*`` environment variables), the
        region (the store's ``client_kwargs``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``),
        conditional writes for commits, and retries with backoff for up to a minute; ``connect_timeout``,
        ``read_timeout`` (the request ``timeout``) and ``retries`` (``max_retries``) where given.
        """
        if self.is_local:
            return {}
        # A transient outage is waited out as the store's own calls do (up to ~31 s of backoff): object_store's
        # defaults give up after a few seconds.
        options = {"conditional_put": "etag", "max_retries": "20", "retry_timeout": "60s",
                   "backoff_config.init_backoff": "500ms", "backoff_config.max_backoff": "8s"}
        if self.connect_timeout is not None:
            options["connect_timeout"] = f"{round(self.connect_timeout * 1000)}ms"
        if self.read_timeout is not None:
            options["timeout"] = f"{round(self.read_timeout * 1000)}ms"
        if self.retries is not None:
            options["max_retries"] = str(self.retries)
        endpoint = self._endpoint()
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.lower().startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        names = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}
        options.update({names[name]: value for name, value in self._credentials().items()})
        options["AWS_REGION"] = self._region()
        return options

    def pyarrow_filesystem(self):
        """The store on pyarrow's own filesystem (local, or S3 with the store's endpoint, keys and timeouts).

        Paths on it are :attr:`root`-based, as :meth:`raymatch.store.Store.path` gives them.

        Returns
        -------
        pyarrow.fs.FileSystem
        """
        from pyarrow import fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem()
        kwargs: dict[str, Any] = {"region": self._region()}
        endpoint = self._endpoint()
        if endpoint:
            parsed = urlsplit(endpoint)
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            kwargs["scheme"] = parsed.scheme or "https"
        credentials = self._credentials()
        if "key" in credentials:
            kwargs.update(access_key=credentials["key"], secret_key=credentials.get("secret"),
                          session_token=credentials.get("token"))
        for name, seconds in (("connect_timeout", self.connect_timeout), ("request_timeout", self.read_timeout)):
            if seconds is not None:
                kwargs[name] = seconds
        return pafs.S3FileSystem(**kwargs)
