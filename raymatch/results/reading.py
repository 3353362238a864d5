"""Reading the results tables: the Delta table of each, its data files, lazy pyarrow datasets and column reads.

A table lives under ``results/<table>/`` of the store; its URI, the delta-rs storage options and the pyarrow
filesystem of its scans come from the store's :class:`~raymatch.store.StoreLocation`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from ..store import Store, StoreError, layout
from .legacy import ensure_current_format
from .schema import table_schema

__all__ = ["data_files", "dataset", "open_table", "read_columns", "scan_columns", "storage_options", "table_error",
           "table_uri"]


def storage_options(store: Store) -> dict[str, str]:
    """The delta-rs storage options of ``store``: empty for a local store.

    See :meth:`raymatch.store.StoreLocation.deltalake_storage_options`.
    """
    return store.location.deltalake_storage_options()


def table_uri(store: Store, table: str) -> str:
    """The URI of the Delta table ``table`` of ``store``: a local path or ``s3://bucket/…/results/<table>``."""
    table_schema(table)
    return store.url(layout.table_prefix(table))


def table_error(store: Store, table: str, action: str, error: Exception) -> StoreError:
    """The one-line :class:`StoreError` of ``action`` on ``table`` failing with ``error``."""
    return StoreError(f"cannot {action} results table {table!r} of store {store.uri}: "
                      f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")


def open_table(store: Store, table: str):
    """The ``DeltaTable`` of ``table``, or None when it has not been created yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri(store, table), storage_options=storage_options(store))
    except TableNotFoundError:
        return None
    except Exception as error:
        raise table_error(store, table, "open", error) from None


def data_files(store: Store, table: str) -> list[str]:
    """URIs of the data files of the current version of ``table`` (empty when it does not exist)."""
    delta = open_table(store, table)
    return [] if delta is None else list(delta.file_uris())


def _arrow_filesystem(store: Store, table: str):
    """The table folder on pyarrow's own filesystem (local, or S3 with the store's endpoint and keys).

    deltalake's default (its Rust store behind a Python filesystem) is avoided: a process that scanned through it
    aborts at exit now and then ("terminate called without an active exception").
    """
    from pyarrow import fs as pafs

    return pafs.SubTreeFileSystem(store.path(layout.table_prefix(table)), store.location.pyarrow_filesystem())


def dataset(store: Store, table: str):
    """A lazy pyarrow dataset of the current version of ``table``, or None when the table does not exist.

    Only the Delta log is read here; scanning reads the needed columns of the data files. The dataset has the
    columns of today's schema in its order (a column added since the table was written, such as ``models.name``,
    reads as null in the older rows), then any other stored column.
    """
    delta = open_table(store, table)
    if delta is None:
        return None
    try:
        data = delta.to_pyarrow_dataset(filesystem=_arrow_filesystem(store, table))
        return data.replace_schema(_current_schema(data.schema, table_schema(table)))
    except Exception as error:
        raise table_error(store, table, "read", error) from None


def _current_schema(stored: pa.Schema, current: pa.Schema) -> pa.Schema:
    """``current``'s columns in its order (the stored field where there is one), then the other stored columns."""
    fields = [stored.field(item.name) if item.name in stored.names else item for item in current]
    return pa.schema(fields + [item for item in stored if item.name not in current.names])


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
    data, columns, expression, wanted = _scan(store, table, columns, filters)
    if data is None:
        return wanted.empty_table()
    try:
        result = data.to_table(columns=columns, filter=expression)
    except Exception as error:
        raise table_error(store, table, "read", error) from None
    return result.cast(wanted)


def scan_columns(store: Store, table: str, columns: list[str] | None = None, *, filters: Mapping | None = None,
                 batch_rows: int = 2**16) -> Iterator[pa.RecordBatch]:
    """:func:`read_columns`, a batch of at most ``batch_rows`` rows at a time (nothing when the table is missing).

    For readers of millions of rows that keep less than the rows themselves (the planner's stored pairs): only one
    batch of the scan is in memory at a time.
    """
    data, columns, expression, wanted = _scan(store, table, columns, filters)
    if data is None:
        return
    try:
        for batch in data.to_batches(columns=columns, filter=expression, batch_size=batch_rows,
                                     batch_readahead=2, fragment_readahead=2):  # a few batches ahead, not all
            yield batch.cast(wanted)
    except Exception as error:
        raise table_error(store, table, "read", error) from None


def _scan(store: Store, table: str, columns: list[str] | None, filters: Mapping | None):
    """The dataset (None when the table is missing), columns, filter expression and schema of a column read."""
    schema = table_schema(table)
    columns = list(schema.names) if columns is None else list(columns)
    unknown = [name for name in columns if name not in schema.names]
    if unknown or not columns:
        raise ValueError(f"unknown column {unknown[0] if unknown else None!r} of results table {table!r} "
                         f"(its columns are: {', '.join(schema.names)})")
    expression = _filter(schema, table, filters)
    ensure_current_format(store)
    return dataset(store, table), columns, expression, pa.schema([schema.field(name) for name in columns])
