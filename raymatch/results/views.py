"""DuckDB views over the Delta tables: ``matches`` at each study's ε grid, ``matches_at(eps)`` at any ε, and more.

The views that name models (``curves``, ``matches``, ``cka``, ``cross_curves``, ``cross_matches`` and the macros)
carry their names beside their ids: ``name_a`` and ``name_b`` (``name`` in ``universality``).

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
from .schema import (
    CKA,
    CROSS_CURVES_VIEW,
    CROSS_MATCHES,
    CURVES_VIEW,
    EPS_FOR_SHARE,
    KEYS,
    MATCHES,
    ORDER_BY,
    STUDIES,
    TABLES,
    VIEW_COLUMNS,
    VIEWS,
)


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


def _range_check_sql(value: str, macro: str, name: str, rule: str, holds: str) -> str:
    """``value`` as a DOUBLE where ``holds`` (SQL with ``{x}`` for it) is true, else the error naming the rule."""
    number = f"TRY_CAST({value} AS DOUBLE)"
    got = f"coalesce(CAST({value} AS VARCHAR), 'NULL')"
    message = f"'{macro}: {name} must be {rule}; got ' || {got}"
    return f"CASE WHEN {number} IS NULL OR NOT ({holds.format(x=number)}) THEN error({message}) ELSE {number} END"


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
    return _range_check_sql(value, macro, "eps", EPS_RULE, f"{{x}} BETWEEN {EPS_MIN!r} AND {EPS_MAX!r}")


#: The range of the ``share`` argument of ``eps_for_share(share)``: a share of the live neurons.
SHARE_RULE = "a number in (0, 1]"


def share_check_sql(value: str, macro: str) -> str:
    """SQL of the check of a share argument: ``value`` as a DOUBLE in (0, 1], else one DuckDB error.

    The error reads ``<macro>: share must be a number in (0, 1]; got <value>`` (NULL, NaN and text included).

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
    return _range_check_sql(value, macro, "share", SHARE_RULE, "{x} > 0 AND {x} <= 1")


def _checked_eps(value: str, macro: str, check=eps_check_sql) -> str:
    """One row ``g`` with the checked ε of a macro's argument: join it, and filter on :data:`_EPS_KEPT`.

    DuckDB drops the columns a query does not use (``SELECT count(*) FROM universality(2)`` reads no ``eps``),
    and an unused column's error is never raised; a filter on it always runs. ``check`` makes the SQL of the
    check (:func:`eps_check_sql`, or :func:`share_check_sql`: the column is still ``g.eps``).
    """
    return f"(SELECT {check(value, macro)} AS eps) g"


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
        f"SELECT study, population, layer, repeat, model_{side} AS model, name_{side} AS name, "
        f"unnest(generate_series(0, len(critical_{side}) - 1)) AS neuron, unnest(critical_{side}) AS critical, "
        f"exact_tol, g.eps AS eps FROM curves CROSS JOIN {_checked_eps('eps_value', 'universality')} "
        f"WHERE {_EPS_KEPT} AND status = 'ok'"
        for side in ("a", "b"))
    matched = f"count_if({membership_sql('critical', 'eps', 'exact_tol')})"
    return (f"SELECT study, population, layer, repeat, model, any_value(name) AS name, neuron::INTEGER AS neuron, "
            f"any_value(eps) AS eps, "
            f"{matched}::INTEGER AS matched_in, count(*)::INTEGER AS others, "
            f"{matched}::DOUBLE / count(*) AS share FROM ({sides}) "
            f"GROUP BY study, population, layer, repeat, model, neuron")


def _eps_for_share_select() -> str:
    """SQL of the ``eps_for_share(share_value)`` macro's rows from the ``"ok"`` curves.

    On each side, ``needed`` = ⌈share · live⌉ of its live (finite critical ε) neurons must be matched; the side's
    ``needed``-th smallest critical ε is the smallest ε at which they are, and the pair's is the larger of its two
    sides, or 0 when that is in the exact match (:func:`membership_sql` at ε = 0). ``share · live`` is rounded to 9
    decimals first, so that 0.3 · 10 needs 3 neurons, not 4.
    """
    live = "len(list_filter(critical_{s}, lambda x: NOT isinf(x)))::INTEGER"
    needed = "greatest(1, ceil(round(g.eps * " + live + ", 9)))::INTEGER"
    kth = "list_sort(list_filter(critical_{s}, lambda x: NOT isinf(x)))[needed_{s}]"
    sides = ", ".join(f"{live.format(s=s)} AS live_{s}, {needed.format(s=s)} AS needed_{s}" for s in "ab")
    counted = (f"SELECT c.*, g.eps AS share, {sides} FROM curves c CROSS JOIN "
               f"{_checked_eps('share_value', 'eps_for_share', share_check_sql)} "
               f"WHERE {_EPS_KEPT} AND c.status = 'ok'")
    reached = (f"SELECT *, CASE WHEN needed_a <= live_a AND needed_b <= live_b "
               f"THEN greatest({kth.format(s='a')}, {kth.format(s='b')}) END AS _reached FROM ({counted})")
    eps = (f"CASE WHEN {membership_sql('_reached', '0.0', 'exact_tol')} THEN 0.0 ELSE _reached END")
    columns = ", ".join(f"{eps} AS eps" if name == "eps" else _quote(name) for name in EPS_FOR_SHARE.names)
    return f"SELECT {columns} FROM ({reached})"


