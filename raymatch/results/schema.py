"""The schemas of the stored results tables and of the views, and the validation of rows before they are written.

Stored tables (:data:`TABLES`): ``curves``, ``simple_matches``, ``runs``, ``models``, ``tasks``, ``cross_curves``,
and the standard measures' ``measures`` and ``neurons`` (their schemas: :mod:`raymatch.results.measure_schema`). Views
(:data:`VIEWS`, built by :func:`raymatch.results.connect`) have the columns of :data:`VIEW_COLUMNS`; ``matches``
has exactly the columns of :data:`MATCHES` and ``cka`` those of :data:`CKA`.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from ..config import is_integer, is_number
from .measure_schema import MEASURE_ROWS, NEURON_ROWS, NEURONS, UNIVERSAL_NEURONS

_INT32 = pa.int32()
_LIST_INT32 = pa.list_(pa.int32())
_LIST_FLOAT64 = pa.list_(pa.float64())
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _field(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


#: The models' names that the views put beside their ids (``models.name``, else the id).
_NAMES = [_field("name_a", pa.string()), _field("name_b", pa.string())]


def _pair_identity(*, with_eps: bool, names: bool = False) -> list[pa.Field]:
    fields = [_field("study", pa.string()), _field("population", pa.string()), _field("layer", pa.string()),
              _field("model_a", pa.string()), _field("model_b", pa.string()), *(_NAMES if names else [])]
    if with_eps:
        fields.append(_field("eps", pa.float64()))
    fields.append(_field("repeat", _INT32))
    return fields


_PROVENANCE = [_field("code_version", pa.string()), _field("config_hash", pa.string()),
               _field("created_at", _TIMESTAMP)]

#: ``curves``: one row per (pair, layer, repeat), the pair's ε-curve (every neuron's critical ε).
CURVES = pa.schema([
    _field("study", pa.string()),
    _field("population", pa.string()),
    _field("layer", pa.string()),
    _field("repeat", _INT32),
    _field("model_a", pa.string()),
    _field("model_b", pa.string()),
    _field("probe_id", pa.string()),
    _field("config_hash", pa.string()),
    _field("code_version", pa.string()),
    _field("n_samples", pa.int64(), True),
    *(_field(name, _INT32, True) for name in ("n_a", "n_b", "dead_a", "dead_b")),
    _field("critical_a", _LIST_FLOAT64, True),
    _field("critical_b", _LIST_FLOAT64, True),
    _field("exact_tol", pa.float64(), True),
    _field("max_epsilon", pa.float64(), True),
    _field("chance", pa.float64(), True),
    _field("cka", pa.float64(), True),
    _field("seconds", pa.float64(), True),
    _field("status", pa.string()),
    _field("error", pa.string(), True),
    _field("created_at", _TIMESTAMP),
])


def with_names(schema: pa.Schema) -> pa.Schema:
    """``schema`` with ``name_a`` and ``name_b`` right after ``model_b``: the columns of a view that names models."""
    fields = []
    for item in schema:
        fields += [item, *_NAMES] if item.name == "model_b" else [item]
    return pa.schema(fields)


#: Columns of the ``curves`` view: the ``curves`` table's with ``name_a`` and ``name_b`` (see :data:`MODELS`).
CURVES_VIEW = with_names(CURVES)


def _cross_columns(schema: pa.Schema) -> list[pa.Field]:
    """``schema``'s fields with ``layer`` replaced by ``layer_a``, ``layer_b`` and ``pool``."""
    fields = []
    for item in schema:
        fields += ([_field("layer_a", pa.string()), _field("layer_b", pa.string()), _field("pool", pa.string())]
                   if item.name == "layer" else [item])
    return fields


#: ``cross_curves``: one row per (pair, layer of a, layer of b, repeat) of ``cross_layers``: the ``curves``
#: columns with ``layer`` replaced by ``layer_a`` (of model a), ``layer_b`` (of model b) and ``pool`` (``'none'``:
#: the layers' stored rows; ``'mean'``: conv layers averaged over positions, one row per example).
CROSS_CURVES = pa.schema(_cross_columns(CURVES))
#: Columns of the ``cross_curves`` view: :data:`CROSS_CURVES` with ``name_a`` and ``name_b``.
CROSS_CURVES_VIEW = with_names(CROSS_CURVES)

#: ``simple_matches``: one row per simple (v-minimal) match found.
SIMPLE_MATCHES = pa.schema([
    *_pair_identity(with_eps=True),
    _field("match_id", _INT32),
    _field("neurons_a", _LIST_INT32),
    _field("neurons_b", _LIST_INT32),
    _field("size_a", _INT32),
    _field("size_b", _INT32),
    _field("neuron", pa.string()),
    _field("search_order", pa.string()),
    _field("probe_id", pa.string()),
    *_PROVENANCE,
])

