"""``raymatch report``: figures and a short summary of one study's results tables.

:func:`write_report` reads a store's ``matches``, ``simple_matches`` and ``cka`` tables (see
:mod:`raymatch.results`) and the study's record ``studies/<name>.json`` (for the layers in network order), and
writes into a folder:

- ``similarity.png`` — the paper's figure: maximum-match similarity per layer, one line per ε (mean over pairs,
  min–max band), the untrained null baseline dashed in the same colour;
- ``max_epsilon.png`` — each pair's maximal ε per layer, trained beside untrained, with the chance ratio
  √(1 − k/d) of each layer marked;
- ``simple_match_sizes.png`` — sizes |X| + |Y| of the simple matches per layer;
- ``cka.png`` — linear CKA per layer beside the match similarity at one ε;
- ``repeats.png`` — spread of the similarity over row-sample repeats (conv layers under the paper's protocol);
- ``summary.md`` — counts, the layer × ε similarity table with the null beside it, maximal ε and CKA per layer,
  which figures were written or skipped and why, and caveats.

Only ``"ok"`` rows are drawn; failed rows are counted in the summary. A figure without data is skipped, and the
summary says why. Figures are built with matplotlib's object API on the Agg canvas (no pyplot, so no global
figure registry grows); :class:`Report` keeps them, and the data they were drawn from, for inspection.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import figure_data, load, pair_summary
from .store import Store

TRAINED, UNTRAINED = "trained", "untrained"
DEFAULT_EPS = 0.25
FIGURE_NAMES = ("similarity.png", "max_epsilon.png", "simple_match_sizes.png", "cka.png", "repeats.png")
SUMMARY_NAME = "summary.md"

_STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
    "legend.fontsize": 10, "figure.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3, "savefig.dpi": 150,
}
_POPULATION_COLOURS = {TRAINED: "tab:blue", UNTRAINED: "tab:gray"}
_CKA_COLOUR = "tab:purple"
_MISSING = "—"


@dataclass
class FigureResult:
    """One figure of a report: where it was written (or why not), what it drew and from which data.

    Attributes
    ----------
    name : str
        File name, e.g. ``"similarity.png"``.
    path : Path or None
        The file written; None when the figure was skipped.
    skipped : str or None
        Why the figure was skipped; None when it was written.
    caption : str
        What the marks mean (the spread used, the populations, the ε).
    figure : matplotlib.figure.Figure or None
        The figure drawn (not registered with pyplot).
    data : pandas.DataFrame or None
        The numbers the figure was drawn from.
    artists : dict
        The artists drawn, by role (e.g. ``{"trained": {eps: Line2D}, "bands": {...}, "untrained": {...}}``).
    """

    name: str
    path: Path | None = None
    skipped: str | None = None
    caption: str = ""
    figure: Any = None
    data: pd.DataFrame | None = None
    artists: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """What :func:`write_report` wrote and used.

    Attributes
    ----------
    study : str
        The study reported on.
    out_dir : Path
        The folder written into.
    summary_path : Path
        ``<out_dir>/summary.md``.
    figures : dict of str to FigureResult
        Every figure of :data:`FIGURE_NAMES`, written or skipped.
    layers : list of str
        The layers drawn, in network order.
    layer_order : str
        ``"record"`` (from ``studies/<study>.json``) or ``"table"`` (order of first appearance in ``matches``).
    record : dict or None
        The study record, when the store has one.
    similarity_table : pandas.DataFrame
        :func:`similarity_table` of the study's matches.
    eps : float
        The ε of the CKA and repeats figures (the grid's value nearest the one asked for).
    summary : str
        The text of ``summary.md``.
    """

    study: str
    out_dir: Path
    summary_path: Path
    figures: dict[str, FigureResult]
    layers: list[str]
    layer_order: str
    record: dict | None
    similarity_table: pd.DataFrame
    eps: float | None
    summary: str

    @property
    def paths(self) -> list[Path]:
        """Every file written: the figures drawn, then ``summary.md``."""
        return [result.path for result in self.figures.values() if result.path is not None] + [self.summary_path]

    @property
    def skipped(self) -> dict[str, str]:
        """Figures not written, with the reason."""
        return {name: result.skipped for name, result in self.figures.items() if result.skipped is not None}


# ------------------------------------------------------------------------------------------------ tables


def _ordered(values: Sequence[str], order: Sequence[str] | None) -> list[str]:
    """``values`` (distinct, order of appearance) sorted by ``order``; values outside it keep their order, last."""
    values = list(dict.fromkeys(values))
    if not order:
        return values
    first = [name for name in order if name in values]
    return first + [name for name in values if name not in first]


def _populations(values) -> list[str]:
    present = list(dict.fromkeys(values))
    return [name for name in (TRAINED, UNTRAINED) if name in present] + [
        name for name in present if name not in (TRAINED, UNTRAINED)]


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
    populations = _populations(data["population"])
    columns = [(population, eps) for population in populations for eps in sorted(set(data["eps"]))
               if (population, eps) in table.columns]
    table = table.reindex(index=_ordered(data["layer"], layers), columns=pd.MultiIndex.from_tuples(
        columns, names=["population", "eps"]))
    table.index.name = "layer"
    return table


def _number(value: float, digits: int = 2) -> str:
    return _MISSING if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _similarity_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
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
            text = _number(value)
            if null is not None and (null, eps) in table.columns and np.isfinite(table.at[layer, (null, eps)]):
                text += f" (null {table.at[layer, (null, eps)]:.2f})"
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
    header, rows = _similarity_cells(table)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
    lines = []
    for line in [header, *rows]:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:],
                                                                                           strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ context


@dataclass
class _Context:
    """Everything the figures and the summary share."""

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

    def eps_colours(self) -> dict[float, Any]:
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        # viridis's last tenth (yellow) is hard to read on white
        return {eps: cmap(0.85 * index / max(len(self.grid) - 1, 1)) for index, eps in enumerate(self.grid)}


def _choose_study(store: Store, matches: pd.DataFrame, study: str | None) -> str:
    studies = sorted(set(matches["study"]))
    if not studies:
        raise ValueError(f"store {store.uri} holds no match results (results/matches is empty): run a study first")
    if study is None:
        if len(studies) > 1:
            raise ValueError(f"store {store.uri} holds several studies ({', '.join(studies)}): choose one with "
                             "--study NAME")
        return studies[0]
    if study not in studies:
        raise ValueError(f"study {study!r} has no match results in store {store.uri} (studies there: "
                         f"{', '.join(studies)})")
    return study


def _read_record(store: Store, study: str) -> tuple[dict | None, str | None]:
    """The study record and, when it is missing or unusable, why."""
    key = f"studies/{study}.json"
    try:
        if not store.exists(key):
            return None, f"no study record {key}"
        record = store.read_json(key)
    except (ValueError, OSError) as error:  # a name that cannot be a key, unreadable JSON
        return None, f"study record {key} unreadable ({error})"
    if not isinstance(record, dict):
        return None, f"study record {key} is not a JSON object"
    return record, None


def _context(store: Store, study: str | None, eps: float) -> _Context:
    if store.is_local and not os.path.isdir(store.root):
        raise ValueError(f"store {store.uri!r} does not exist (no folder {store.root})")
    every = load(store, "matches")
    study = _choose_study(store, every, study)
    matches = every.loc[every["study"] == study].reset_index(drop=True)
    ok = matches.loc[matches["status"] == "ok"].reset_index(drop=True)

    notes: list[str] = []
    record, problem = _read_record(store, study)
    record_layers = record.get("layers") if record else None
    if record is not None and not (isinstance(record_layers, list) and record_layers
                                   and all(isinstance(name, str) for name in record_layers)):
        problem = f"study record studies/{study}.json has no list of layer names"
        record_layers = None
    present = list(dict.fromkeys(ok["layer"]))
    if record_layers:
        layer_order = "record"
        layers = _ordered(present, record_layers)
        extra = [name for name in layers if name not in record_layers]
        if extra:
            notes.append(f"layers not in the study record (drawn last): {', '.join(extra)}")
        idle = [name for name in record_layers if name not in present]
        if idle:
            notes.append(f"layers of the record without ok rows: {', '.join(idle)}")
    else:
        layer_order = "table"
        layers = present
        notes.append(f"{problem}: layers are in order of first appearance in the matches table, "
                     "which need not be network order")

    grid = sorted(set(ok["eps"].astype(float)))
    chosen = min(grid, key=lambda value: (abs(value - eps), value)) if grid else None
    simple = load(store, "simple_matches", study=study)
    cka = load(store, "cka", study=study)
    return _Context(study=study, matches=matches, ok=ok, layers=layers, layer_order=layer_order, notes=notes,
                    record=record, grid=grid, eps=chosen, populations=_populations(matches["population"]),
                    simple=simple, cka=cka)


# ------------------------------------------------------------------------------------------------ drawing


def _new_figure(n_layers: int, height: float = 4.8, *, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = min(3.5 + (0.55 * n_layers + 1.5) * ncols, 20.0)
    figure = Figure(figsize=(max(width, 7.5), height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _layer_axis(axes, layers: list[str], ctx: _Context) -> None:
    """Layers as categorical ticks in the report's order; labels rotated when they would collide."""
    positions = np.arange(len(layers))
    slot_inches = axes.figure.get_figwidth() * axes.get_position().width / max(len(layers), 1)
    # about 0.09 inch per character at 10 pt
    rotate = max((len(name) for name in layers), default=0) * 0.09 > slot_inches * 0.9
    axes.set_xticks(positions, labels=layers, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                    rotation_mode="anchor")
    axes.set_xlim(-0.5, len(layers) - 0.5)
    axes.grid(False, axis="x")
    axes.set_xlabel("layer (network order)" if ctx.layer_order == "record" else "layer (order of first appearance)")


def _unit_axis(axes, label: str) -> None:
    axes.set_ylim(-0.02, 1.02)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel(label)


def _legend(axes, handles: list) -> None:
    """A legend beside ``axes``, outside the data (constrained layout makes room for it)."""
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _jitter(n: int, half_width: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-half_width, half_width, n)


def _spread_by_layer(values: pd.DataFrame, column: str, layers: list[str]) -> pd.DataFrame:
    """Mean, min, max and count of ``column`` over the rows of each layer, reindexed to ``layers``."""
    summary = values.groupby("layer", sort=False)[column].agg(["mean", "min", "max", "count"])
    return summary.reindex(layers)


def _similarity_figure(ctx: _Context, out_dir: Path) -> FigureResult:
    result = FigureResult("similarity.png")
    data = figure_data(ctx.ok)
    data = data.loc[data["layer"].isin(ctx.layers)].reset_index(drop=True)
    n_pairs = data.groupby("population")["n_pairs"].max().to_dict()
    figure = _new_figure(len(ctx.layers))
    axes = figure.add_subplot()
    positions = np.arange(len(ctx.layers))
    colours = ctx.eps_colours()
    trained, bands, untrained = {}, {}, {}
    # overlapping bands of a fine ε grid turn to mud unless each is fainter
    band_alpha = 0.18 if len(ctx.grid) <= 4 else max(0.06, 0.72 / len(ctx.grid))
    for eps in ctx.grid:
        colour = colours[eps]
        for population in ctx.populations:
            rows = data.loc[(data["population"] == population) & (data["eps"] == eps)].set_index("layer")
            if rows.empty:
                continue
            rows = rows.reindex(ctx.layers)
            if population == TRAINED:
                (trained[eps],) = axes.plot(positions, rows["similarity_mean"], color=colour, lw=2, marker="o",
                                            ms=5, zorder=3)
                bands[eps] = axes.fill_between(positions, rows["similarity_min"], rows["similarity_max"],
                                               color=colour, alpha=band_alpha, lw=0, zorder=2)
            else:
                (untrained[eps],) = axes.plot(positions, rows["similarity_mean"], color=colour, lw=1.6, ls="--",
                                              marker="x", ms=5, zorder=3)
    _layer_axis(axes, ctx.layers, ctx)
    _unit_axis(axes, "similarity (|X*| + |Y*|) / (n_a + n_b)")
    figure.suptitle(f"{ctx.study}: maximum-match similarity per layer")

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=colours[eps], lw=2, label=f"ε = {eps:g}") for eps in ctx.grid]
    if trained:
        handles.append(Line2D([], [], color="black", lw=2, marker="o", ms=5,
                              label=f"trained: mean over {n_pairs.get(TRAINED, 0)} pairs"))
        handles.append(Patch(color="black", alpha=max(band_alpha, 0.12), lw=0, label="trained: min–max over pairs"))
    if untrained:
        handles.append(Line2D([], [], color="black", lw=1.6, ls="--", marker="x", ms=5,
                              label=f"untrained (null): mean over {n_pairs.get(UNTRAINED, 0)} pairs"))
    _legend(axes, handles)
    result.caption = ("Maximum-match similarity per layer: solid lines are the mean over trained pairs (each "
                      "pair's repeats averaged first), bands the min–max over pairs"
                      + ("; dashed lines the untrained null baseline (same architecture at initialisation, "
                         "same pairs)" if untrained else "; no untrained null baseline in the store") + ".")
    result.figure, result.data = figure, data
    result.artists = {"trained": trained, "bands": bands, "untrained": untrained}
    return _save(result, out_dir)


