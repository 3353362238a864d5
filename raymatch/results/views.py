"""DuckDB views over the Delta tables: ``matches`` at each study's ε grid, ``matches_at(eps)`` at any ε, and more.

:func:`connect` registers each stored table's pyarrow dataset (lazily: DuckDB reads only the columns and row
groups a query needs) as ``<table>_raw`` and builds the views on top. No DuckDB extension is loaded or
downloaded.
"""

from __future__ import annotations

import numbers

import pandas as pd
import pyarrow as pa

from ..match.inputs import EPS_MAX, EPS_MIN, EPS_RULE
from ..store import Store, layout
from .legacy import ensure_current_format
from .measure_views import MEASURE_MACROS, measure_views
from .reading import dataset
from .schema import CKA, CROSS_MATCHES, KEYS, MATCHES, ORDER_BY, STUDIES, TABLES, VIEW_COLUMNS, VIEWS


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _latest(source: str, table: str) -> str:
    """One row per key of ``table`` from ``source``: ``"ok"`` curves first, then the latest."""
    keys = ", ".join(map(_quote, KEYS[table]))
    order = f"{_quote(ORDER_BY[table])} DESC"
    if table in ("curves", "cross_curves"):
        order = f"(status = 'ok') DESC, {order}"
    return f"SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1"


def membership_sql(critical: str, eps: str, exact_tol: str) -> str:
    """SQL of :func:`raymatch.match.inputs.in_match`: whether a neuron of critical ε ``critical`` is in the match.

    The one SQL statement of the membership rule, critical ε at most ``max(ε, exact_tol)`` (a dead neuron's
    ``inf`` never is), used by ``matches``, ``cross_matches``, ``matches_at(eps)`` and ``universality(eps)``;
    tests/test_eps_rule.py checks the views against the Python function.

    Parameters
    ----------
    critical, eps, exact_tol : str
        SQL expressions of DOUBLE values.

    Returns
    -------
    str
        A BOOLEAN SQL expression.

    Examples
    --------
    >>> from raymatch.results.views import membership_sql
    >>> membership_sql("x", "g.eps", "c.exact_tol")
    '(x <= greatest(g.eps, c.exact_tol))'
    """
    return f"({critical} <= greatest({eps}, {exact_tol}))"


def eps_check_sql(value: str, macro: str) -> str:
    """SQL of :func:`raymatch.match.inputs.check_eps` for the ε argument of a table macro.

    ``value`` as a DOUBLE in [``EPS_MIN``, ``EPS_MAX``], or a DuckDB error ``<macro>: eps must be a number in
    [0, 1]; got <value>`` (NULL, NaN and text that is no number included).

    Parameters
    ----------
    value : str
        SQL expression of the macro's argument.
    macro : str
        The macro's name, for the message.

    Returns
    -------
    str
        A DOUBLE SQL expression.
    """
    number = f"TRY_CAST({value} AS DOUBLE)"
    got = f"coalesce(CAST({value} AS VARCHAR), 'NULL')"
    message = f"'{macro}: eps must be {EPS_RULE}; got ' || {got}"
    return (f"CASE WHEN {number} IS NULL OR NOT ({number} BETWEEN {EPS_MIN!r} AND {EPS_MAX!r}) "
            f"THEN error({message}) ELSE {number} END")


def _checked_eps(value: str, macro: str) -> str:
    """One row ``g`` with the checked ε of a macro's argument: join it, and filter on :data:`_EPS_KEPT`.

    DuckDB drops the columns a query does not use (``SELECT count(*) FROM universality(2)`` reads no ``eps``),
    and an unused column's error is never raised; a filter on it always runs.
    """
    return f"(SELECT {eps_check_sql(value, macro)} AS eps) g"


_EPS_KEPT = "g.eps IS NOT NULL"


def _matches_select(source: str, names: list[str] = MATCHES.names) -> str:
    """The ``matches`` columns from ``source``, which yields ``curves`` columns ``c.*`` and a DOUBLE ``g.eps``.

    A neuron is in the maximum match at ε iff :func:`membership_sql` holds for its critical ε: ``size_a``
    counts those neurons, ``neurons_a`` lists their (0-based) indices.
    """
    member = membership_sql("x", "_eps", "exact_tol")
    size = "len(list_filter(critical_{s}, lambda x: " + member + "))::INTEGER"
    neurons = "[i - 1 for x, i in critical_{s} if " + member + "]::INTEGER[]"
    inner = f"SELECT c.*, g.eps AS _eps FROM {source}"
    sized = (f"SELECT *, {size.format(s='a')} AS size_a, {size.format(s='b')} AS size_b FROM ({inner})")
    columns = []
    for name in names:
        if name == "eps":
            columns.append("_eps AS eps")
        elif name == "similarity":
            columns.append("(size_a + size_b)::DOUBLE / nullif(n_a + n_b, 0) AS similarity")
        elif name in ("neurons_a", "neurons_b"):
            columns.append(f"{neurons.format(s=name[-1])} AS {name}")
        else:
            columns.append(_quote(name))
    return f"SELECT {', '.join(columns)} FROM ({sized})"


