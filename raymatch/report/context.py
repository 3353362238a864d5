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
#: Where the interactive page's ε slider starts when the report has no ε of its own (no ``"ok"`` rows).
DEFAULT_EPS = 0.25
#: The report's ε of a layer, unless ``--eps`` forces one: the median over the trained pairs (and repeats) of the
#: smallest ε at which this share of the live neurons of each side is matched (``eps_for_share(0.5)``), rounded up
#: to 3 decimals.
REPORT_SHARE = 0.5


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
        The ε asked for (``--eps``; the grid's own value when it is in the grid), the ε of every layer's panels;
        None when each layer has its own (:attr:`layer_eps`), and without ``"ok"`` rows.
    off_grid : bool
        Whether an ε of :attr:`layer_eps` is not in the grid: its rows then come from ``matches_at(eps)`` (the
        stored curves at that ε, nothing recomputed); an ε asked for off the grid gets a column of the similarity
        table.
    at_eps : pandas.DataFrame
        The ``"ok"`` ``matches`` rows of each layer at its ε of :attr:`layer_eps` (from :attr:`ok`, or from
        ``matches_at(eps)`` off the grid).
    populations : list of str
        The populations of ``matches``, trained first.
    simple : pandas.DataFrame
        The study's ``simple_matches`` rows (of its current configuration).
    cka : pandas.DataFrame
        The study's ``cka`` rows.
    curves : pandas.DataFrame, optional
        The study's ``"ok"`` ``curves`` rows (per-neuron critical ε), for the ε-curve figure.
    universality : pandas.DataFrame, optional
        ``universality(eps)`` rows of the study, each layer's at its ε of :attr:`layer_eps`.
    layer_eps : dict of str to float
        The ε of each layer's panels (CKA beside the match, repeats, universality, the summary's tables): the ε
        asked for, else the layer's by :data:`REPORT_SHARE`. A layer with ``"ok"`` rows but no ε is in
        :attr:`eps_missing`.
    eps_missing : dict of str to str
        Why a layer has no ε of its own (no pair with live neurons on both sides).
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
    layer_eps: dict[str, float] | None = None
    eps_missing: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.layer_eps is None:
            self.layer_eps = {} if self.eps is None else {layer: self.eps for layer in self.layers}
        self.eps_missing = dict(self.eps_missing or {})
        if self.at_eps is None:  # in the grid: the "ok" rows of each layer at its ε
            self.at_eps = rows_at_layer_eps(self.ok, self.layer_eps)

    @property
    def per_layer(self) -> bool:
        """Whether each layer has its own ε (no ε asked for)."""
        return self.eps is None and bool(self.layer_eps)

    def eps_label(self, layer: str) -> str:
        """``ε = 0.273`` for a layer's ε, or ``no ε`` when it has none."""
        eps = self.layer_eps.get(layer)
        return "no ε" if eps is None else f"ε = {eps:g}"

    def eps_rule(self) -> str:
        """One line: which ε the panels use, and how it was chosen."""
        if self.eps is not None:
            return f"ε = {self.eps:g} in every panel (asked for with --eps)"
        share = "half" if REPORT_SHARE == 0.5 else f"a share {REPORT_SHARE:g}"
        return (f"each layer's own ε, the median over its trained pairs of the smallest ε at which {share} of the "
                f"live neurons of each side are matched (eps_for_share({REPORT_SHARE:g}), rounded up to 3 decimals)")

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


def rows_at_layer_eps(rows: pd.DataFrame, layer_eps: dict[str, float]) -> pd.DataFrame:
    """The rows of ``rows`` (``matches`` at the grid) of each layer at its ε of ``layer_eps``."""
    wanted = rows["layer"].map(layer_eps)
    return rows.loc[wanted.notna() & (rows["eps"] == wanted)].reset_index(drop=True)


def per_layer_chance(ctx: ReportContext) -> pd.Series:
    """Mean chance ratio √(1 − k/d) of the ``"ok"`` rows per layer, indexed by ``ctx.layers`` (NaN where none)."""
    return ctx.ok.groupby("layer", sort=False)["chance"].mean().reindex(ctx.layers)