def _per_layer_chance(ctx: _Context) -> pd.Series:
    return ctx.ok.groupby("layer", sort=False)["chance"].mean().reindex(ctx.layers)


def _max_epsilon_figure(ctx: _Context, out_dir: Path) -> FigureResult:
    result = FigureResult("max_epsilon.png")
    pairs = pair_summary(ctx.ok)
    data = pairs.loc[pairs["layer"].isin(ctx.layers), ["population", "model_a", "model_b", "layer",
                                                      "max_epsilon"]].reset_index(drop=True)
    chance = _per_layer_chance(ctx)
    populations = _populations(data["population"])
    figure = _new_figure(len(ctx.layers))
    axes = figure.add_subplot()
    width = 0.7 / len(populations)
    boxes, points = {}, {}
    for index, population in enumerate(populations):
        offset = (index - (len(populations) - 1) / 2) * width
        colour = _POPULATION_COLOURS.get(population, f"C{index + 2}")
        rows = data.loc[data["population"] == population]
        values, positions = [], []
        for position, layer in enumerate(ctx.layers):
            layer_values = rows.loc[rows["layer"] == layer, "max_epsilon"].dropna().to_numpy()
            if layer_values.size:
                values.append(layer_values)
                positions.append(position + offset)
        if not values:
            continue
        drawn = axes.boxplot(values, positions=positions, widths=width * 0.8, patch_artist=True, manage_ticks=False,
                             showfliers=False, medianprops={"color": "black"},
                             boxprops={"facecolor": colour, "alpha": 0.35, "edgecolor": colour})
        boxes[population] = drawn["boxes"]
        xs = np.concatenate([np.full(len(v), p) for v, p in zip(values, positions, strict=True)])
        ys = np.concatenate(values)
        points[population] = axes.scatter(xs + _jitter(len(xs), width * 0.2, index), ys, s=14, color=colour,
                                          edgecolor="white", linewidth=0.4, zorder=3)
    marks = axes.hlines(chance.to_numpy(), np.arange(len(ctx.layers)) - 0.4, np.arange(len(ctx.layers)) + 0.4,
                        colors="black", linestyles=":", lw=2, zorder=4)
    _layer_axis(axes, ctx.layers, ctx)
    _unit_axis(axes, "maximal ε (every live neuron matched)")
    figure.suptitle(f"{ctx.study}: maximal ε per layer over pairs")

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=_POPULATION_COLOURS.get(population, f"C{index + 2}"), alpha=0.5,
                     label=f"{population} pairs" + (" (null)" if population == UNTRAINED else ""))
               for index, population in enumerate(populations) if population in boxes]
    handles.append(Line2D([], [], color="black", ls=":", lw=2, label="chance ratio √(1 − k/d)"))
    _legend(axes, handles)
    result.caption = ("Maximal ε per layer (the smallest ε at which every live neuron of a pair is matched), one "
                      "point per pair (repeats averaged), boxes of the quartiles; dotted: the ratio √(1 − k/d) of "
                      "a random vector against a k-dimensional span in R^d (k neurons, d samples).")
    result.figure, result.data = figure, data.assign(chance=data["layer"].map(chance))
    result.artists = {"boxes": boxes, "points": points, "chance": marks}
    return _save(result, out_dir)