#: The table macros over the views: name(argument) → SQL of their rows (each checks its argument when called).
MACROS = {"matches_at(eps_value)": _matches_at_select, "universality(eps_value)": _universality_select,
          "eps_for_share(share_value)": _eps_for_share_select}


def _named(source: str, names: list[str]) -> str:
    """``source``'s columns ``names``, ``name_a`` and ``name_b`` among them: the models' names, else their ids.

    The names come from the ``models`` view (one row per study, configuration and model id); a model without a
    row there, or a row written before ``models.name`` existed, is named by its id.
    """
    columns = [f"coalesce(m{name[-1]}.name, c.model_{name[-1]}) AS {name}" if name in ("name_a", "name_b")
               else f"c.{_quote(name)}" for name in names]
    joins = " ".join(f"LEFT JOIN models m{s} ON m{s}.study = c.study AND m{s}.config_hash = c.config_hash "
                     f"AND m{s}.model_id = c.model_{s}" for s in "ab")
    return f"SELECT {', '.join(columns)} FROM ({source}) c {joins}"


def _view_sql() -> dict[str, str]:
    """The SQL of every view, in creation order (``<table>_raw`` are the registered datasets)."""
    grid = "(SELECT study, config_hash, unnest(eps) AS eps FROM studies)"
    views = {}
    for table in TABLES:
        if table == "runs":  # every run of every configuration: the history
            views[table] = _latest(f"{table}_raw", table)
        elif table not in ("curves", "cross_curves"):  # like curves: each study's current configuration only
            views[table] = _latest(f"(SELECT * FROM {table}_raw SEMI JOIN studies USING (study, config_hash))", table)
    current = "(SELECT * FROM {table}_raw SEMI JOIN studies USING (study, config_hash))"
    cka = ", ".join(_quote(name) for name in CKA.names)
    views |= {
        "curves_all": _latest("curves_raw", "curves"),
        "curves": _named(_latest(current.format(table="curves"), "curves"), CURVES_VIEW.names),
        "matches": _matches_select(f"curves c JOIN {grid} g ON c.study = g.study AND c.config_hash = g.config_hash"),
        "cka": f"SELECT {cka} FROM curves WHERE status = 'ok' AND cka IS NOT NULL",
        "cross_curves": _named(_latest(current.format(table="cross_curves"), "cross_curves"),
                               CROSS_CURVES_VIEW.names),
    }
    cross_grid = f"cross_curves c JOIN {grid} g ON c.study = g.study AND c.config_hash = g.config_hash"
    views["cross_matches"] = _matches_select(cross_grid, CROSS_MATCHES.names)
    measures = measure_views()  # measures, neurons: their own views over the stored tables, after curves
    return {**{name: sql for name, sql in views.items() if name not in measures}, **measures}


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
      none), with ``name_a`` and ``name_b`` after ``model_b``: the models' names from ``models.name`` (``seed3``,
      a checkpoint's relative path, an imported model's name), their ids where the store has no name.
    - ``matches``: ``curves`` at each ε of its study's grid, with the columns of
      :data:`~raymatch.results.MATCHES`; a failed curve gives a failed row at every ε.
    - ``matches_at(eps)``: a table macro, the same columns at any ε in [0, 1]
      (``SELECT * FROM matches_at(0.22)``); another ε is an error.
    - ``universality(eps)``: a table macro over the ``"ok"`` curves, one row per (study, population, layer, repeat,
      model, neuron): ``name``, the model's name; ``matched_in``, in how many of the model's pairs the neuron lies
      in the maximum match at ε; ``others``, how many pairs the model has (the other models it was compared with);
      ``share`` their ratio; columns of :data:`~raymatch.results.schema.UNIVERSALITY`.
    - ``eps_for_share(share)``: a table macro over the ``"ok"`` curves, one row per (pair, layer, repeat): ``eps``,
      the smallest ε at which at least ``share`` (in (0, 1]; another is an error) of the live neurons of each side
      are in the maximum match (``needed_a`` and ``needed_b`` of ``live_a`` and ``live_b``; null when a side has
      none live); columns of :data:`~raymatch.results.schema.EPS_FOR_SHARE`
      (``SELECT layer, median(eps) FROM eps_for_share(0.5) GROUP BY layer``).
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
