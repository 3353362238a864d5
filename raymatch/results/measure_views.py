"""The views and the macro of the standard measures: ``measures``, ``neurons`` and ``universal_neurons(margin, most)``.

:func:`raymatch.results.connect` creates them beside the match's views (columns:
:mod:`raymatch.results.measure_schema`):

- ``measures``: one row per (pair, layer, repeat, measure) of each study's current configuration and current
  ``measures`` (the ``studies`` view lists them; ``svcca`` rows of its current ``svcca_keep`` only): the rows of the
  ``measures`` table (an ``"ok"`` row before a failed one, then the latest), and the ``cka`` of the ``"ok"``
  ``curves`` (where CKA has always been stored) as rows of measure ``cka``.
- ``neurons``: one row per neuron of each side of every ``"ok"`` ``neurons`` row (the table keeps one row per
  pair, each side's values as lists): ``model``, ``neuron``, ``partner_model``, ``partner_neuron``,
  ``correlation`` (its best absolute Pearson correlation with a neuron of the partner; null for a dead or
  constant neuron).
- ``universal_neurons(margin := 0.1, most := 0.5)``: per trained model and neuron, whether its best correlation
  beats the nulls by ``margin`` in more than the share ``most`` of the other trained models (see
  :func:`universal_neurons_select`).
"""

from __future__ import annotations

from .schema import KEYS, MEASURE_ROWS, NEURONS, ORDER_BY

__all__ = ["MARGIN", "MEASURE_MACROS", "MOST", "measure_views", "number_check_sql", "universal_neurons_select"]

#: Default ``margin`` of ``universal_neurons``: how far above both nulls a best correlation must be.
MARGIN = 0.1
#: Default ``most`` of ``universal_neurons``: the share of the other trained models a neuron must beat the nulls
#: in, strictly more than (0.5: a majority).
MOST = 0.5


def _current(table: str) -> str:
    """One row per key of ``table``'s rows of each study's current configuration: ``"ok"`` first, then the latest."""
    keys = ", ".join(f'"{name}"' for name in KEYS[table])
    return (f"SELECT * FROM (SELECT * FROM {table}_raw SEMI JOIN studies USING (study, config_hash)) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY (status = 'ok') DESC, "
            f"\"{ORDER_BY[table]}\" DESC) = 1")


def _measures_select() -> str:
    """The ``measures`` view: stored rows of the study's current measures, and ``cka`` from ``curves``."""
    names = MEASURE_ROWS.names
    stored = (f"SELECT {', '.join(f'm.{name}' for name in names)} FROM ({_current('measures')}) m "
              "JOIN studies s USING (study, config_hash) "
              "WHERE list_contains(s.measures, m.measure) AND (m.measure <> 'svcca' OR m.svcca_keep = s.svcca_keep)")
    cka = {"measure": "'cka'", "svcca_keep": "NULL::DOUBLE", "value": "c.cka"}
    cka.update({name: f"NULL::{kind}" for name, kind in (("kept_a", "INTEGER"), ("kept_b", "INTEGER"),
                                                         ("rank_a", "INTEGER"), ("rank_b", "INTEGER"),
                                                         ("seconds", "DOUBLE"))})
    from_curves = (f"SELECT {', '.join(f'{cka[name]} AS {name}' if name in cka else f'c.{name}' for name in names)} "
                   "FROM curves c JOIN studies s USING (study, config_hash) "
                   "WHERE list_contains(s.measures, 'cka') AND c.status = 'ok' AND c.cka IS NOT NULL")
    return f"{stored} UNION ALL {from_curves}"


def _neurons_select() -> str:
    """The ``neurons`` view: each side's lists of the ``"ok"`` pair rows, one row per neuron."""
    sides = []
    for side, other in (("a", "b"), ("b", "a")):
        columns = {"model": f"model_{side}", "partner_model": f"model_{other}",
                   "neuron": f"unnest(generate_series(0, len(correlation_{side}) - 1))::INTEGER",
                   "partner_neuron": f"unnest(partner_{side})", "correlation": f"unnest(correlation_{side})"}
        sides.append(f"SELECT *, {', '.join(f'{sql} AS _{name}' for name, sql in columns.items())} "
                     f"FROM ({_current('neurons')}) WHERE status = 'ok'")
    values = {"model": "_model", "partner_model": "_partner_model", "neuron": "_neuron",
              "partner_neuron": "nullif(_partner_neuron, -1)::INTEGER",
              "correlation": "CASE WHEN isnan(_correlation) THEN NULL ELSE _correlation END"}
    columns = ", ".join(f"{values[name]} AS {name}" if name in values else name for name in NEURONS.names)
    return f"SELECT {columns} FROM ({' UNION ALL '.join(sides)})"


