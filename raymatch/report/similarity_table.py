"""Tables of a report: the layer × ε similarity table, its plain-text and markdown forms, number formatting.

:func:`similarity_table` is also what ``raymatch run`` prints at the end of a study (see :mod:`raymatch.cli`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..results import figure_data
from .context import TRAINED, UNTRAINED, ordered, population_order

#: What a table shows for a missing number.
MISSING = "—"


def similarity_table(matches: pd.DataFrame, *, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean maximum-match similarity per layer and ε, trained beside the untrained null where present.

    Only ``"ok"`` rows count; each pair's repeats are averaged first, then the pairs (see
    :func:`raymatch.results.figure_data`).

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of the ``matches`` table of one study.
    layers : sequence of str, optional
        Layer order (network order); layers not in it follow in order of first appearance. Default: order of
        first appearance.

    Returns
    -------
    pandas.DataFrame
        Index ``layer``; columns a MultiIndex ``(population, eps)`` — ``table["trained"]`` is the layer × ε table,
        ``table["untrained"]`` (when present) the null baseline. Populations trained first, ε ascending.

    Raises
    ------
    ValueError
        When ``matches`` holds rows of several studies.
    """
    data = figure_data(matches)
    studies = list(dict.fromkeys(data["study"]))
    if len(studies) > 1:
        raise ValueError(f"similarity_table needs the rows of one study; got {', '.join(studies)}")
    if data.empty:
        columns = pd.MultiIndex.from_arrays([[], []], names=["population", "eps"])
        return pd.DataFrame(index=pd.Index([], name="layer", dtype=object), columns=columns, dtype="float64")
    table = data.pivot_table(index="layer", columns=["population", "eps"], values="similarity_mean",
                             aggfunc="mean", sort=False)
    populations = population_order(data["population"])
    columns = [(population, eps) for population in populations for eps in sorted(set(data["eps"]))
               if (population, eps) in table.columns]
    table = table.reindex(index=ordered(data["layer"], layers), columns=pd.MultiIndex.from_tuples(
        columns, names=["population", "eps"]))
    table.index.name = "layer"
    return table


def format_number(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or :data:`MISSING` for None, NaN and infinities."""
    return MISSING if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def similarity_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a similarity table: ``"0.62 (null 0.21)"`` cells."""
    populations = list(dict.fromkeys(table.columns.get_level_values("population")))
    main = TRAINED if TRAINED in populations else populations[0]
    null = UNTRAINED if main != UNTRAINED and UNTRAINED in populations else None
    grid = sorted(set(table.columns.get_level_values("eps")))
    header = ["layer" if main == TRAINED else f"layer ({main})"] + [f"ε={eps:g}" for eps in grid]
    rows = []
    for layer in table.index:
        cells = [str(layer)]
        for eps in grid:
            value = table.at[layer, (main, eps)] if (main, eps) in table.columns else math.nan
            text = format_number(value)
            if null is not None and (null, eps) in table.columns and np.isfinite(table.at[layer, (null, eps)]):
                text += f" (null {table.at[layer, (null, eps)]:.2f})"
            if main != "permuted" and ("permuted", eps) in table.columns and np.isfinite(
                    table.at[layer, ("permuted", eps)]):
                text += f" (perm {table.at[layer, ('permuted', eps)]:.2f})"
            cells.append(text)
        rows.append(cells)
    return header, rows


#: The widest line :func:`format_similarity_table` prints: a terminal of 100 columns.
TABLE_WIDTH = 100
#: A layer name longer than this is shortened in the middle (``features.1…conv2.relu``) in the printed table.
_LAYER_WIDTH = 40
#: How the nulls are named in the printed table.
_NULL_LABELS = {UNTRAINED: "untrained (null)", "permuted": "permuted (null)"}


def _short(name: str, width: int = _LAYER_WIDTH) -> str:
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: (keep + 1) // 2] + "…" + name[len(name) - keep // 2:]


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned, two spaces between."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in
                                                    zip(row[1:], widths[1:], strict=True)]).rstrip() for row in rows]


def _value(table: pd.DataFrame, layer, population: str, eps: float) -> float:
    return table.at[layer, (population, eps)] if (population, eps) in table.columns else math.nan