def _simple_sizes_figure(ctx: _Context, out_dir: Path) -> FigureResult:
    result = FigureResult("simple_match_sizes.png")
    if ctx.simple.empty:
        result.skipped = "the simple_matches table has no rows for this study (simple_matches not enabled?)"
        return result
    data = ctx.simple.assign(size=ctx.simple["size_a"] + ctx.simple["size_b"])[
        ["population", "layer", "eps", "model_a", "model_b", "size_a", "size_b", "size"]]
    layers = _ordered(data["layer"], ctx.layers)
    populations = _populations(data["population"])
    grid = sorted(set(data["eps"]))
    groups = [(population, eps) for population in populations for eps in grid
              if ((data["population"] == population) & (data["eps"] == eps)).any()]
    colours = ctx.eps_colours()
    figure = _new_figure(len(layers))
    axes = figure.add_subplot()
    width = 0.75 / len(groups)
    boxes = {}
    for index, (population, eps) in enumerate(groups):
        offset = (index - (len(groups) - 1) / 2) * width
        colour = colours.get(eps, "tab:green")
        rows = data.loc[(data["population"] == population) & (data["eps"] == eps)]
        values, positions = [], []
        for position, layer in enumerate(layers):
            sizes = rows.loc[rows["layer"] == layer, "size"].to_numpy()
            if sizes.size:
                values.append(sizes)
                positions.append(position + offset)
        hollow = population != TRAINED
        drawn = axes.boxplot(values, positions=positions, widths=width * 0.85, patch_artist=True,
                             manage_ticks=False, medianprops={"color": "black"},
                             flierprops={"marker": ".", "markersize": 4, "markeredgecolor": colour},
                             boxprops={"facecolor": "white" if hollow else colour, "alpha": 1.0 if hollow else 0.55,
                                       "edgecolor": colour})
        if hollow:
            for box in drawn["boxes"]:
                box.set_linestyle("--")
        boxes[(population, eps)] = drawn["boxes"]
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    _layer_axis(axes, layers, ctx)
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("simple-match size |X| + |Y| (neurons)")
    figure.suptitle(f"{ctx.study}: sizes of the simple matches ({len(data)} found)")
    handles = [Patch(facecolor=colours.get(eps, "tab:green"), alpha=0.55, label=f"ε = {eps:g}") for eps in grid]
    if any(population != TRAINED for population, _ in groups):
        handles += [Patch(facecolor="lightgray", edgecolor="black", label="trained: filled"),
                    Patch(facecolor="white", edgecolor="black", ls="--", label="untrained (null): hollow")]
    _legend(axes, handles)
    result.caption = ("Sizes |X| + |Y| of the distinct simple matches found per layer, over every pair "
                      "(boxes of the quartiles, whiskers 1.5 IQR, outliers as dots), one box per ε"
                      + (" and population" if len(populations) > 1 else "") + ".")
    result.figure, result.data = figure, data.reset_index(drop=True)
    result.artists = {"boxes": boxes}
    return _save(result, out_dir)


