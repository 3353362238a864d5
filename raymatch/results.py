"""Results tables: what pair tasks write, and the ways users read it (pandas, DuckDB SQL, figure data).

Each task writes its rows as ONE Parquet object at ``results/<table>/<task_id>.parquet`` (written whole, so
never visible half-written). The key depends only on the task id: re-running a task replaces its object and
cannot duplicate rows, and tasks with different ids never touch each other's objects. A table is the union of
its objects.

Tables
------
``matches`` (:data:`MATCHES`) — one row per (pair, layer, ε, repeat):

- ``study`` : string — the study the pair belongs to.
- ``population`` : string — ``"trained"`` for the study's models, ``"untrained"`` for the null baseline (the same
  architecture at initialisation, compared with the same pairs policy).
- ``layer`` : string — the layer compared (the same layer name in both networks).
- ``model_a``, ``model_b`` : string — ids of the two networks.
- ``eps`` : float64 — the ε of the maximum match.
- ``repeat`` : int32 — index of the row sample (conv layers are sampled several times; 0 otherwise).
- ``n_samples`` : int64 — number of samples (rows) the activation vectors run over.
- ``n_a``, ``n_b`` : int32 — neurons of each layer, dead ones included.
- ``dead_a``, ``dead_b`` : int32 — dead (numerically zero) neurons of each layer.
- ``size_a``, ``size_b`` : int32 — sizes ``|X*|``, ``|Y*|`` of the maximum match.
- ``similarity`` : float64 — ``(|X*| + |Y*|) / (n_a + n_b)``.
- ``max_epsilon`` : float64 — the pair's critical-ε summary: the smallest ε at which every live neuron is matched.
- ``chance`` : float64 — chance ratio ``√(1 − k/d)``, k the larger neuron count and d = ``n_samples``
  (0 when k ≥ d).
- ``neurons_a``, ``neurons_b`` : list<int32> — sorted indices of the matched neurons.
- ``seconds`` : float64 — wall time the task spent on the row.
- ``status`` : string — ``"ok"`` or ``"failed"``.
- ``error`` : string — what went wrong; null when ``status`` is ``"ok"``.
- ``code_version`` : string — version of the code that computed the row.
- ``config_hash`` : string — hash of the study configuration.
- ``created_at`` : timestamp[us, tz=UTC] — when the row was computed.

Identity, ``status`` and provenance are always required. An ``"ok"`` row needs every field except ``error``
(which must be null); a ``"failed"`` row needs ``error`` and may leave the measurements null.

``simple_matches`` (:data:`SIMPLE_MATCHES`) — one row per simple (v-minimal) match found:

- ``study``, ``population``, ``layer``, ``model_a``, ``model_b``, ``eps``, ``repeat`` — as in ``matches``.
- ``match_id`` : int32 — index of the simple match within its (pair, layer, ε, repeat).
- ``neurons_a``, ``neurons_b`` : list<int32> — the neurons of the simple match.
- ``size_a``, ``size_b`` : int32 — their counts.
- ``neuron`` : string — the neuron v it was found for, as ``"<side>:<index>"`` (``"a:17"``).
- ``search_order`` : string — the deletion order used: ``"index"``, or the seed of a random order.
- ``code_version``, ``config_hash``, ``created_at`` — as in ``matches``.

``cka`` (:data:`CKA`) — one row per (pair, layer, repeat):

- ``study``, ``population``, ``layer``, ``model_a``, ``model_b``, ``repeat`` — as in ``matches``.
- ``cka`` : float64 — linear centred kernel alignment of the two layers.
- ``code_version``, ``config_hash``, ``created_at`` — as in ``matches``.

Every field of ``simple_matches`` and ``cka`` is required.

``runs`` (:data:`RUNS`) — one row per run of a study (``results/runs/<run_id>.parquet``):

- ``run_id`` : string — ``<study>.<UTC start time>.<random suffix>``.
- ``study``, ``config_hash``, ``code_version`` — as in ``matches``; ``host`` : string — the driver's host name.
- ``started_at``, ``ended_at`` : timestamp[us, tz=UTC] — ``ended_at`` is null while the run is going (or if its
  driver died).
- ``status`` : string — ``"running"``, ``"succeeded"`` (nothing failed) or ``"failed"``.
- ``computed``, ``skipped``, ``failed`` : int64 — tasks over all stages.
- ``stages`` : string — JSON object: per stage (train, extract, match, simple, cka) its computed, skipped and
  failed counts and seconds.
- ``error`` : string — why the run stopped, when it did not finish; else null.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import numbers
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .store import Store, StoreError, check_name, layout

_INT32 = pa.int32()
_LIST_INT32 = pa.list_(pa.int32())
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _field(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


def _identity(*, with_eps: bool) -> list[pa.Field]:
    fields = [_field("study", pa.string()), _field("population", pa.string()), _field("layer", pa.string()),
              _field("model_a", pa.string()), _field("model_b", pa.string())]
    if with_eps:
        fields.append(_field("eps", pa.float64()))
    fields.append(_field("repeat", _INT32))
    return fields


_PROVENANCE = [_field("code_version", pa.string()), _field("config_hash", pa.string()),
               _field("created_at", _TIMESTAMP)]

MATCHES = pa.schema([
    *_identity(with_eps=True),
    _field("n_samples", pa.int64(), True),
    *(_field(name, _INT32, True) for name in ("n_a", "n_b", "dead_a", "dead_b", "size_a", "size_b")),
    _field("similarity", pa.float64(), True),
    _field("max_epsilon", pa.float64(), True),
    _field("chance", pa.float64(), True),
    _field("neurons_a", _LIST_INT32, True),
    _field("neurons_b", _LIST_INT32, True),
    _field("seconds", pa.float64(), True),
    _field("status", pa.string()),
    _field("error", pa.string(), True),
    *_PROVENANCE,
])

SIMPLE_MATCHES = pa.schema([
    *_identity(with_eps=True),
    _field("match_id", _INT32),
    _field("neurons_a", _LIST_INT32),
    _field("neurons_b", _LIST_INT32),
    _field("size_a", _INT32),
    _field("size_b", _INT32),
    _field("neuron", pa.string()),
    _field("search_order", pa.string()),
    *_PROVENANCE,
])

CKA = pa.schema([
    *_identity(with_eps=False),
    _field("cka", pa.float64()),
    *_PROVENANCE,
])

RUNS = pa.schema([
    _field("run_id", pa.string()),
    _field("study", pa.string()),
    _field("config_hash", pa.string()),
    _field("host", pa.string()),
    _field("code_version", pa.string()),
    _field("started_at", _TIMESTAMP),
    _field("ended_at", _TIMESTAMP, True),
    _field("status", pa.string()),
    _field("computed", pa.int64()),
    _field("skipped", pa.int64()),
    _field("failed", pa.int64()),
    _field("stages", pa.string()),
    _field("error", pa.string(), True),
])

TABLES: dict[str, pa.Schema] = {"matches": MATCHES, "simple_matches": SIMPLE_MATCHES, "cka": CKA, "runs": RUNS}

#: The states of a ``runs`` row: written ``"running"`` when a run starts and replaced when it ends. A run whose
#: driver died stays ``"running"`` for ever: ``raymatch status`` lists them.
RUN_STATUSES = ("running", "succeeded", "failed")

STATUSES = ("ok", "failed")


def _schema(table: str) -> pa.Schema:
    if table not in TABLES:
        raise ValueError(f"unknown results table {table!r} (known: {', '.join(TABLES)})")
    return TABLES[table]


def table_prefix(table: str) -> str:
    """Store prefix under which the objects of ``table`` live (``results/<table>``)."""
    _schema(table)
    return layout.table_prefix(table)


def result_key(table: str, task_id: str) -> str:
    """Deterministic key of one task's object: ``results/<table>/<task_id>.parquet``."""
    _schema(table)
    return layout.result_key(table, check_name(task_id, "task id"))


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_value(field: pa.Field, value, where: str) -> None:
    """Reject values pyarrow would silently alter (floats truncated to ints, naive times taken as UTC)."""
    if pa.types.is_integer(field.type) and not _is_integer(value):
        raise ValueError(f"{where}: field {field.name!r} must be an integer; got {value!r}")
    if pa.types.is_list(field.type):
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise ValueError(f"{where}: field {field.name!r} must be a list of integers; got {value!r}")
        if isinstance(value, np.ndarray):
            if value.ndim != 1 or (value.size and not np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f"{where}: field {field.name!r} must be a 1-d integer array; got dtype "
                                 f"{value.dtype}, shape {value.shape}")
        elif not all(_is_integer(item) for item in value):
            raise ValueError(f"{where}: field {field.name!r} must be a list of integers; got {value!r}")
    if pa.types.is_timestamp(field.type):
        if not isinstance(value, _dt.datetime):
            raise ValueError(f"{where}: field {field.name!r} must be a datetime; got {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: field {field.name!r} must be timezone-aware; got naive {value!r}")


