"""Writing the results tables: appends of the driver, batched by :class:`TableWriter`, and compaction.

The same code serves local stores and S3 stores (the table URI and the delta-rs storage options come from the
store's :class:`~raymatch.store.StoreLocation`). On S3, commits use conditional writes (``PUT`` with
``If-None-Match: *``, delta-rs option ``conditional_put = etag``): of two drivers committing the same table version
one gets ``412 Precondition Failed``, re-reads the log and commits the next version, so concurrent appends lose
nothing.

Only the driver writes (tasks return their rows): :class:`TableWriter` batches rows into a few commits and
compacts what it wrote when closed; :func:`append_rows` commits at once (``runs``, ``models``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping

import pyarrow as pa

from ..store import Store, layout
from .legacy import ensure_current_format
from .reading import open_table, storage_options, table_error, table_uri
from .schema import FILLED_TIME, table_schema, to_table

__all__ = ["TableWriter", "append_rows", "compact_table", "vacuum_table"]

#: Commit attempts before an append gives up (each conflict re-reads the log; appends never conflict).
_COMMIT_RETRIES = 50
#: Appends tried when a commit is refused (see ``_commit``).
_APPEND_ATTEMPTS = 3
#: A table's compaction claim (see :func:`compact_table`), and the age at which a claim counts as abandoned.
_COMPACTION_LOCK = "_raymatch_compaction.lock"
_LOCK_STALE_SECONDS = 3600


def _ensure_table(store: Store, table: str) -> None:
    """Create the (empty) Delta table when it does not exist; a concurrent creator winning the race is fine.

    (``DeltaTable.is_deltatable`` is not used: it holds the GIL while it waits for the store, which stalls an S3
    server running in the same process, such as the tests' moto server.)
    """
    from deltalake import DeltaTable

    if open_table(store, table) is not None:
        return
    if store.is_local:  # the folder first, so that a refusal reads as the operating system's (Permission denied)
        folder = layout.table_prefix(table)
        try:
            os.makedirs(store.path(folder), exist_ok=True)
        except OSError as error:
            raise table_error(store, table, "create", error) from None
    try:
        DeltaTable.create(table_uri(store, table), table_schema(table), mode="ignore",
                          storage_options=storage_options(store))
    except Exception as error:
        if open_table(store, table) is None:  # not another driver's creation winning the race: a real failure
            raise table_error(store, table, "create", error) from None


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
                raise table_error(store, table, "append to", error) from None
        except Exception as error:
            raise table_error(store, table, "append to", error) from None


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
    ensure_current_format(store)
    if data.num_rows:
        _commit(store, table, data)


class TableWriter:
    """Batched appends of the driver: one Delta commit per table per batch, compaction at the end.

    A table's buffer is committed when it holds ``max_rows`` rows or ``max_bytes`` bytes (of Arrow buffers), or
    when ``max_seconds`` have passed since its first row (checked whenever rows are added, and by
    :meth:`flush_due`). Rows are validated when added, and buffered as Arrow tables, not as the dicts given: what
    the writer holds is bounded by ``max_bytes`` per table whatever the rows' widths and however many rows a run
    writes. Usable as a context manager: leaving the block closes the writer (flushing; compacting only when the
    block raised nothing). One thread at a time: the driver's.

    Parameters
    ----------
    store : Store
        The study store (a 0.1.0 store is refused here, with ``ValueError``).
    max_rows : int, default 50_000
        Rows of one table per commit.
    max_seconds : float, default 30.0
        Longest time rows wait in the buffer (as long as rows keep coming).
    max_bytes : int, default 64 MiB
        Bytes of one table's buffer per commit (39,800 ``curves`` rows of 128 and 64 neurons take about 40 MB;
        50,000 rows of 512 + 512 neurons would take 400 MB).
    """

    def __init__(self, store: Store, *, max_rows: int = 50_000, max_seconds: float = 30.0,
                 max_bytes: int = 64 * 2**20):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer; got {max_rows!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer; got {max_bytes!r}")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds >= 0:
            raise ValueError(f"max_seconds must be a number >= 0; got {max_seconds!r}")
        ensure_current_format(store)
        self.store = store
        self.max_rows = max_rows
        self.max_seconds = float(max_seconds)
        self.max_bytes = max_bytes
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

    def pending_bytes(self, table: str | None = None) -> int:
        """Bytes of the Arrow buffers of the rows not yet committed (of ``table``, or of all tables)."""
        tables = [table] if table is not None else list(self._buffers)
        return sum(part.nbytes for name in tables for part in self._buffers.get(name, []))

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
        if self.pending(table) >= self.max_rows or self.pending_bytes(table) >= self.max_bytes:
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
            raise table_error(store, table, "lock", error) from None
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
    if open_table(store, table) is None:
        return {}
    token = _acquire_compaction(store, table)
    if token is None:
        return {}
    try:
        delta = open_table(store, table)  # the latest version, now that no other compaction runs
        return delta.optimize.compact(writer_properties=_writer_properties())
    except Exception as error:
        raise table_error(store, table, "compact", error) from None
    finally:
        _release_compaction(store, table, token)


def vacuum_table(store: Store, table: str, *, retention_hours: int = 168, dry_run: bool = False) -> list[str]:
    """Delete the files of ``table`` that no version younger than ``retention_hours`` uses; returns them.

    Files replaced by compaction stay until then, so that readers of a recent version (another driver, a
    running query) never lose a file. ``retention_hours`` below delta-rs's default of 168 is allowed: use it
    only when no other process reads or writes the table.
    """
    delta = open_table(store, table)
    if delta is None:
        return []
    try:
        return delta.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
    except Exception as error:
        raise table_error(store, table, "vacuum", error) from None
