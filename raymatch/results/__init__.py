"""Results tables: Delta Lake tables written by the driver, read through DuckDB views.

Every stored table is a Delta table under ``results/<table>/`` of the store (local or S3, one code path):
:mod:`~raymatch.results.writing` appends and compacts, :mod:`~raymatch.results.reading` reads, and
:mod:`~raymatch.results.legacy` refuses a store of raymatch 0.1.0. Pair tasks return their rows to the driver,
which commits them in batches (:class:`TableWriter`) and compacts them when the run ends, so thousands of tasks
end as a few files. Concurrent drivers may append the same result twice: readers see one row per key
(:func:`connect`).

Stored tables (:data:`TABLES`)
------------------------------
``curves`` (:data:`CURVES`) — one row per (pair, layer, repeat), its ε-curve:

- ``study``, ``population`` (``"trained"``; the nulls ``"untrained"`` and ``"permuted"``; ``"trajectory"`` for
  saved epochs), ``layer``, ``repeat`` (int32, the row sample), ``model_a``, ``model_b`` — the identity.
- ``probe_id``, ``config_hash``, ``code_version`` — provenance.
- ``n_samples`` (int64), ``n_a``, ``n_b``, ``dead_a``, ``dead_b`` (int32) — counts, dead neurons included in
  ``n_a``/``n_b``.
- ``critical_a``, ``critical_b`` : list<float64> — every neuron's critical ε (``inf`` for dead neurons).
- ``exact_tol`` : float64 — the tolerance of the exact match: neuron ``i`` is in the maximum match at ε iff
  ``critical_a[i] <= max(ε, exact_tol)``. It follows the dtype of the pair's stored activations
  (:func:`raymatch.match.exact_tolerance`: 2⁻¹³ ≈ 1.22e-4 for float32); older rows hold 1e-6. Null in
  failed rows.
- ``max_epsilon``, ``chance``, ``cka`` (nullable), ``seconds`` : float64.
- ``status`` (``"ok"`` or ``"failed"``), ``error`` (null when ok), ``created_at`` : timestamp[us, UTC].

A failed row needs its identity, provenance, status and error; its measurements may be null. An ok row needs
every field but ``cka`` and ``error``.

``cross_curves`` (:data:`CROSS_CURVES`) — the rows of ``cross_layers``: the columns of ``curves`` with
``layer_a``, ``layer_b`` and ``pool`` in place of ``layer`` (a single layer is ambiguous for a cross pair).

``simple_matches`` (:data:`SIMPLE_MATCHES`) — one row per simple (v-minimal) match found: the pair identity,
``eps``, ``match_id``, ``neurons_a``, ``neurons_b`` (list<int32>), ``size_a``, ``size_b``, ``neuron``
(``"a:17"``), ``search_order``, ``probe_id``, ``code_version``, ``config_hash``, ``created_at``.

``runs`` (:data:`RUNS`) — append-only: a run appends its row when it starts and again when it ends; readers
see the latest ``updated_at`` per ``run_id``. A running driver's heartbeat is not in the table but in the object
``heartbeats/<run id>.json`` (:func:`raymatch.engine.run.last_heard`). Fields: ``run_id``, ``study``,
``config_hash``, ``host``, ``code_version``, ``started_at``, ``ended_at``, ``status`` (:data:`RUN_STATUSES`),
``computed``, ``skipped``, ``failed``, ``stages`` (JSON), ``error``, ``updated_at``.

``models`` (:data:`MODELS`) — one row per model of a study: ``study``, ``config_hash``, ``population``,
``model_id``, ``name`` (``seed3``; ``seed3@epoch2`` for a saved epoch; a checkpoint's path relative to the folder
the population's checkpoints share; an imported model's name; null in older rows), ``seed``, ``checkpoint``
(store key or URI), ``architecture``, ``holdout_accuracy``, ``test_accuracy``, ``epochs``, ``selected_epoch``,
``epoch`` (a trajectory's saved epoch), ``created_at``.

``tasks`` (:data:`TASKS`) — completion markers (a simple-match task may produce no row): ``study``,
``config_hash``, ``stage``, ``task_id``, ``rows``, ``created_at``.

Views (:func:`connect`, :func:`query`, :func:`load`)
-----------------------------------------------------
``curves_all``, ``studies``, ``curves`` (current configurations only, :data:`CURVES_VIEW`), ``matches`` (the
columns of :data:`MATCHES`, at each study's ε grid), the table macros ``matches_at(eps)``, ``universality(eps)``
(:data:`UNIVERSALITY`) and ``eps_for_share(share)`` (:data:`EPS_FOR_SHARE`), ``cka`` (:data:`CKA`),
``cross_curves`` and ``cross_matches`` (:data:`CROSS_MATCHES`), ``simple_matches``, ``runs``, ``models``,
``tasks``, and ``<table>_raw`` (every stored row). The views that name models carry ``name_a`` and ``name_b``
(the ``models`` names, else the ids) beside ``model_a`` and ``model_b``.

A store written by raymatch 0.1.0 (one Parquet object per task under ``results/matches``) is refused with a
clear message (:func:`check_store_version`).
"""

from .legacy import check_store_version
from .reading import data_files, dataset, read_columns, scan_columns, storage_options, table_uri
from .schema import (
    CKA,
    CROSS_CURVES,
    CROSS_CURVES_VIEW,
    CROSS_MATCHES,
    CURVES,
    CURVES_VIEW,
    EPS_FOR_SHARE,
    KEYS,
    MATCHES,
    MODELS,
    RUN_STATUSES,
    RUNS,
    SIMPLE_MATCHES,
    STATUSES,
    STUDIES,
    TABLES,
    TASKS,
    UNIVERSALITY,
    VIEW_COLUMNS,
    VIEWS,
    table_schema,
    to_table,
)
from .summaries import FIGURE_COLUMNS, FORMATS, figure_data, format_frame, pair_summary, similarity_column
from .views import connect, load, load_table, query
from .writing import TableWriter, append_rows, compact_table, vacuum_table

__all__ = [
    "CKA",
    "CROSS_CURVES",
    "CROSS_CURVES_VIEW",
    "CROSS_MATCHES",
    "CURVES",
    "CURVES_VIEW",
    "EPS_FOR_SHARE",
    "FIGURE_COLUMNS",
    "FORMATS",
    "KEYS",
    "MATCHES",
    "MODELS",
    "RUNS",
    "RUN_STATUSES",
    "SIMPLE_MATCHES",
    "STATUSES",
    "STUDIES",
    "TABLES",
    "TASKS",
    "UNIVERSALITY",
    "VIEWS",
    "VIEW_COLUMNS",
    "TableWriter",
    "append_rows",
    "check_store_version",
    "compact_table",
    "connect",
    "data_files",
    "dataset",
    "figure_data",
    "format_frame",
    "load",
    "load_table",
    "pair_summary",
    "query",
    "read_columns",
    "scan_columns",
    "similarity_column",
    "storage_options",
    "table_schema",
    "table_uri",
    "to_table",
    "vacuum_table",
]
