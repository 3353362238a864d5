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


def format_similarity_table(table: pd.DataFrame) -> str:
    """Aligned plain text of a :func:`similarity_table`: one line per layer, ``0.62 (null 0.21)`` per ε.

    Parameters
    ----------
    table : pandas.DataFrame
        As returned by :func:`similarity_table`.

    Returns
    -------
    str
        Lines without a trailing newline; ``"(no ok match rows)"`` for an empty table.
    """
    if table.empty:
        return "(no ok match rows)"
    header, rows = similarity_cells(table)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = []
    for line in [header, *rows]:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:],
                                                                                           strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: ``header`` and ``rows`` of cells, the first column left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