def _draw_spread(axes, summary: pd.DataFrame, colour, *, dashed: bool):
    positions = np.arange(len(summary))
    (line,) = axes.plot(positions, summary["mean"], color=colour, lw=1.6 if dashed else 2, ls="--" if dashed else "-",
                        marker="x" if dashed else "o", ms=5, zorder=3)
    band = None if dashed else axes.fill_between(positions, summary["min"], summary["max"], color=colour,
                                                 alpha=0.18, lw=0, zorder=2)
    return line, band


def _cka_figure(ctx: _Context, out_dir: Path) -> FigureResult:
    result = FigureResult("cka.png")
    if ctx.cka.empty:
        result.skipped = "the cka table has no rows for this study (cka not enabled?)"
        return result
    per_pair = ctx.cka.groupby(["population", "layer", "model_a", "model_b"], sort=False)["cka"].mean().reset_index()
    layers = _ordered(per_pair["layer"], ctx.layers)
    similarity = pd.DataFrame(columns=["population", "layer", "model_a", "model_b", "similarity"])
    if ctx.eps is not None:
        at_eps = ctx.ok.loc[ctx.ok["eps"] == ctx.eps]
        similarity = at_eps.groupby(["population", "layer", "model_a", "model_b"], sort=False)[
            "similarity"].mean().reset_index()
    figure = _new_figure(len(layers), ncols=2)
    cka_axes, match_axes = figure.subplots(1, 2, sharey=True)
    colour = ctx.eps_colours().get(ctx.eps, "tab:green")
    artists: dict[str, dict] = {"cka": {}, "similarity": {}}
    for population in _populations([*per_pair["population"], *similarity["population"]]):
        dashed = population != TRAINED
        for axes, values, column, line_colour, key in ((cka_axes, per_pair, "cka", _CKA_COLOUR, "cka"),
                                                       (match_axes, similarity, "similarity", colour, "similarity")):
            rows = values.loc[values["population"] == population]
            if rows.empty:
                continue
            artists[key][population] = _draw_spread(axes, _spread_by_layer(rows, column, layers), line_colour,
                                                    dashed=dashed)
    _layer_axis(cka_axes, layers, ctx)
    _layer_axis(match_axes, layers, ctx)
    _unit_axis(cka_axes, "value")
    match_axes.tick_params(labelleft=True)
    cka_axes.set_title("linear CKA")
    eps_text = f"ε = {ctx.eps:g}" if ctx.eps is not None else "no ok rows"
    match_axes.set_title(f"maximum-match similarity at {eps_text}")
    figure.suptitle(f"{ctx.study}: linear CKA beside the subspace match")

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="black", lw=2, marker="o", ms=5, label="trained: mean over pairs"),
               Patch(color="black", alpha=0.18, lw=0, label="trained: min–max over pairs")]
    if any(UNTRAINED in drawn for drawn in artists.values()):
        handles.append(Line2D([], [], color="black", lw=1.6, ls="--", marker="x", ms=5,
                              label="untrained (null): mean"))
    _legend(match_axes, handles)
    result.caption = (f"Linear CKA (left) and maximum-match similarity at {eps_text} (right) per layer: solid lines "
                      "the mean over trained pairs (repeats averaged), bands the min–max over pairs, dashed the "
                      "untrained null baseline where present.")
    data = per_pair.merge(similarity, how="outer", on=["population", "layer", "model_a", "model_b"])
    result.figure, result.data, result.artists = figure, data, artists
    return _save(result, out_dir)