#: ``runs``: append-only; a run appends its row when it starts and again when it ends (readers see the latest).
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
    _field("updated_at", _TIMESTAMP),
])

#: ``models``: one row per model of a study. ``name`` is how the views and the report name it: ``seed3`` for a
#: trained (or untrained) seed, ``seed3@epoch2`` for a trajectory's saved epoch, the checkpoint's path relative to
#: the population's common folder for checkpoints given, the imported model's name for imported activations, the
#: folder or Hub id of a language model; null in rows written before it existed (the views then show the id).
MODELS = pa.schema([
    _field("study", pa.string()),
    _field("config_hash", pa.string()),
    _field("population", pa.string()),
    _field("model_id", pa.string()),
    pa.field("name", pa.string()),
    _field("seed", pa.int64(), True),
    _field("checkpoint", pa.string(), True),
    _field("architecture", pa.string()),
    _field("holdout_accuracy", pa.float64(), True),
    _field("test_accuracy", pa.float64(), True),
    _field("epochs", pa.int64(), True),
    _field("selected_epoch", pa.int64(), True),
    _field("created_at", _TIMESTAMP),
    _field("epoch", pa.int64(), True),  # epochs trained of these weights (0: untrained; trajectories: e)
    _field("revision", pa.string(), True),  # a language model's Hub revision (its checkpoint along training)
    _field("step", pa.int64(), True),  # the training step that revision (or a trained language model) is at
])

#: ``tasks``: completion markers of tasks (e.g. simple-match tasks, which may produce no row).
TASKS = pa.schema([
    _field("study", pa.string()),
    _field("config_hash", pa.string()),
    _field("stage", pa.string()),
    _field("task_id", pa.string()),
    _field("rows", pa.int64()),
    _field("created_at", _TIMESTAMP),
])

#: The stored (Delta) tables, each under ``results/<table>/`` of the store.
TABLES: dict[str, pa.Schema] = {"curves": CURVES, "simple_matches": SIMPLE_MATCHES, "runs": RUNS,
                                "models": MODELS, "tasks": TASKS}
TABLES["cross_curves"] = CROSS_CURVES
TABLES["measures"] = MEASURE_ROWS
TABLES["neurons"] = NEURON_ROWS

