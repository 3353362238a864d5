"""Delta Lake IO of the results tables: one Delta table per table under ``results/<table>/`` of the store.

The same code serves local stores and S3 stores: the table URI and the delta-rs storage options come from the
:class:`~raymatch.store.Store`. On S3, commits use conditional writes (``PUT`` with ``If-None-Match: *``,
delta-rs option ``conditional_put = etag``): of two drivers committing the same table version one gets
``412 Precondition Failed``, re-reads the log and commits the next version, so concurrent appends lose nothing.

Only the driver writes (tasks return their rows): :class:`TableWriter` batches rows into a few commits and
compacts what it wrote when closed; :func:`append_rows` commits at once (``runs``, ``models``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from ..store import Store, StoreError, layout
from .schema import FILLED_TIME, TABLES, table_schema, to_table

#: Tables of a 0.1.0 store that this version no longer has (``matches`` is now a view of ``curves``).
_LEGACY_TABLES = ("matches", "cka")
#: Name of a Delta table's log folder.
_DELTA_LOG = "_delta_log"
#: Commit attempts before an append gives up (each conflict re-reads the log; appends never conflict).
_COMMIT_RETRIES = 50
#: Appends tried when a commit is refused (see ``_commit``).
_APPEND_ATTEMPTS = 3
#: A table's compaction claim (see :func:`compact_table`), and the age at which a claim counts as abandoned.
_COMPACTION_LOCK = "_raymatch_compaction.lock"
_LOCK_STALE_SECONDS = 3600


def storage_options(store: Store) -> dict[str, str]:
    """The delta-rs storage options of ``store``: empty for a local store.

    On S3: the store's endpoint (``http://`` allowed when the endpoint says so, e.g. a server on 127.0.0.1),
    credentials passed to the store (else delta-rs takes the standard ``AWS_*`` environment variables), the
    region (``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``), conditional writes for commits, and
    retries with backoff for up to a minute; the store's ``connect_timeout``, ``read_timeout`` (the request
    ``timeout``) and ``retries`` (``max_retries``) where given.
    """
    if store.is_local:
        return {}
    # conditional writes for commits; and a transient outage is waited out as the store's own calls do (up to
    # ~31 s of backoff, raymatch.store.Store): object_store's defaults give up after a few seconds.
    options = {"conditional_put": "etag", "max_retries": "20", "retry_timeout": "60s",
               "backoff_config.init_backoff": "500ms", "backoff_config.max_backoff": "8s"}
    # the study's store timeouts and retries (store: {timeouts: {connect, read}, retries}), where given
    if getattr(store, "connect_timeout", None) is not None:
        options["connect_timeout"] = f"{round(store.connect_timeout * 1000)}ms"
    if getattr(store, "read_timeout", None) is not None:
        options["timeout"] = f"{round(store.read_timeout * 1000)}ms"
    if getattr(store, "retries", None) is not None:
        options["max_retries"] = str(store.retries)
    endpoint = store.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.lower().startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    fs = store.fs  # s3fs keeps the credentials and client settings the store was opened with
    for option, value in (("AWS_ACCESS_KEY_ID", getattr(fs, "key", None)),
                          ("AWS_SECRET_ACCESS_KEY", getattr(fs, "secret", None)),
                          ("AWS_SESSION_TOKEN", getattr(fs, "token", None))):
        if value is not None:
            options[option] = value
    region = (getattr(fs, "client_kwargs", None) or {}).get("region_name")
    options["AWS_REGION"] = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
        or "us-east-1"
    return options


def table_uri(store: Store, table: str) -> str:
    """The URI of the Delta table ``table`` of ``store``: a local path or ``s3://bucket/…/results/<table>``."""
    table_schema(table)
    path = store.path(layout.table_prefix(table))
    return path if store.is_local else f"{store.protocol}://{path}"


def _results_root() -> str:
    return posixpath.dirname(layout.table_prefix("curves"))