def _check_row(schema: pa.Schema, table: str, row: Mapping, index: int) -> None:
    where = f"{table} row {index}"
    if not isinstance(row, Mapping):
        raise ValueError(f"{where} must be a dict; got {type(row).__name__}")
    unknown = [name for name in row if name not in schema.names]
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (the {table} fields are: {', '.join(schema.names)})")
    for field in schema:
        value = row.get(field.name)
        if value is None:
            if not field.nullable:
                raise ValueError(f"{where}: missing required field {field.name!r}")
            continue
        _check_value(field, value, where)
    if table == "matches":
        _check_status(row, where)
    elif table == "runs" and row["status"] not in RUN_STATUSES:
        raise ValueError(f"{where}: field 'status' must be one of {', '.join(map(repr, RUN_STATUSES))}; "
                         f"got {row['status']!r}")


def _check_status(row: Mapping, where: str) -> None:
    status = row["status"]
    if status not in STATUSES:
        raise ValueError(f"{where}: field 'status' must be one of {', '.join(map(repr, STATUSES))}; got {status!r}")
    if status == "ok":
        if row.get("error") is not None:
            raise ValueError(f"{where}: field 'error' must be null when status is 'ok'; got {row['error']!r}")
        for field in MATCHES:
            if field.name != "error" and row.get(field.name) is None:
                raise ValueError(f"{where}: missing field {field.name!r} (required when status is 'ok')")
    elif not row.get("error"):
        raise ValueError(f"{where}: missing field 'error' (required when status is 'failed')")