def measure_views() -> dict[str, str]:
    """The SQL of the ``measures`` and ``neurons`` views (after the ``studies`` and ``curves`` views)."""
    return {"measures": _measures_select(), "neurons": _neurons_select()}


def number_check_sql(value: str, macro: str, name: str, rule: str, test: str) -> str:
    """``value`` as a DOUBLE, or a DuckDB error ``<macro>: <name> must be <rule>; got <value>``.

    ``test`` is a SQL condition on ``x``, the value as a DOUBLE (``x BETWEEN 0 AND 1``); NULL, NaN and text that is
    no number fail it too.
    """
    number = f"TRY_CAST({value} AS DOUBLE)"
    got = f"coalesce(CAST({value} AS VARCHAR), 'NULL')"
    condition = test.replace("x", number)
    return (f"CASE WHEN {number} IS NULL OR isnan({number}) OR NOT ({condition}) "
            f"THEN error('{macro}: {name} must be {rule}; got ' || {got}) ELSE {number} END")


def universal_neurons_select() -> str:
    """SQL of the ``universal_neurons(margin, most)`` macro's rows, from the ``neurons`` view.

    For each trained model m, neuron n (study, layer, repeat) and other trained model m' it was compared with:
    c, n's best correlation with a neuron of m'; the *permuted* null, n's best correlation with m' when m''s rows
    are permuted (the study's ``permuted`` pairs: same spectra, no sample correspondence; per neuron); the
    *untrained* null, the mean best correlation of the layer's neurons among the untrained models. n *beats the
    nulls* against m' when ``c > max(permuted, untrained) + margin`` (a null the study lacks counts as 0; a dead or
    constant neuron never beats). n is universal when it beats them against more than the share ``most`` of the
    other trained models (``beats / others > most``: a majority at the default 0.5). ``margin`` must be in [0, 1]
    and ``most`` in [0, 1); the macro fails naming the argument otherwise.
    """
    margin = number_check_sql("margin", "universal_neurons", "margin", "a number in [0, 1]", "x BETWEEN 0 AND 1")
    most = number_check_sql("most", "universal_neurons", "most", "a number in [0, 1)", "x >= 0 AND x < 1")
    beats = ("count_if(coalesce(t.correlation > greatest(coalesce(p.permuted, 0), coalesce(u.untrained, 0)) "
             "+ g.margin, false))")
    return f"""
WITH trained AS (SELECT study, layer, repeat, model, neuron, partner_model, correlation FROM neurons
                 WHERE population = 'trained'),
     permuted AS (SELECT study, layer, repeat, model, neuron, partner_model, correlation AS permuted FROM neurons
                  WHERE population = 'permuted'),
     untrained AS (SELECT study, layer, repeat, avg(correlation) AS untrained FROM neurons
                   WHERE population = 'untrained' GROUP BY study, layer, repeat),
     g AS (SELECT {margin} AS margin, {most} AS most)
SELECT t.study, t.layer, t.repeat, t.model, t.neuron, count(*)::INTEGER AS others, {beats}::INTEGER AS beats,
       {beats}::DOUBLE / count(*) AS share, avg(t.correlation) AS correlation, avg(p.permuted) AS permuted,
       any_value(u.untrained) AS untrained, g.margin, g.most,
       {beats}::DOUBLE / count(*) > g.most AS universal
FROM trained t
LEFT JOIN permuted p USING (study, layer, repeat, model, neuron, partner_model)
LEFT JOIN untrained u USING (study, layer, repeat)
CROSS JOIN g
WHERE g.margin IS NOT NULL AND g.most IS NOT NULL
GROUP BY t.study, t.layer, t.repeat, t.model, t.neuron, g.margin, g.most"""


#: The table macros of the measures: name(arguments) → SQL of their rows.
MEASURE_MACROS = {f"universal_neurons(margin := {MARGIN}, most := {MOST})": universal_neurons_select}
