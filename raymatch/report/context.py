"""What the figures and the summary of a report share: the populations, the layer order and the study's rows.

:class:`ReportContext` is filled by :func:`raymatch.report.command.read_context` from a store;
:mod:`.figures` draws from it and :mod:`.summary` writes from it. This module reads nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

TRAINED, UNTRAINED = "trained", "untrained"
DEFAULT_EPS = 0.25


def ordered(values: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """``values`` (distinct, order of appearance) sorted by ``order``; values outside it keep their order, last."""
    values = list(dict.fromkeys(values))
    if not order:
        return values
    first = [name for name in order if name in values]
    return first + [name for name in values if name not in first]


def population_order(values) -> list[str]:
    """The distinct populations of ``values``: trained first, then untrained, then any other in order of appearance."""
    present = list(dict.fromkeys(values))
    return [name for name in (TRAINED, UNTRAINED) if name in present] + [
        name for name in present if name not in (TRAINED, UNTRAINED)]


@dataclass
class ReportContext:
    """Everything the figures and the summary share.

    Attributes
    ----------
    study : str
        The study reported on.
    matches : pandas.DataFrame
        Every ``matches`` row of the study (one row per pair × layer × ε × repeat), failed ones included.
    ok : pandas.DataFrame
        Its ``"ok"`` rows, the only ones drawn.
    layers : list of str
        The layers drawn, in network order when the study record gives it.
    layer_order : str
        ``"record"`` (from the study record) or ``"table"`` (order of first appearance in ``matches``).
    notes : list of str
        Remarks on the layer order and the record, for the summary.
    record : dict or None
        The study record, when the store has a usable one.
    grid : list of float
        The ε of the ``"ok"`` rows (the study's grid), ascending.
    eps : float or None
        The ε of the CKA and repeats figures: the ε asked for (the grid's own value when it is in the grid);
        None without ``"ok"`` rows.
    off_grid : bool
        Whether :attr:`eps` is not in the grid: its rows then come from ``matches_at(eps)`` (the stored curves at
        that ε, nothing recomputed) and the similarity table gets a column for it.
    at_eps : pandas.DataFrame
        The ``"ok"`` ``matches`` rows at :attr:`eps` (from :attr:`ok`, or from ``matches_at(eps)`` off the grid).
    populations : list of str
        The populations of ``matches``, trained first.
    simple : pandas.DataFrame
        The study's ``simple_matches`` rows (of its current configuration).
    cka : pandas.DataFrame
        The study's ``cka`` rows.
    curves : pandas.DataFrame, optional
        The study's ``"ok"`` ``curves`` rows (per-neuron critical ε), for the ε-curve figure.
    universality : pandas.DataFrame, optional
        ``universality(eps)`` rows of the study at :attr:`eps`.
    """

    study: str
    matches: pd.DataFrame  # every row of the study
    ok: pd.DataFrame  # its "ok" rows
    layers: list[str]
    layer_order: str
    notes: list[str]  # about the layer order and the record
    record: dict | None
    grid: list[float]
    eps: float | None
    populations: list[str]
    simple: pd.DataFrame
    cka: pd.DataFrame
    off_grid: bool = False
    at_eps: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    universality: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.at_eps is None:  # in the grid: the "ok" rows at eps
            self.at_eps = self.ok.loc[self.ok["eps"] == self.eps].reset_index(drop=True)

    def eps_colours(self) -> dict[float, Any]:
        """One viridis colour (RGBA tuple) per ε of :attr:`grid`, the same in every figure."""
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        # viridis's last tenth (yellow) is hard to read on white
        return {eps: cmap(0.85 * index / max(len(self.grid) - 1, 1)) for index, eps in enumerate(self.grid)}

    def eps_colour(self, eps: float | None, default: Any = "tab:green") -> Any:
        """The colour of ``eps``: its grid colour, else one between its grid neighbours' (``default`` without one)."""
        colours = self.eps_colours()
        if eps in colours:
            return colours[eps]
        if eps is None or not self.grid:
            return default
        from matplotlib import colormaps

        position = np.interp(eps, self.grid, np.arange(len(self.grid)))
        return colormaps["viridis"](0.85 * position / max(len(self.grid) - 1, 1))


def per_layer_chance(ctx: ReportContext) -> pd.Series:
    """Mean chance ratio √(1 − k/d) of the ``"ok"`` rows per layer, indexed by ``ctx.layers`` (NaN where none)."""
    return ctx.ok.groupby("layer", sort=False)["chance"].mean().reindex(ctx.layers)