def _children(store: Store, key: str) -> list[str]:
    """Names directly under ``key`` (one listing request on S3); empty when there is nothing."""
    try:
        entries = store.fs.ls(store.path(key), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    except Exception as error:
        raise StoreError(f"cannot list {key!r} in store {store.uri}: {error or type(error).__name__}") from None
    return sorted({posixpath.basename(str(entry).rstrip("/")) for entry in entries})


def _is_legacy_table(store: Store, key: str, name: str) -> bool:
    """Whether the folder ``key`` holds 0.1.0 task objects (``<task id>.parquet``, no Delta log)."""
    if name not in _LEGACY_TABLES and store.exists(f"{key}/{_DELTA_LOG}"):
        return False
    names = _children(store, key)
    if name in _LEGACY_TABLES:
        return any(n.endswith(".parquet") for n in names)
    return any(n.endswith(".parquet") and not n.startswith("part-") for n in names)


def check_store_version(store: Store) -> None:
    """Refuse a store whose results were written by raymatch 0.1.0 (one Parquet object per task).

    A few listing requests: the ``results/`` folder, and the table folders without a Delta log.

    Raises
    ------
    ValueError
        One line naming the store, saying that it was written by raymatch 0.1.0 and what to do.
    StoreError
        The store cannot be listed.
    """
    root = _results_root()
    legacy = [f"{root}/{name}" for name in _children(store, root) if _is_legacy_table(store, f"{root}/{name}", name)]
    if legacy:
        results = store.path(root) if store.is_local else f"{store.protocol}://{store.path(root)}"
        raise ValueError(
            f"store {store.uri} was written by raymatch 0.1.0 (one Parquet object per task in {', '.join(legacy)}): "
            f"its rows hold matches at its ε grid only, with no ε-curves, and this version cannot read them; rerun "
            f"the study into a new store, or delete {results} to recompute the results from the stored activations "
            f"and factors")


def _store_error(store: Store, table: str, action: str, error: Exception) -> StoreError:
    return StoreError(f"cannot {action} results table {table!r} of store {store.uri}: "
                      f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")


def _open(store: Store, table: str):
    """The ``DeltaTable`` of ``table``, or None when it has not been created yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri(store, table), storage_options=storage_options(store))
    except TableNotFoundError:
        return None
    except Exception as error:
        raise _store_error(store, table, "open", error) from None


def _ensure_table(store: Store, table: str) -> None:
    """Create the (empty) Delta table when it does not exist; a concurrent creator winning the race is fine.

    (``DeltaTable.is_deltatable`` is not used: it holds the GIL while it waits for the store, which stalls an S3
    server running in the same process, such as the tests' moto server.)
    """
    from deltalake import DeltaTable

    if _open(store, table) is not None:
        return
    if store.is_local:  # the folder first, so that a refusal reads as the operating system's (Permission denied)
        folder = layout.table_prefix(table)
        try:
            os.makedirs(store.path(folder), exist_ok=True)
        except OSError as error:
            raise _store_error(store, table, "create", error) from None
    try:
        DeltaTable.create(table_uri(store, table), table_schema(table), mode="ignore",
                          storage_options=storage_options(store))
    except Exception as error:
        if _open(store, table) is None:  # not another driver's creation winning the race: a real failure
            raise _store_error(store, table, "create", error) from None


def _writer_properties():
    """Parquet settings of every data file."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD")


def _fill_times(table: str, rows: Iterable[Mapping]) -> list[dict]:
    """Copies of ``rows`` with the table's time column set to now (UTC) where missing."""
    column = FILLED_TIME[table]
    now = _dt.datetime.now(_dt.timezone.utc)
    filled = []
    for row in rows:
        if isinstance(row, Mapping) and row.get(column) is None:
            row = {**row, column: now}
        filled.append(row)
    return filled


def _prepare(table: str, rows: list[dict]) -> pa.Table:
    table_schema(table)
    if isinstance(rows, Mapping) or not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows must be a list of dicts; got {type(rows).__name__}")
    return to_table(table, _fill_times(table, rows))


def _commit(store: Store, table: str, data: pa.Table, *, ensure: bool = True) -> None:
    """One Delta append of ``data``.

    delta-rs retries a commit that lost the race for a version (appends never conflict with appends). A commit
    refused outright (a racing driver's creation of the table committed its metadata meanwhile) committed
    nothing, so it is tried again, twice at most. A nullable column added to a table's schema since the table was
    created (``models.epoch``) is added to it by the append (``schema_mode='merge'``); older rows read it as null.
    """
    from deltalake import CommitProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    if ensure:
        _ensure_table(store, table)
    for attempt in range(_APPEND_ATTEMPTS):
        try:
            write_deltalake(table_uri(store, table), data, mode="append", storage_options=storage_options(store),
                            schema_mode="merge",
                            commit_properties=CommitProperties(max_commit_retries=_COMMIT_RETRIES),
                            writer_properties=_writer_properties())
            return
        except CommitFailedError as error:
            if attempt == _APPEND_ATTEMPTS - 1:
                raise _store_error(store, table, "append to", error) from None
        except Exception as error:
            raise _store_error(store, table, "append to", error) from None


def append_rows(store: Store, table: str, rows: list[dict]) -> None:
    """Validate ``rows`` and append them to ``table`` in one commit (nothing for no rows).

    For tables written a row at a time (``runs``, ``models``); the pair stages use :class:`TableWriter`.

    Parameters
    ----------
    store : Store
        The study store.
    table : str
        One of :data:`~raymatch.results.TABLES`.
    rows : list of dict
        The rows; ``created_at`` (``updated_at`` for ``runs``) is set to now when missing.

    Raises
    ------
    ValueError
        Unknown table, a row that does not fit the schema (nothing is written), or a 0.1.0 store.
    StoreError
        The store cannot be written.
    """
    data = _prepare(table, rows)
    check_store_version(store)
    if data.num_rows:
        _commit(store, table, data)


class TableWriter:
    """Batched appends of the driver: one Delta commit per table per batch, compaction at the end.

    A table's buffer is committed when it holds ``max_rows`` rows, or when ``max_seconds`` have passed since its
    first row (checked whenever rows are added, and by :meth:`flush_due`). Rows are validated when added.
    Usable as a context manager: leaving the block closes the writer (flushing; compacting only when the block
    raised nothing). One thread at a time: the driver's.

    Parameters
    ----------
    store : Store
        The study store (a 0.1.0 store is refused here, with ``ValueError``).
    max_rows : int, default 50_000
        Rows of one table per commit.
    max_seconds : float, default 30.0
        Longest time rows wait in the buffer (as long as rows keep coming).
    """

    def __init__(self, store: Store, *, max_rows: int = 50_000, max_seconds: float = 30.0):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer; got {max_rows!r}")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds >= 0:
            raise ValueError(f"max_seconds must be a number >= 0; got {max_seconds!r}")
        check_store_version(store)
        self.store = store
        self.max_rows = max_rows
        self.max_seconds = float(max_seconds)
        self._buffers: dict[str, list[pa.Table]] = {}
        self._since: dict[str, float] = {}
        self._written: dict[str, int] = {}
        self._commits = 0
        self._closed = False

    @property
    def written(self) -> dict[str, int]:
        """Rows committed so far, per table."""
        return dict(self._written)

    @property
    def commits(self) -> int:
        """Delta commits made so far (appends; compactions not counted)."""
        return self._commits

    def pending(self, table: str | None = None) -> int:
        """Rows buffered and not yet committed (of ``table``, or of all tables)."""
        tables = [table] if table is not None else list(self._buffers)
        return sum(part.num_rows for name in tables for part in self._buffers.get(name, []))

    def add(self, table: str, rows: list[dict]) -> None:
        """Buffer ``rows`` of ``table`` (validated now; ``created_at`` filled in); commit buffers that are due.

        Raises
        ------
        ValueError
            Unknown table, a row that does not fit the schema (none of ``rows`` is buffered), or a closed writer.
        StoreError
            A commit failed (the rows stay buffered for the next flush).
        """
        if self._closed:
            raise ValueError("this TableWriter is closed")
        data = _prepare(table, rows)
        if data.num_rows:
            self._buffers.setdefault(table, []).append(data)
            self._since.setdefault(table, time.monotonic())
        if self.pending(table) >= self.max_rows:
            self._flush_table(table)
        self.flush_due()

    def flush_due(self) -> None:
        """Commit every buffer whose first row waited ``max_seconds`` or more."""
        now = time.monotonic()
        for table in [name for name, since in self._since.items() if now - since >= self.max_seconds]:
            self._flush_table(table)

    def _flush_table(self, table: str) -> None:
        parts = self._buffers.get(table)
        if not parts:
            self._since.pop(table, None)
            return
        data = pa.concat_tables(parts)
        # On failure the buffer stays: nothing is lost before a retry.
        _commit(self.store, table, data, ensure=table not in self._written)
        self._buffers.pop(table, None)
        self._since.pop(table, None)
        self._written[table] = self._written.get(table, 0) + data.num_rows
        self._commits += 1

    def flush(self) -> None:
        """Commit every buffered row (one commit per table)."""
        for table in list(self._buffers):
            self._flush_table(table)

    def close(self, *, compact: bool = True) -> None:
        """Flush, then compact the tables this writer wrote (thousands of tasks end as a few files).

        Closing twice does nothing more.
        """
        if self._closed:
            return
        self.flush()
        self._closed = True
        if compact:
            for table in self._written:
                compact_table(self.store, table)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(compact=exc_type is None)


def _lock_key(table: str) -> str:
    return f"{layout.table_prefix(table)}/{_COMPACTION_LOCK}"


def _lock_is_stale(store: Store, key: str) -> bool:
    try:
        created = json.loads(store.read_bytes(key)).get("created")
    except FileNotFoundError:
        return True  # released meanwhile
    except (ValueError, AttributeError):
        return False  # being written (a local lock is created in place)
    return not isinstance(created, (int, float)) or time.time() - created > _LOCK_STALE_SECONDS


def _acquire_compaction(store: Store, table: str) -> str | None:
    """Claim the compaction of ``table`` (an object created only if absent); None when another process holds it."""
    key, token = _lock_key(table), uuid.uuid4().hex
    body = json.dumps({"owner": token, "host": socket.gethostname(), "created": time.time()}).encode()
    for attempt in range(2):
        try:
            store.fs.pipe_file(store.path(key), body, mode="create")
            return token
        except FileExistsError:
            if attempt or not _lock_is_stale(store, key):
                return None
            store.delete(key)  # left by a driver killed while compacting
        except Exception as error:
            raise _store_error(store, table, "lock", error) from None
    return None


def _release_compaction(store: Store, table: str, token: str) -> None:
    key = _lock_key(table)
    try:
        if json.loads(store.read_bytes(key)).get("owner") == token:
            store.delete(key)
    except (FileNotFoundError, ValueError, AttributeError):
        pass


def compact_table(store: Store, table: str) -> dict:
    """Rewrite the small files of ``table`` into few large ones (``optimize.compact``).

    Readers of older versions keep working: the replaced files stay until :func:`vacuum_table` removes them.
    One process compacts a table at a time (delta-rs 1.6.6 lets two concurrent compactions of the same files
    both commit, which stores their rows twice): while another process holds the table's compaction claim
    (``_raymatch_compaction.lock`` in the table's folder, created with a conditional write; a claim older than an
    hour is taken over), this returns ``{}`` without compacting. Also ``{}`` when the table does not exist.

    Returns
    -------
    dict
        delta-rs's compaction metrics (``numFilesAdded``, ``numFilesRemoved``, …), or ``{}``.
    """
    if _open(store, table) is None:
        return {}
    token = _acquire_compaction(store, table)
    if token is None:
        return {}
    try:
        delta = _open(store, table)  # the latest version, now that no other compaction runs
        return delta.optimize.compact(writer_properties=_writer_properties())
    except Exception as error:
        raise _store_error(store, table, "compact", error) from None
    finally:
        _release_compaction(store, table, token)


def vacuum_table(store: Store, table: str, *, retention_hours: int = 168, dry_run: bool = False) -> list[str]:
    """Delete the files of ``table`` that no version younger than ``retention_hours`` uses; returns them.

    Files replaced by compaction stay until then, so that readers of a recent version (another driver, a
    running query) never lose a file. ``retention_hours`` below delta-rs's default of 168 is allowed: use it
    only when no other process reads or writes the table.
    """
    delta = _open(store, table)
    if delta is None:
        return []
    try:
        return delta.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
    except Exception as error:
        raise _store_error(store, table, "vacuum", error) from None


def data_files(store: Store, table: str) -> list[str]:
    """URIs of the data files of the current version of ``table`` (empty when it does not exist)."""
    delta = _open(store, table)
    return [] if delta is None else list(delta.file_uris())


def _arrow_filesystem(store: Store, table: str):
    """The table folder on pyarrow's own filesystem (local, or S3 with the store's endpoint and keys).

    deltalake's default (its Rust store behind a Python filesystem) is avoided: a process that scanned through it
    aborts at exit now and then ("terminate called without an active exception").
    """
    from pyarrow import fs as pafs

    if store.is_local:
        base = pafs.LocalFileSystem()
    else:
        options = storage_options(store)
        kwargs = {"region": options["AWS_REGION"]}
        endpoint = options.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlsplit(endpoint)
            kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
            kwargs["scheme"] = parsed.scheme or "https"
        if "AWS_ACCESS_KEY_ID" in options:
            kwargs.update(access_key=options["AWS_ACCESS_KEY_ID"], secret_key=options["AWS_SECRET_ACCESS_KEY"],
                          session_token=options.get("AWS_SESSION_TOKEN"))
        for name, seconds in (("connect_timeout", getattr(store, "connect_timeout", None)),
                              ("request_timeout", getattr(store, "read_timeout", None))):
            if seconds is not None:
                kwargs[name] = float(seconds)
        base = pafs.S3FileSystem(**kwargs)
    return pafs.SubTreeFileSystem(store.path(layout.table_prefix(table)), base)


def dataset(store: Store, table: str):
    """A lazy pyarrow dataset of the current version of ``table``, or None when the table does not exist.

    Only the Delta log is read here; scanning reads the needed columns of the data files.
    """
    delta = _open(store, table)
    if delta is None:
        return None
    try:
        return delta.to_pyarrow_dataset(filesystem=_arrow_filesystem(store, table))
    except Exception as error:
        raise _store_error(store, table, "read", error) from None


def _filter(schema: pa.Schema, table: str, filters: Mapping | None):
    if not filters:
        return None
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a dict of column -> value; got {type(filters).__name__}")
    expression = None
    for name, value in filters.items():
        if name not in schema.names:
            raise ValueError(f"unknown column {name!r} of results table {table!r} "
                             f"(its columns are: {', '.join(schema.names)})")
        field = pc.field(name)
        if isinstance(value, (list, tuple, set, frozenset)):
            term = field.isin(pa.array(list(value), type=schema.field(name).type))
        elif value is None:
            term = field.is_null()
        else:
            term = field == pa.scalar(value, type=schema.field(name).type)
        expression = term if expression is None else expression & term
    return expression


def read_columns(store: Store, table: str, columns: list[str] | None = None, *,
                 filters: Mapping | None = None) -> pa.Table:
    """The named columns of the stored rows of ``table`` (every appended row: duplicates are not removed).

    Reads the Delta log and, from the data files, only the named and filtered columns (row groups that the
    filters exclude are skipped): one scan for planning, never a request per task.

    Parameters
    ----------
    store : Store
        The study store.
    table : str
        One of :data:`~raymatch.results.TABLES`.
    columns : list of str, optional
        The columns to read, in this order; all columns by default.
    filters : dict, optional
        ``{column: value}`` keeps the rows equal to ``value`` (a list, tuple or set: any of its values;
        None: null) in every named column.

    Returns
    -------
    pyarrow.Table
        With the table's types for these columns; empty (same columns) when the table does not exist yet.

    Raises
    ------
    ValueError
        Unknown table or column, or a 0.1.0 store.
    StoreError
        The store cannot be read.
    """
    schema = table_schema(table)
    columns = list(schema.names) if columns is None else list(columns)
    unknown = [name for name in columns if name not in schema.names]
    if unknown or not columns:
        raise ValueError(f"unknown column {unknown[0] if unknown else None!r} of results table {table!r} "
                         f"(its columns are: {', '.join(schema.names)})")
    expression = _filter(schema, table, filters)
    check_store_version(store)
    data = dataset(store, table)
    wanted = pa.schema([schema.field(name) for name in columns])
    if data is None:
        return wanted.empty_table()
    try:
        result = data.to_table(columns=columns, filter=expression)
    except Exception as error:
        raise _store_error(store, table, "read", error) from None
    return result.cast(wanted)


__all__ = [
    "TABLES",
    "TableWriter",
    "append_rows",
    "check_store_version",
    "compact_table",
    "data_files",
    "dataset",
    "read_columns",
    "storage_options",
    "table_uri",
    "vacuum_table",
]