def _matches_at_select() -> str:
    """SQL of the ``matches_at(eps_value)`` macro's rows: ``matches`` at one checked ε."""
    return _matches_select(f"curves c CROSS JOIN {_checked_eps('eps_value', 'matches_at')} WHERE {_EPS_KEPT}")


def _universality_select() -> str:
    """SQL of the ``universality(eps_value)`` macro's rows from ``curves``.

    One row per (model, neuron) of each population × layer × repeat, with the number of its pairs in whose maximum
    match at ε the neuron lies.

    Both sides of every ``"ok"`` curve contribute: model_a's neurons against model_b, and model_b's against model_a.
    The rule is that of ``matches`` (:func:`membership_sql`; dead neurons, critical ε ``inf``, are never matched).
    """
    sides = " UNION ALL ".join(
        f"SELECT study, population, layer, repeat, model_{side} AS model, "
        f"unnest(generate_series(0, len(critical_{side}) - 1)) AS neuron, unnest(critical_{side}) AS critical, "
        f"exact_tol, g.eps AS eps FROM curves CROSS JOIN {_checked_eps('eps_value', 'universality')} "
        f"WHERE {_EPS_KEPT} AND status = 'ok'"
        for side in ("a", "b"))
    matched = f"count_if({membership_sql('critical', 'eps', 'exact_tol')})"
    return (f"SELECT study, population, layer, repeat, model, neuron::INTEGER AS neuron, any_value(eps) AS eps, "
            f"{matched}::INTEGER AS matched_in, count(*)::INTEGER AS others, "
            f"{matched}::DOUBLE / count(*) AS share FROM ({sides}) "
            f"GROUP BY study, population, layer, repeat, model, neuron")


#: The table macros over the views: name(argument) → SQL of their rows (each checks its ε when called).
MACROS = {"matches_at(eps_value)": _matches_at_select, "universality(eps_value)": _universality_select}


def _view_sql() -> dict[str, str]:
    """The SQL of every view, in creation order (``<table>_raw`` are the registered datasets)."""
    grid = "(SELECT study, config_hash, unnest(eps) AS eps FROM studies)"
    current = "(SELECT * FROM curves_raw SEMI JOIN studies USING (study, config_hash))"
    cka = ", ".join(_quote(name) for name in CKA.names)
    views = {
        "curves_all": _latest("curves_raw", "curves"),
        "curves": _latest(current, "curves"),
        "matches": _matches_select(f"curves c JOIN {grid} g ON c.study = g.study AND c.config_hash = g.config_hash"),
        "cka": f"SELECT {cka} FROM curves WHERE status = 'ok' AND cka IS NOT NULL",
    }
    cross_grid = f"cross_curves c JOIN {grid} g ON c.study = g.study AND c.config_hash = g.config_hash"
    cross = {"cross_matches": _matches_select(cross_grid, CROSS_MATCHES.names)}  # after the cross_curves view
    for table in TABLES:
        if table == "runs":  # every run of every configuration: the history
            views[table] = _latest(f"{table}_raw", table)
        elif table != "curves":  # like curves: each study's current configuration only
            views[table] = _latest(f"(SELECT * FROM {table}_raw SEMI JOIN studies USING (study, config_hash))", table)
    return {**views, **cross, **measure_views()}  # measures, neurons: their own views over the stored tables


def _study_records(store: Store) -> pa.Table:
    """The ``studies`` view's rows: name, current config hash, ε grid and layers of each study record."""
    rows = []
    for key in store.list(layout.study_records_prefix()):
        if not key.endswith(".json"):
            continue
        record = store.read_json(key)
        if not isinstance(record, dict) or not record.get("config_hash"):
            raise ValueError(f"study record {key} in store {store.uri} has no config_hash")
        eps = record.get("eps") or []
        if not all(isinstance(value, numbers.Real) and not isinstance(value, bool) for value in eps):
            raise ValueError(f"study record {key} in store {store.uri} has an ε grid that is not a list of numbers")
        rows.append({"study": record.get("name") or key.rsplit("/", 1)[-1][: -len(".json")],
                     "config_hash": record["config_hash"], "eps": [float(value) for value in eps],
                     "layers": [str(layer) for layer in record.get("layers") or []],
                     "measures": [str(name) for name in record.get("measures") or ("max_match", "cka")],
                     "svcca_keep": float(record.get("svcca_keep", 0.99))})
    return pa.Table.from_pylist(rows, schema=STUDIES)