def to_table(table: str, rows: list[dict]) -> pa.Table:
    """Validate ``rows`` against the schema of ``table`` and build an Arrow table with exactly that schema.

    Parameters
    ----------
    table : str
        One of :data:`TABLES`.
    rows : list of dict
        One dict per row, keyed by field name. Missing nullable fields become null.

    Returns
    -------
    pyarrow.Table

    Raises
    ------
    ValueError
        For an unknown table, and for a row with an unknown field, a missing required field or a value of the
        wrong type (the message names the row and the field).
    """
    schema = _schema(table)
    if isinstance(rows, Mapping) or not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows must be a list of dicts; got {type(rows).__name__}")
    for index, row in enumerate(rows):
        _check_row(schema, table, row, index)
    columns = []
    for field in schema:
        try:
            columns.append(pa.array([row.get(field.name) for row in rows], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as error:
            raise ValueError(f"{table}: field {field.name!r} cannot be stored as {field.type}: {error}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def write_rows(store: Store, table: str, task_id: str, rows: list[dict]) -> str:
    """Write one task's rows of ``table`` as one Parquet object, replacing any earlier object of that task.

    Parameters
    ----------
    store : Store
        The study store.
    table : str
        ``"matches"``, ``"simple_matches"`` or ``"cka"``.
    task_id : str
        The task's id: letters, digits and ``_ . = + -``, not starting with ``.`` or ``-``. Use an id derived
        from what determines the task's content, so that a rerun replaces the object instead of adding one.
    rows : list of dict
        The rows (see the module docstring for the fields); may be empty.

    Returns
    -------
    str
        The key written: ``results/<table>/<task_id>.parquet``.

    Raises
    ------
    ValueError
        Bad table name or task id, or a row that does not fit the schema (nothing is written).
    StoreError
        The store cannot be written.
    """
    key = result_key(table, task_id)
    store.write_table(key, to_table(table, rows))
    return key


def _result_keys(store: Store, table: str) -> list[str]:
    return [key for key in store.list(table_prefix(table)) if key.endswith(".parquet")]


def _conform(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """``data`` with exactly ``schema``'s columns: missing ones null, extra ones dropped."""
    columns = []
    for field in schema:
        if field.name in data.column_names:
            columns.append(data.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(data.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(None))


def _read_objects(store: Store, keys: list[str]) -> list[pa.Table]:
    """Read the Parquet objects at ``keys``; on S3 in one concurrent batch."""
    if store.is_local or not keys:
        return [store.read_table(key) for key in keys]
    paths = [store.path(key) for key in keys]
    try:
        blobs = store.fs.cat(paths, on_error="raise")
    except Exception as error:
        raise StoreError(f"cannot read results from store {store.uri}: {error or type(error).__name__}") from None
    return [pq.read_table(io.BytesIO(blobs[path])) if path in blobs else store.read_table(key)
            for key, path in zip(keys, paths, strict=True)]


def load_table(store: Store, table: str = "matches", *, study: str | None = None) -> pa.Table:
    """Every object of ``table`` in ``store`` as one Arrow table with the table's schema.

    See :func:`load` for the parameters.
    """
    schema = _schema(table)
    tables = [_conform(part, schema) for part in _read_objects(store, _result_keys(store, table))]
    data = pa.concat_tables(tables) if tables else schema.empty_table()
    if study is not None:
        data = data.filter(pc.equal(data.column("study"), study))
    return data


def load(store: Store, table: str = "matches", *, study: str | None = None) -> pd.DataFrame:
    """Read every task's rows of ``table`` into one DataFrame.

    Parameters
    ----------
    store : Store
        The study store.
    table : str, default ``"matches"``
        ``"matches"``, ``"simple_matches"`` or ``"cka"``.
    study : str, optional
        Keep only the rows of this study.

    Returns
    -------
    pandas.DataFrame
        One column per schema field, in schema order (list fields as arrays of int32, ``created_at`` as
        UTC datetimes); empty, with the same columns, when nothing has been written.
    """
    return load_table(store, table, study=study).to_pandas()


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs the matches columns {', '.join(map(repr, missing))}")


def _ok_rows(matches: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    if "population" in columns and "population" not in matches.columns:  # rows of a single, trained population
        matches = matches.assign(population="trained")
    _require_columns(matches, [*columns, "status"], what)
    return matches.loc[matches["status"] == "ok", columns]


def _in_order_of_appearance(values: pd.Series) -> pd.Categorical:
    return pd.Categorical(values, categories=pd.unique(values), ordered=True)


FIGURE_COLUMNS = ["study", "population", "layer", "eps", "similarity_mean", "similarity_std", "similarity_min",
                  "similarity_max", "chance", "n_pairs"]


def figure_data(matches: pd.DataFrame) -> pd.DataFrame:
    """The paper's figure data: similarity against ε, per layer, over the pairs of a study.

    Only ``"ok"`` rows count. Each pair's repeats are first averaged (one value per pair), then summarised
    over the pairs.

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of the ``matches`` table (as from :func:`load` or :func:`query`).

    Returns
    -------
    pandas.DataFrame
        One row per (study, population, layer, eps) with columns ``study``, ``population`` (``"trained"`` where
        ``matches`` has no such column), ``layer``, ``eps``, ``similarity_mean``,
        ``similarity_std`` (sample standard deviation over pairs; NaN for a single pair), ``similarity_min``,
        ``similarity_max``, ``chance`` (mean chance level) and ``n_pairs``. Studies and layers appear in the
        order they first appear in ``matches``, ε ascending.
    """
    keys = ["study", "population", "layer", "eps"]
    pair = ["model_a", "model_b"]
    rows = _ok_rows(matches, [*keys, *pair, "similarity", "chance"], "figure_data")
    if rows.empty:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in zip(
            FIGURE_COLUMNS, [str, str, str, "float64", *["float64"] * 5, "int64"], strict=True)})
    rows = rows.assign(study=_in_order_of_appearance(rows["study"]), layer=_in_order_of_appearance(rows["layer"]),
                       population=_in_order_of_appearance(rows["population"]))
    per_pair = rows.groupby([*keys, *pair], observed=True, sort=False)[["similarity", "chance"]].mean()
    summary = per_pair.groupby(level=keys, observed=True, sort=True).agg(
        similarity_mean=("similarity", "mean"),
        similarity_std=("similarity", "std"),
        similarity_min=("similarity", "min"),
        similarity_max=("similarity", "max"),
        chance=("chance", "mean"),
        n_pairs=("similarity", "size"),
    ).reset_index()
    for column in ("study", "population", "layer"):
        summary[column] = summary[column].astype(str)
    summary["n_pairs"] = summary["n_pairs"].astype("int64")
    return summary[FIGURE_COLUMNS]


def similarity_column(eps: float) -> str:
    """Name of the ``pair_summary`` column holding the similarity at ``eps``: ``similarity@<eps>``."""
    return f"similarity@{float(eps)!r}"


def pair_summary(matches: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, pair, layer): its maximal ε and its similarity at each ε.

    Only ``"ok"`` rows count; repeats are averaged.

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of the ``matches`` table.

    Returns
    -------
    pandas.DataFrame
        Columns ``study``, ``population``, ``model_a``, ``model_b``, ``layer``, ``max_epsilon``, then one column
        ``similarity@<eps>`` per ε, ascending (see :func:`similarity_column`). Studies and layers in the order
        they first appear in ``matches``, pairs sorted by name.
    """
    keys = ["study", "population", "model_a", "model_b", "layer"]
    rows = _ok_rows(matches, [*keys, "eps", "max_epsilon", "similarity"], "pair_summary")
    if rows.empty:
        return pd.DataFrame({name: pd.Series(dtype=str) for name in keys} | {
            "max_epsilon": pd.Series(dtype="float64")})
    rows = rows.assign(study=_in_order_of_appearance(rows["study"]), layer=_in_order_of_appearance(rows["layer"]))
    max_epsilon = rows.groupby(keys, observed=True)["max_epsilon"].mean()
    similarity = rows.pivot_table(index=keys, columns="eps", values="similarity", aggfunc="mean", observed=True)
    similarity = similarity.reindex(columns=sorted(similarity.columns))
    similarity.columns = [similarity_column(eps) for eps in similarity.columns]
    summary = pd.concat([max_epsilon, similarity], axis=1).sort_index().reset_index()
    for column in ("study", "population", "layer"):
        summary[column] = summary[column].astype(str)
    summary.columns.name = None
    return summary


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _table_glob(store: Store, table: str) -> str:
    location = f"{store.root}/{table_prefix(table)}/*.parquet"
    return location if store.is_local else f"{store.protocol}://{location}"


def connect(store: Store):
    """A DuckDB connection with one view per results table of ``store``.

    Views ``matches``, ``simple_matches``, ``cka`` and ``runs`` read the store's Parquet objects through the store's own
    fsspec filesystem (no DuckDB extension is loaded or downloaded); a table without objects yet is an empty
    view with the table's columns. Times are in UTC.

    Parameters
    ----------
    store : Store
        The study store.

    Returns
    -------
    duckdb.DuckDBPyConnection
    """
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        if not store.is_local:
            con.register_filesystem(store.fs)
        for table, schema in TABLES.items():
            if _result_keys(store, table):
                source = f"read_parquet({_sql_string(_table_glob(store, table))}, union_by_name = true)"
                con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM {source}')
            else:
                con.register(table, schema.empty_table())
    except BaseException:
        con.close()
        raise
    return con


def query(store: Store, sql: str) -> pd.DataFrame:
    """Run one SQL query (DuckDB dialect) over the results tables of ``store``.

    Parameters
    ----------
    store : Store
        The study store.
    sql : str
        The query; it may use the views ``matches``, ``simple_matches``, ``cka`` and ``runs`` (see
        :func:`connect`).

    Returns
    -------
    pandas.DataFrame
        The result (list columns as arrays, timestamps as UTC datetimes).

    Raises
    ------
    ValueError
        The SQL is invalid or fails (the message is DuckDB's).
    StoreError
        The store cannot be listed.
    """
    import duckdb

    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("the SQL query is empty")
    con = connect(store)
    try:
        relation = con.sql(sql)
        return relation.df() if relation is not None else pd.DataFrame()
    except duckdb.Error as error:
        raise ValueError(str(error)) from None
    finally:
        con.close()


def _cell_text(value):
    if isinstance(value, (np.ndarray, list, tuple)):
        return json.dumps(np.asarray(value).tolist())
    return value


FORMATS = ("table", "csv", "json", "parquet")


def format_frame(frame: pd.DataFrame, fmt: str) -> str | bytes:
    """Render a DataFrame for output.

    Parameters
    ----------
    frame : pandas.DataFrame
        The data (the index is dropped).
    fmt : str
        ``"table"`` (aligned text), ``"csv"`` (list cells as JSON arrays), ``"json"`` (one JSON array of
        records; times in ISO 8601, missing values null) or ``"parquet"``.

    Returns
    -------
    str or bytes
        Text, or bytes for ``"parquet"``.
    """
    if fmt == "table":
        if frame.empty:
            return "\n".join(filter(None, ["  ".join(map(str, frame.columns)), "(0 rows)"]))
        return frame.to_string(index=False)
    if fmt == "csv":
        text_frame = frame.copy()
        for name, dtype in text_frame.dtypes.items():
            if pd.api.types.is_object_dtype(dtype):
                text_frame[name] = text_frame[name].map(_cell_text)
        return text_frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", date_format="iso", date_unit="us")
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression="zstd")
        return sink.getvalue()
    raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")


__all__ = [
    "CKA",
    "FIGURE_COLUMNS",
    "FORMATS",
    "MATCHES",
    "RUNS",
    "RUN_STATUSES",
    "SIMPLE_MATCHES",
    "STATUSES",
    "TABLES",
    "connect",
    "figure_data",
    "format_frame",
    "load",
    "load_table",
    "pair_summary",
    "query",
    "result_key",
    "similarity_column",
    "table_prefix",
    "to_table",
    "write_rows",
]