#: Columns of the ``matches`` view (and of ``matches_at(eps)``): one row per (pair, layer, ε, repeat).
MATCHES = pa.schema([
    *_pair_identity(with_eps=True, names=True),
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

#: Columns of the ``cross_matches`` view: ``cross_curves`` at each ε of its study's grid, as ``matches``.
CROSS_MATCHES = pa.schema(_cross_columns(MATCHES))

#: Columns of the ``cka`` view: one row per (pair, layer, repeat) whose curve carries a CKA value.
CKA = pa.schema([
    *_pair_identity(with_eps=False, names=True),
    _field("cka", pa.float64()),
    *_PROVENANCE,
])

#: Columns of the ``studies`` view: each study's current configuration, from its record ``studies/<name>.json``
#: (``measures``: what each pair gets, ``cka`` only when computed; records of raymatch before the measures hold
#: neither, and read as ``[max_match, cka]`` and 0.99).
STUDIES = pa.schema([
    _field("study", pa.string()),
    _field("config_hash", pa.string()),
    _field("eps", pa.list_(pa.float64())),
    _field("layers", pa.list_(pa.string())),
    _field("measures", pa.list_(pa.string())),
    _field("svcca_keep", pa.float64()),
])

#: Columns of the ``universality(eps)`` table macro: one row per (study, population, layer, repeat, model, neuron).
UNIVERSALITY = pa.schema([
    _field("study", pa.string()),
    _field("population", pa.string()),
    _field("layer", pa.string()),
    _field("repeat", _INT32),
    _field("model", pa.string()),
    _field("name", pa.string()),
    _field("neuron", _INT32),
    _field("eps", pa.float64()),
    _field("matched_in", _INT32),
    _field("others", _INT32),
    _field("share", pa.float64()),
])

#: Columns of the ``eps_for_share(share)`` table macro: one row per ``"ok"`` (pair, layer, repeat) of ``curves``,
#: the smallest ε at which at least ``share`` of the live neurons of each side lie in the maximum match
#: (``needed_a`` and ``needed_b`` of them); ``eps`` is null when a side has no live neuron.
EPS_FOR_SHARE = pa.schema([
    *_pair_identity(with_eps=False, names=True),
    _field("share", pa.float64()),
    _field("eps", pa.float64(), True),
    _field("needed_a", _INT32),
    _field("needed_b", _INT32),
    _field("live_a", _INT32),
    _field("live_b", _INT32),
    _field("chance", pa.float64(), True),
])

#: The columns that identify one result: a reader sees one row per key (see :func:`raymatch.results.connect`).
KEYS: dict[str, tuple[str, ...]] = {
    "curves": ("study", "config_hash", "population", "layer", "repeat", "model_a", "model_b"),
    "simple_matches": ("study", "config_hash", "population", "layer", "repeat", "model_a", "model_b", "eps",
                       "match_id"),
    "runs": ("run_id",),
    "models": ("study", "config_hash", "model_id"),
    "tasks": ("study", "config_hash", "stage", "task_id"),
    "cross_curves": ("study", "config_hash", "population", "layer_a", "layer_b", "pool", "repeat", "model_a",
                     "model_b"),
    "measures": ("study", "config_hash", "population", "layer", "repeat", "model_a", "model_b", "measure",
                 "svcca_keep"),
    "neurons": ("study", "config_hash", "population", "layer", "repeat", "model_a", "model_b"),
}

#: The column that orders the rows of one key: the latest wins (``curves`` prefer ``"ok"`` rows first).
ORDER_BY: dict[str, str] = {"curves": "created_at", "simple_matches": "created_at", "runs": "updated_at",
                            "models": "created_at", "tasks": "created_at", "cross_curves": "created_at",
                            "measures": "created_at", "neurons": "created_at"}

#: Column filled with the current UTC time when a row leaves it out.
FILLED_TIME: dict[str, str] = {"curves": "created_at", "simple_matches": "created_at", "runs": "updated_at",
                               "models": "created_at", "tasks": "created_at", "cross_curves": "created_at",
                               "measures": "created_at", "neurons": "created_at"}

#: The views of :func:`raymatch.results.connect` and their columns (stored tables' views keep their schema).
VIEW_COLUMNS: dict[str, pa.Schema] = {
    "curves": CURVES_VIEW, "curves_all": CURVES, "matches": MATCHES, "cka": CKA, "studies": STUDIES,
    "simple_matches": SIMPLE_MATCHES, "runs": RUNS, "models": MODELS, "tasks": TASKS,
    "cross_curves": CROSS_CURVES_VIEW, "cross_matches": CROSS_MATCHES, "measures": MEASURE_ROWS, "neurons": NEURONS,
    **{f"{table}_raw": schema for table, schema in TABLES.items()},
}
VIEWS = tuple(VIEW_COLUMNS)

#: The states of a ``runs`` row. A run whose driver died stays ``"running"``: ``raymatch status`` shows it as
#: ``abandoned`` once its heartbeat (``heartbeats/<run id>.json``) is old (:func:`raymatch.engine.run.run_state`).
#: A run stopped by SIGINT/SIGTERM is ``"cancelled"``.
RUN_STATUSES = ("running", "succeeded", "failed", "cancelled")

#: The states of a ``curves`` (and ``matches``) row.
STATUSES = ("ok", "failed")

#: ``curves`` fields an ``"ok"`` row must have (``cka`` and ``error`` aside).
_CURVE_MEASUREMENTS = ("n_samples", "n_a", "n_b", "dead_a", "dead_b", "critical_a", "critical_b", "exact_tol",
                       "max_epsilon", "chance", "seconds")


#: ``measures`` and ``neurons`` fields an ``"ok"`` row must have.
_PAIR_MEASUREMENTS = {"measures": ("value", "n_samples", "n_a", "n_b"),
                      "neurons": ("n_samples", "n_a", "n_b", "correlation_a", "partner_a", "correlation_b",
                                  "partner_b")}


def table_schema(table: str) -> pa.Schema:
    """The schema of the stored table ``table``; ``ValueError`` naming the known tables otherwise."""
    if not isinstance(table, str) or table not in TABLES:
        raise ValueError(f"unknown results table {table!r} (known: {', '.join(TABLES)})")
    return TABLES[table]


def _check_list(field: pa.Field, value, where: str) -> None:
    floats = pa.types.is_floating(field.type.value_type)
    kind = "numbers" if floats else "integers"
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{where}: field {field.name!r} must be a list of {kind}; got {value!r}")
    if isinstance(value, np.ndarray):
        allowed = (np.integer, np.floating) if floats else (np.integer,)
        if value.ndim != 1 or (value.size and not any(np.issubdtype(value.dtype, t) for t in allowed)):
            raise ValueError(f"{where}: field {field.name!r} must be a 1-d array of {kind}; got dtype "
                             f"{value.dtype}, shape {value.shape}")
        return
    check = is_number if floats else is_integer
    if not all(check(item) for item in value):
        raise ValueError(f"{where}: field {field.name!r} must be a list of {kind}; got {value!r}")


def _check_value(field: pa.Field, value, where: str) -> None:
    """Reject values pyarrow would silently alter (floats truncated to ints, naive times taken as UTC)."""
    if pa.types.is_integer(field.type) and not is_integer(value):
        raise ValueError(f"{where}: field {field.name!r} must be an integer; got {value!r}")
    if pa.types.is_floating(field.type) and not is_number(value):
        raise ValueError(f"{where}: field {field.name!r} must be a number; got {value!r}")
    if pa.types.is_list(field.type):
        _check_list(field, value, where)
    if pa.types.is_timestamp(field.type):
        if not isinstance(value, _dt.datetime):
            raise ValueError(f"{where}: field {field.name!r} must be a datetime; got {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: field {field.name!r} must be timezone-aware; got naive {value!r}")


def _check_status(row: Mapping, where: str, required: tuple[str, ...]) -> None:
    status = row["status"]
    if status not in STATUSES:
        raise ValueError(f"{where}: field 'status' must be one of {', '.join(map(repr, STATUSES))}; got {status!r}")
    if status == "ok":
        if row.get("error") is not None:
            raise ValueError(f"{where}: field 'error' must be null when status is 'ok'; got {row['error']!r}")
        for name in required:
            if row.get(name) is None:
                raise ValueError(f"{where}: missing field {name!r} (required when status is 'ok')")
    elif not row.get("error"):
        raise ValueError(f"{where}: missing field 'error' (required when status is 'failed')")


def _check_curve(row: Mapping, where: str) -> None:
    """An ``"ok"`` curve: one critical ε per neuron, each a number ≥ 0 or ``inf``, ``inf`` exactly for the dead."""
    _check_status(row, where, _CURVE_MEASUREMENTS)
    for side in ("a", "b"):
        critical = row.get(f"critical_{side}")
        if critical is None:
            continue
        values = np.asarray(critical, dtype=np.float64)
        n, dead = row.get(f"n_{side}"), row.get(f"dead_{side}")
        if n is not None and values.size != n:
            raise ValueError(f"{where}: field 'critical_{side}' has {values.size} values for n_{side} = {n} neurons")
        if np.isnan(values).any() or (values < 0).any():
            raise ValueError(f"{where}: field 'critical_{side}' must hold numbers >= 0 (inf for dead neurons)")
        if dead is not None and int(np.isinf(values).sum()) != dead:
            raise ValueError(f"{where}: field 'critical_{side}' has {int(np.isinf(values).sum())} inf values "
                             f"(dead neurons) but dead_{side} = {dead}")
    for name in ("exact_tol", "max_epsilon", "chance", "seconds"):
        value = row.get(name)
        if value is not None and (math.isnan(value) or value < 0):
            raise ValueError(f"{where}: field {name!r} must be a number >= 0; got {value!r}")


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
    if table in ("curves", "cross_curves"):
        _check_curve(row, where)
    elif table in _PAIR_MEASUREMENTS:
        _check_status(row, where, _PAIR_MEASUREMENTS[table])
    elif table == "runs" and row["status"] not in RUN_STATUSES:
        raise ValueError(f"{where}: field 'status' must be one of {', '.join(map(repr, RUN_STATUSES))}; "
                         f"got {row['status']!r}")


def _column(field: pa.Field, values: list, table: str) -> pa.Array:
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as error:
        raise ValueError(f"{table}: field {field.name!r} cannot be stored as {field.type}: {error}") from None


def to_table(table: str, rows: list[dict]) -> pa.Table:
    """Validate ``rows`` against the schema of the stored table ``table`` and build an Arrow table of that schema.

    Parameters
    ----------
    table : str
        One of :data:`TABLES`.
    rows : list of dict
        One dict per row, keyed by field name. Missing nullable fields become null.

    Returns
    -------
    pyarrow.Table
        The rows, with exactly the table's schema.

    Raises
    ------
    ValueError
        For an unknown table, and for a row with an unknown field, a missing required field or a value of the
        wrong type (the message names the table, the row and the field).
    """
    schema = table_schema(table)
    if isinstance(rows, Mapping) or not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows must be a list of dicts; got {type(rows).__name__}")
    for index, row in enumerate(rows):
        _check_row(schema, table, row, index)
    columns = [_column(field, [row.get(field.name) for row in rows], table) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


__all__ = [
    "CKA",
    "CROSS_CURVES",
    "CROSS_CURVES_VIEW",
    "CROSS_MATCHES",
    "CURVES",
    "CURVES_VIEW",
    "EPS_FOR_SHARE",
    "KEYS",
    "MATCHES",
    "MEASURE_ROWS",
    "MODELS",
    "NEURONS",
    "NEURON_ROWS",
    "RUNS",
    "RUN_STATUSES",
    "SIMPLE_MATCHES",
    "STATUSES",
    "STUDIES",
    "TABLES",
    "TASKS",
    "UNIVERSALITY",
    "UNIVERSAL_NEURONS",
    "VIEWS",
    "VIEW_COLUMNS",
    "table_schema",
    "to_table",
    "with_names",
]