def _repeats_figure(ctx: _Context, out_dir: Path) -> FigureResult:
    result = FigureResult("repeats.png")
    keys = ["population", "layer", "model_a", "model_b"]
    if ctx.eps is None:
        result.skipped = "no ok match rows"
        return result
    at_eps = ctx.ok.loc[ctx.ok["eps"] == ctx.eps]
    per_pair = at_eps.groupby(keys, sort=False)["similarity"].agg(repeats="count", std="std", mean="mean",
                                                                   low="min", high="max").reset_index()
    sampled = per_pair.groupby("layer", sort=False)["repeats"].max()
    layers = [layer for layer in ctx.layers if sampled.get(layer, 0) > 1]
    if not layers:
        result.skipped = "every layer has a single repeat (no row sampling over several draws)"
        return result
    data = per_pair.loc[per_pair["layer"].isin(layers) & (per_pair["repeats"] > 1)].reset_index(drop=True)
    populations = _populations(data["population"])
    figure = _new_figure(len(layers))
    axes = figure.add_subplot()
    width = 0.7 / len(populations)
    points, means = {}, {}
    for index, population in enumerate(populations):
        offset = (index - (len(populations) - 1) / 2) * width
        colour = _POPULATION_COLOURS.get(population, f"C{index + 2}")
        rows = data.loc[data["population"] == population]
        xs = rows["layer"].map({layer: position for position, layer in enumerate(layers)}).to_numpy(float) + offset
        points[population] = axes.scatter(xs + _jitter(len(xs), width * 0.25, index), rows["std"], s=16,
                                          color=colour, edgecolor="white", linewidth=0.4, zorder=3)
        mean = rows.groupby("layer", sort=False)["std"].mean().reindex(layers)
        centres = np.arange(len(layers)) + offset
        means[population] = axes.hlines(mean.to_numpy(), centres - width * 0.4, centres + width * 0.4,
                                        colors=colour, lw=2.5, zorder=4)
    _layer_axis(axes, layers, ctx)
    axes.set_ylim(bottom=0)
    axes.set_ylabel("std of similarity over repeats")
    counts = sorted(set(data["repeats"]))
    repeats_text = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    figure.suptitle(f"{ctx.study}: spread over {repeats_text} row-sample repeats at ε = {ctx.eps:g}")

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_POPULATION_COLOURS.get(population, f"C{index + 2}"), marker="o", ls="",
                      label=f"{population}: one point per pair") for index, population in enumerate(populations)]
    handles.append(Line2D([], [], color="black", lw=2.5, label="mean over pairs"))
    _legend(axes, handles)
    result.caption = (f"Sample standard deviation of each pair's similarity over its row-sample repeats at "
                      f"ε = {ctx.eps:g}, for the layers sampled more than once; bars: mean over pairs.")
    result.figure, result.data = figure, data
    result.artists = {"points": points, "means": means}
    return _save(result, out_dir)