def connect(store: Store):
    """A DuckDB connection over the results of ``store``, with these views (times in UTC).

    - ``curves_all``: every ``curves`` row, one per (study, config_hash, population, layer, repeat, model_a,
      model_b): an ``"ok"`` row before a ``"failed"`` one, then the latest ``created_at``.
    - ``studies``: each study's current configuration from its record ``studies/<name>.json``: ``study``,
      ``config_hash``, ``eps`` (its ε grid), ``layers``, ``measures`` and ``svcca_keep``.
    - ``curves``: the ``curves_all`` rows of each study's current configuration (a study without a record has
      none).
    - ``matches``: ``curves`` at each ε of its study's grid, with the columns of
      :data:`~raymatch.results.MATCHES`; a failed curve gives a failed row at every ε.
    - ``matches_at(eps)``: a table macro, the same columns at any ε in [0, 1]
      (``SELECT * FROM matches_at(0.22)``); another ε is an error.
    - ``universality(eps)``: a table macro over the ``"ok"`` curves, one row per (study, population, layer, repeat,
      model, neuron): ``matched_in``, in how many of the model's pairs the neuron lies in the maximum match at ε;
      ``others``, how many pairs the model has (the other models it was compared with); ``share`` their ratio;
      columns of :data:`~raymatch.results.schema.UNIVERSALITY`.
    - ``cka``: the ``"ok"`` curves with a CKA value, columns of :data:`~raymatch.results.CKA`.
    - ``simple_matches``, ``models``, ``tasks``: one row per key (the latest); ``runs``: the latest row of
      each run.
    - ``cross_curves``: like ``curves``, the rows of ``cross_layers`` (one per pair, layer of a, layer of b,
      pool and repeat); ``cross_matches``: those at each ε of the study's grid, the ``matches`` columns with
      ``layer_a``, ``layer_b`` and ``pool`` for ``layer``.
    - ``measures``, ``neurons`` and ``universal_neurons(margin, most)``: the standard measures of each pair, the
      per-neuron correlations, and which neurons are universal (:mod:`raymatch.results.measure_views`).
    - ``<table>_raw``: every stored row of each table, duplicates included.

    Parameters
    ----------
    store : Store
        The study store.

    Returns
    -------
    duckdb.DuckDBPyConnection
        Close it when done.

    Raises
    ------
    ValueError
        A 0.1.0 store, or a study record without a configuration hash.
    StoreError
        The store cannot be read.
    """
    import duckdb

    ensure_current_format(store)
    studies = _study_records(store)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        for table, schema in TABLES.items():
            data = dataset(store, table)
            con.register(f"{table}_raw", data if data is not None else schema.empty_table())
        con.register("studies", studies)
        for name, sql in _view_sql().items():
            con.execute(f"CREATE VIEW {_quote(name)} AS {sql}")
        for macro, sql in {**MACROS, **MEASURE_MACROS}.items():
            con.execute(f"CREATE MACRO {macro} AS TABLE {sql()}")
    except BaseException:
        con.close()
        raise
    return con


def query(store: Store, sql: str) -> pd.DataFrame:
    """Run one SQL query (DuckDB dialect) over the views of :func:`connect`.

    Parameters
    ----------
    store : Store
        The study store.
    sql : str
        The query; it may use every view of :func:`connect` and ``matches_at(eps)``.

    Returns
    -------
    pandas.DataFrame
        The result (timestamps as UTC datetimes).

    Raises
    ------
    ValueError
        The SQL is invalid or fails (the message is DuckDB's), or a 0.1.0 store.
    StoreError
        The store cannot be read.
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


def load_table(store: Store, table: str = "matches", *, study: str | None = None,
               eps: float | None = None) -> pa.Table:
    """The rows of one view as an Arrow table with the view's columns; see :func:`load`."""
    import duckdb

    if table not in VIEW_COLUMNS:
        raise ValueError(f"unknown results view {table!r} (known: {', '.join(VIEWS)})")
    source, names = _quote(table), {}
    if eps is not None:
        if table != "matches":
            raise ValueError(f"eps applies to the matches view only, not to {table!r}")
        source, names = "matches_at($eps)", {"eps": eps}
    sql = f"SELECT * FROM {source}"
    if study is not None:
        sql += " WHERE study = $study"
        names["study"] = study
    con = connect(store)
    try:
        return con.sql(sql, params=names).to_arrow_table()
    except duckdb.Error as error:
        raise ValueError(str(error)) from None
    finally:
        con.close()


def load(store: Store, table: str = "matches", *, study: str | None = None,
         eps: float | None = None) -> pd.DataFrame:
    """Read one view of :func:`connect` into a DataFrame.

    Parameters
    ----------
    store : Store
        The study store.
    table : str, default ``"matches"``
        A view: ``matches``, ``curves``, ``curves_all``, ``cka``, ``studies``, ``simple_matches``, ``runs``,
        ``models`` or ``tasks``.
    study : str, optional
        Keep only the rows of this study.
    eps : float, optional
        With ``table="matches"``: the matches at this ε in [0, 1] (``matches_at(eps)``) instead of the grid's.

    Returns
    -------
    pandas.DataFrame
        The view's columns (list columns as numpy arrays, times as UTC datetimes); empty, with the same
        columns, when there are no rows.

    Raises
    ------
    ValueError
        Unknown view, ``eps`` out of [0, 1], or a 0.1.0 store.
    StoreError
        The store cannot be read.
    """
    return load_table(store, table, study=study, eps=eps).to_pandas()


__all__ = ["connect", "load", "load_table", "query"]