def _labelled(table: pd.DataFrame, grid: list[float]) -> list[str]:
    """One line per layer, ``0.62 (null 0.21)`` per ε: the cells of :func:`similarity_cells`."""
    header, rows = similarity_cells(table.loc[:, [column for column in table.columns if column[1] in grid]])
    return _aligned([header] + [[_short(row[0]), *row[1:]] for row in rows])


def _compact(table: pd.DataFrame, grid: list[float]) -> list[str]:
    """One line per layer, ``0.62 | 0.21 | 0.03`` per ε (the populations in order), under a legend line."""
    populations = list(dict.fromkeys(table.columns.get_level_values("population")))
    rows = [["layer", *(f"ε={eps:g}" for eps in grid)]]
    for layer in table.index:
        rows.append([_short(str(layer)), *(" | ".join(format_number(_value(table, layer, population, eps))
                                                       for population in populations) for eps in grid)])
    legend = "each cell: " + " | ".join(_NULL_LABELS.get(population, population) for population in populations)
    return [legend, *_aligned(rows)]


def _stacked(table: pd.DataFrame, grid: list[float]) -> list[str]:
    """One value per cell: a line per layer for the first population, the nulls on the lines below it."""
    populations = list(dict.fromkeys(table.columns.get_level_values("population")))
    label = "layer" if populations[0] == TRAINED else f"layer ({populations[0]})"
    if len(populations) > 1:
        label += ", nulls below" if populations[0] == TRAINED else "; nulls below"
    rows = [[label, *(f"ε={eps:g}" for eps in grid)]]
    for layer in table.index:
        for index, population in enumerate(populations):
            name = _short(str(layer)) if index == 0 else f"  {_NULL_LABELS.get(population, population)}"
            rows.append([name, *(format_number(_value(table, layer, population, eps)) for eps in grid)])
    return _aligned(rows)


def _fitting_grid(table: pd.DataFrame, grid: list[float], width: int) -> list[float]:
    """The most ε of ``grid`` (evenly spread, first and last kept) whose one-value-per-cell table fits ``width``."""
    for count in range(len(grid) - 1, 1, -1):
        chosen = [grid[int(i)] for i in np.unique(np.round(np.linspace(0, len(grid) - 1, count)))]
        if max(map(len, _stacked(table, chosen))) <= width:
            return chosen
    return grid[:1]


def format_similarity_table(table: pd.DataFrame, *, width: int = TABLE_WIDTH) -> str:
    """Aligned plain text of a :func:`similarity_table` that fits ``width`` columns (a terminal's 100).

    The first form that fits: one line per layer with ``0.62 (null 0.21)`` per ε; the same with a compact
    ``0.62 | 0.21 | 0.03`` per ε and a legend line naming the populations; one value per cell with the nulls on
    lines of their own under each layer; and, when even that is too wide, as many ε of the grid as fit (evenly
    spread, the first and the last kept), with a line naming those left out and the ``raymatch query`` that gives
    them all. Layer names longer than 40 characters are shortened in the middle.

    Parameters
    ----------
    table : pandas.DataFrame
        As returned by :func:`similarity_table`.
    width : int, default :data:`TABLE_WIDTH`
        The widest line allowed.

    Returns
    -------
    str
        Lines without a trailing newline; ``"(no ok match rows)"`` for an empty table.
    """
    if table.empty:
        return "(no ok match rows)"
    grid = sorted(set(table.columns.get_level_values("eps")))
    for form in (_labelled, _compact, _stacked):
        lines = form(table, grid)
        if max(map(len, lines)) <= width:
            return "\n".join(lines)
    chosen = _fitting_grid(table, grid, width)
    left_out = [eps for eps in grid if eps not in chosen]
    named = f"{len(left_out)} more ε not shown ({', '.join(f'{eps:g}' for eps in left_out)}); every ε of every layer:"
    return "\n".join([*_stacked(table, chosen),
                      named if len(named) <= width else f"{len(left_out)} more ε not shown; every ε of every layer:",
                      "  raymatch query STORE \\",
                      "    \"SELECT layer, population, eps, avg(similarity) FROM matches GROUP BY ALL ORDER BY ALL\""])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: ``header`` and ``rows`` of cells, the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