def _save(result: FigureResult, out_dir: Path) -> FigureResult:
    result.path = out_dir / result.name
    result.figure.savefig(result.path, format="png")
    return result


# ------------------------------------------------------------------------------------------------ summary


def _describe(value: Any, *, nested: bool = False) -> str:
    """``{"name": "vgg11", "rows": {"rows": 10}}`` as ``name vgg11, rows (rows 10)``."""
    if isinstance(value, dict):
        text = ", ".join(f"{key} {_describe(item, nested=True)}" for key, item in value.items() if item is not None)
        return f"({text})" if nested else text
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def _spread_text(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return _MISSING
    text = f"{values.mean():.2f}"
    return text if len(values) == 1 else f"{text} [{values.min():.2f}–{values.max():.2f}]"


def _population_lines(ctx: _Context) -> list[str]:
    lines = []
    for population in ctx.populations:
        rows = ctx.matches.loc[ctx.matches["population"] == population]
        models = sorted(set(rows["model_a"]) | set(rows["model_b"]))
        pairs = len(rows[["model_a", "model_b"]].drop_duplicates())
        shown = f" ({', '.join(models)})" if len(models) <= 6 else ""
        lines.append(f"- {population.capitalize()}: {len(models)} models{shown}, {pairs} pairs")
    return lines


def _count_lines(ctx: _Context) -> list[str]:
    status = ctx.matches["status"].value_counts()
    line = f"- Match rows: {status.get('ok', 0)} ok, {status.get('failed', 0)} failed (failed rows are not drawn)"
    lines = [line]
    failed = ctx.matches.loc[ctx.matches["status"] == "failed"]
    if not failed.empty:
        by_layer = failed.groupby("layer", sort=False).size()
        lines.append("  - failed by layer: " + ", ".join(f"{layer} {count}" for layer, count in by_layer.items()))
        first = str(failed["error"].iloc[0]).splitlines()[0]
        lines.append(f"  - first error: `{first}` (all: `raymatch query STORE \"SELECT * FROM matches WHERE "
                     f"status = 'failed'\"`)")
    lines.append(f"- Simple matches: {len(ctx.simple)}; CKA rows: {len(ctx.cka)}")
    return lines


def _layer_table(ctx: _Context) -> str:
    pairs = pair_summary(ctx.ok)
    chance = _per_layer_chance(ctx)
    header = ["layer", "neurons", "samples", "repeats", "chance √(1−k/d)"] + [
        f"max ε {population}" for population in _populations(pairs["population"])]
    rows = []
    for layer in ctx.layers:
        layer_rows = ctx.ok.loc[ctx.ok["layer"] == layer]
        neurons = sorted(set(layer_rows["n_a"]) | set(layer_rows["n_b"]))
        samples = sorted(set(layer_rows["n_samples"]))
        row = [layer, "/".join(str(int(n)) for n in neurons), "/".join(str(int(n)) for n in samples),
               str(layer_rows["repeat"].nunique()), _number(chance.get(layer, math.nan), 3)]
        for population in _populations(pairs["population"]):
            selected = pairs.loc[(pairs["population"] == population) & (pairs["layer"] == layer), "max_epsilon"]
            row.append(_spread_text(selected))
        rows.append(row)
    return _markdown_table(header, rows)


def _cka_table(ctx: _Context) -> str:
    per_pair = ctx.cka.groupby(["population", "layer", "model_a", "model_b"], sort=False)["cka"].mean().reset_index()
    populations = _populations(per_pair["population"])
    rows = []
    for layer in _ordered(per_pair["layer"], ctx.layers):
        rows.append([layer] + [_spread_text(per_pair.loc[(per_pair["population"] == population)
                                                         & (per_pair["layer"] == layer), "cka"])
                               for population in populations])
    return _markdown_table(["layer"] + [f"CKA {population}" for population in populations], rows)


def _caveats(ctx: _Context) -> str:
    parts = []
    probe = (ctx.record or {}).get("probe")
    if isinstance(probe, dict) and probe.get("dataset"):
        examples = probe.get("n_examples") or "all"
        text = f"activations from the {probe.get('split', '?')} split of {probe['dataset']} ({examples} examples"
        rows = probe.get("rows")
        if isinstance(rows, dict):
            text += f"; conv layers: {rows.get('rows')} rows drawn {rows.get('repeats', 1)} time(s)"
        parts.append(text + ")")
    else:
        parts.append("the probe (dataset, split) is unknown without the study record")
    parts.append("an ε near a layer's chance ratio √(1 − k/d) matches random directions too: only ε well below it "
                 "is informative")
    hashes = sorted(set(ctx.matches["config_hash"].dropna()))
    recorded = (ctx.record or {}).get("config_hash")
    if len(hashes) > 1:
        parts.append(f"rows of {len(hashes)} configurations are mixed ({', '.join(hashes)})")
    elif recorded and hashes and hashes[0] != recorded:
        parts.append(f"the rows' config hash {hashes[0]} differs from the record's {recorded}")
    if ctx.layer_order == "table":
        parts.append("layer order taken from the table, not the network")
    return "Caveats: " + "; ".join(parts) + "."


def _summary(ctx: _Context, figures: dict[str, FigureResult], table: pd.DataFrame) -> str:
    record = ctx.record or {}
    hashes = sorted(set(ctx.matches["config_hash"].dropna()))
    lines = [f"# raymatch report: {ctx.study}", ""]
    lines.append(f"- Config hash: {record.get('config_hash') or ', '.join(hashes) or _MISSING}")
    if record.get("architecture"):
        lines.append(f"- Architecture: {_describe(record['architecture'])}")
    if record.get("probe"):
        lines.append(f"- Probe: {_describe(record['probe'])}")
    lines += _population_lines(ctx)
    source = (f"network order, from studies/{ctx.study}.json" if ctx.layer_order == "record"
              else "order of first appearance in the matches table")
    lines.append(f"- Layers ({source}): {', '.join(ctx.layers) or _MISSING}")
    lines += [f"  - {note}" for note in ctx.notes]
    recorded_eps = record.get("eps")
    grid = ", ".join(f"{eps:g}" for eps in ctx.grid) or _MISSING
    lines.append(f"- ε grid: {grid}" + (f" (record: {', '.join(f'{e:g}' for e in recorded_eps)})"
                                        if isinstance(recorded_eps, list) and sorted(recorded_eps) != ctx.grid else ""))
    lines += _count_lines(ctx)
    lines += ["", "## Mean maximum-match similarity", ""]
    if table.empty:
        lines.append("No ok match rows.")
    else:
        has_null = UNTRAINED in set(table.columns.get_level_values("population"))
        lines.append("Mean over pairs (each pair's repeats averaged first); " + (
            "the untrained null baseline in parentheses." if has_null else "no untrained baseline in the store."))
        lines += ["", _markdown_table(*_similarity_cells(table))]
    lines += ["", "## Maximal ε per layer", ""]
    if ctx.ok.empty:
        lines.append("No ok match rows.")
    else:
        lines.append("Mean [min–max] over pairs of the smallest ε at which every live neuron is matched, beside the "
                     "chance ratio of a random vector (neurons and samples as n_a/n_b and n_samples).")
        lines += ["", _layer_table(ctx)]
    lines += ["", "## Linear CKA per layer", ""]
    lines.append("No CKA rows." if ctx.cka.empty else "Mean [min–max] over pairs (repeats averaged).")
    if not ctx.cka.empty:
        lines += ["", _cka_table(ctx)]
    if not ctx.simple.empty:
        lines += ["", "## Simple matches", ""]
        sizes = ctx.simple.assign(size=ctx.simple["size_a"] + ctx.simple["size_b"])
        rows = [[layer, f"{eps:g}", str(len(group)), f"{group['size'].median():g}", str(group["size"].max())]
                for layer in _ordered(sizes["layer"], ctx.layers)
                for eps, group in sizes.loc[sizes["layer"] == layer].groupby("eps")]
        lines.append(_markdown_table(["layer", "ε", "found", "median size", "largest"], rows))
    lines += ["", "## Figures", ""]
    for name, result in figures.items():
        lines.append(f"- `{name}`: {result.caption}" if result.path is not None
                     else f"- `{name}`: skipped — {result.skipped}.")
    lines += ["", _caveats(ctx), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ entry points


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)


def write_report(store: Store, *, study: str | None = None, out_dir: str | os.PathLike | None = None,
                 eps: float = DEFAULT_EPS) -> Report:
    """Draw one study's figures and write its summary.

    Parameters
    ----------
    store : Store
        The study store.
    study : str, optional
        The study to report on; may be left out when the store holds one study.
    out_dir : path, optional
        Folder to write into (created if needed; files of the same names are replaced). Default:
        ``report-<study>`` in the working directory.
    eps : float, default 0.25
        ε of the CKA and repeats figures; the nearest value of the study's ε grid is used.

    Returns
    -------
    Report
        The paths written, the figures (matplotlib Figures, kept for inspection, not registered with pyplot) and
        the data they were drawn from.

    Raises
    ------
    ValueError
        A store without match results, several studies and no ``study``, an unknown ``study``, a missing local
        store, or ``eps`` outside [0, 1].
    """
    import matplotlib

    if not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1]; got {eps!r}")
    ctx = _context(store, study, float(eps))
    out = Path(out_dir) if out_dir is not None else Path(f"report-{_safe_name(ctx.study)}")
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, FigureResult] = {}
    with matplotlib.rc_context(_STYLE):
        for name, draw in zip(FIGURE_NAMES, (_similarity_figure, _max_epsilon_figure, _simple_sizes_figure,
                                             _cka_figure, _repeats_figure), strict=True):
            if ctx.ok.empty:
                figures[name] = FigureResult(name, skipped="no ok match rows (every row failed)")
            else:
                figures[name] = draw(ctx, out)
    table = similarity_table(ctx.ok, layers=ctx.layers)
    summary = _summary(ctx, figures, table)
    summary_path = out / SUMMARY_NAME
    summary_path.write_text(summary, encoding="utf-8")
    return Report(study=ctx.study, out_dir=out, summary_path=summary_path, figures=figures, layers=ctx.layers,
                  layer_order=ctx.layer_order, record=ctx.record, similarity_table=table, eps=ctx.eps,
                  summary=summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``raymatch report STORE [--study NAME] [--out DIR] [--eps E] [--endpoint-url URL]``."""
    parser.add_argument("store", metavar="STORE", help="store URI: a local path, file://… or s3://bucket/prefix")
    parser.add_argument("--study", metavar="NAME", help="the study to report on (needed when the store holds several)")
    parser.add_argument("--out", metavar="DIR", help="folder for the figures and summary.md (default: report-<study>)")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS,
                        help="ε of the CKA and repeats figures; the grid's nearest value is used (default: 0.25)")
    parser.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (for S3-compatible stores)")


def command(args: argparse.Namespace) -> int:
    """Run ``raymatch report``: write the report, print the similarity table and the files written."""
    store = Store.open_existing(args.store, endpoint_url=getattr(args, "endpoint_url", None))
    report = write_report(store, study=args.study, out_dir=args.out, eps=getattr(args, "eps", DEFAULT_EPS))
    print(f"study {report.study}: mean maximum-match similarity (null in parentheses)")
    print(format_similarity_table(report.similarity_table))
    print(f"wrote {', '.join(str(path) for path in report.paths)}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0
