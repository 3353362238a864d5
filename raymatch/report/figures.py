"""The figures of a report, drawn with matplotlib's object API on the Agg canvas.

- ``similarity.png`` — the paper's figure: maximum-match similarity per layer, one panel per ε (mean over pairs,
  95 % band from a bootstrap over models), the untrained null baseline dashed in the same colour, the permuted-row
  null dotted, both drawn over the trained line with their markers beside it;
- ``max_epsilon.png`` — each pair's maximal ε per layer, trained beside untrained, with the chance ratio
  √(1 − k/d) of each layer marked;
- ``simple_match_sizes.png`` — sizes |X| + |Y| of the simple matches per layer;
- ``cka.png`` and ``repeats.png`` — from :mod:`.figures_at_eps`: linear CKA beside the match similarity, and the
  spread over row-sample repeats, at each layer's report ε;
- ``eps_curve.png`` and ``universality.png`` — from :mod:`.science`: similarity as an exact step function of ε per
  layer (nulls beside, bands from a bootstrap over models), and the share of other models each neuron is matched in.

No pyplot, so no global figure registry grows; each :class:`FigureResult` keeps its figure, the artists drawn and
the data they were drawn from. A figure without data is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..results import figure_data, pair_summary
from ..results.uncertainty import N_BOOT, SEED, bootstrap_table
from .context import TRAINED, UNTRAINED, ReportContext, ordered, per_layer_chance, population_order
from .science import SCIENCE_FIGURES, eps_curve_figure, universality_figure

FIGURE_NAMES = ("similarity.png", "max_epsilon.png", "simple_match_sizes.png", "cka.png", "repeats.png",
                *SCIENCE_FIGURES)

#: matplotlib rcParams of every report figure.
FIGURE_STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
    "legend.fontsize": 10, "figure.titlesize": 13, "axes.grid": True, "grid.alpha": 0.3, "savefig.dpi": 150,
}
#: The colour of each population where a figure colours by population (max_epsilon.png, repeats.png).
POPULATION_COLOURS = {TRAINED: "tab:blue", UNTRAINED: "tab:gray", "permuted": "tab:red"}


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


def new_figure(n_layers: int, height: float = 4.8, *, ncols: int = 1):
    """An empty matplotlib Figure on the Agg canvas (no pyplot), wide enough for ``n_layers`` per panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = min(3.5 + (0.55 * n_layers + 1.5) * ncols, 20.0)
    figure = Figure(figsize=(max(width, 7.5), height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def layer_axis(axes, layers: list[str], ctx: ReportContext, labels: list[str] | None = None) -> None:
    """Layers as categorical ticks in the report's order; labels rotated when they would collide.

    ``labels``: the tick labels (default: the layer names), e.g. the layer and its ε on two lines.
    """
    positions = np.arange(len(layers))
    labels = list(layers) if labels is None else labels
    slot_inches = axes.figure.get_figwidth() * axes.get_position().width / max(len(layers), 1)
    # about 0.09 inch per character at 10 pt
    longest = max((len(line) for name in labels for line in name.splitlines()), default=0)
    rotate = longest * 0.09 > slot_inches * 0.9
    axes.set_xticks(positions, labels=labels, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                    rotation_mode="anchor")
    axes.set_xlim(-0.5, len(layers) - 0.5)
    axes.grid(False, axis="x")
    axes.set_xlabel("layer (network order)" if ctx.layer_order == "record" else "layer (order of first appearance)")


#: The margin below 0 and above 1 of a unit axis: a line at 0 or 1 (a null at 0, a chance ratio near 1) stays
#: clear of the frame.
UNIT_MARGIN = 0.06


def unit_axis(axes, label: str) -> None:
    """A [0, 1] value axis with margins (:data:`UNIT_MARGIN`), ticks every 0.2."""
    axes.set_ylim(-UNIT_MARGIN, 1 + UNIT_MARGIN)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel(label)


def legend_beside(axes, handles: list) -> None:
    """A legend beside ``axes``, outside the data (constrained layout makes room for it)."""
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def jitter(n: int, half_width: float, seed: int) -> np.ndarray:
    """``n`` uniform offsets in [-half_width, half_width], the same for the same seed."""
    return np.random.default_rng(seed).uniform(-half_width, half_width, n)


def spread_by_layer(values: pd.DataFrame, column: str, layers: list[str]) -> pd.DataFrame:
    """Mean, min, max and count of ``column`` over the rows of each layer, reindexed to ``layers``."""
    summary = values.groupby("layer", sort=False)[column].agg(["mean", "min", "max", "count"])
    return summary.reindex(layers)


def _panel_grid(figure, n: int, ncols: int):
    """``n`` panels on a grid of ``ncols`` columns, each with its own layer ticks; the unused cells hidden."""
    nrows = -(-n // ncols)
    axes = figure.subplots(nrows, ncols, squeeze=False).flatten()
    for extra in axes[n:]:
        extra.set_visible(False)
    return list(axes[:n])


#: How each null is drawn beside the trained line (in the same colour): dashed with crosses, dotted with pluses.
NULL_STYLE = {UNTRAINED: ("--", "x"), "permuted": (":", "+")}
#: How far right of its layer each null's markers sit in similarity.png, so that lines at one value (0) all show.
_NULL_DODGE = {UNTRAINED: 0.1, "permuted": 0.2}


def _similarity_figure(ctx: ReportContext, out_dir: Path) -> FigureResult:
    """One panel per ε of the grid: the trained mean and band, the nulls drawn over them (each line visible)."""
    result = FigureResult("similarity.png")
    data = figure_data(ctx.ok)
    data = data.loc[data["layer"].isin(ctx.layers)].reset_index(drop=True)
    n_pairs = data.groupby("population")["n_pairs"].max().to_dict()
    ncols = 2 if len(ctx.grid) in (2, 4) else min(len(ctx.grid), 3)
    figure = new_figure(len(ctx.layers), height=1.0 + 3.3 * -(-len(ctx.grid) // ncols), ncols=ncols)
    panels = _panel_grid(figure, len(ctx.grid), ncols)
    positions = np.arange(len(ctx.layers))
    colours = ctx.eps_colours()
    trained, bands, untrained, permuted = {}, {}, {}, {}
    intervals = bootstrap_table(ctx.ok.loc[ctx.ok["population"] == TRAINED])  # 95 % over models, per layer and ε
    intervals = intervals.set_index(["layer", "eps"]) if not intervals.empty else None
    for axes, eps in zip(panels, ctx.grid, strict=True):
        colour = colours[eps]
        for population in ctx.populations:
            rows = data.loc[(data["population"] == population) & (data["eps"] == eps)].set_index("layer")
            if rows.empty:
                continue
            rows = rows.reindex(ctx.layers)
            if population == TRAINED:
                (trained[eps],) = axes.plot(positions, rows["similarity_mean"], color=colour, lw=2.2, marker="o",
                                            ms=6, zorder=3)
                if intervals is not None:
                    band = intervals.reindex([(layer, eps) for layer in ctx.layers])
                    bands[eps] = axes.fill_between(positions, band["ci_low"].astype(float),
                                                   band["ci_high"].astype(float), color=colour, alpha=0.2, lw=0,
                                                   zorder=2)
            else:  # over the trained line, thinner, its markers dodged: each shows where they coincide (at 0)
                ls, marker = NULL_STYLE.get(population, ("-.", "s"))
                dodge = _NULL_DODGE.get(population, 0.2)
                (untrained if population == UNTRAINED else permuted)[eps], = axes.plot(
                    positions + dodge, rows["similarity_mean"], color=colour, lw=1.4, ls=ls, marker=marker, ms=7,
                    mew=1.6, zorder=4 if population == UNTRAINED else 5)
        axes.set_title(f"ε = {eps:g}", color=colour, fontweight="bold")
        layer_axis(axes, ctx.layers, ctx)
        unit_axis(axes, "similarity" if axes.get_subplotspec().is_first_col() else "")
    figure.suptitle(f"{ctx.study}: maximum-match similarity (|X*| + |Y*|) / (n_a + n_b) per layer, one panel per ε")

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    key = "dimgray"  # the legend shows the styles; each panel draws them in its ε's colour (its title's)
    handles = []
    if trained:
        handles += [Line2D([], [], color=key, lw=2.2, marker="o", ms=6,
                           label=f"trained: mean over {n_pairs.get(TRAINED, 0)} pairs"),
                    Patch(color=key, alpha=0.3, lw=0, label="trained: 95 % bootstrap over models")]
    if untrained:
        handles.append(Line2D([], [], color=key, lw=1.4, ls="--", marker="x", ms=7, mew=1.6,
                              label=f"untrained (null): mean over {n_pairs.get(UNTRAINED, 0)} pairs"))
    if permuted:
        handles.append(Line2D([], [], color=key, lw=1.4, ls=":", marker="+", ms=7, mew=1.6,
                              label="permuted rows (null): mean over pairs"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False,
                  title="in each panel, in the colour of its ε:")
    result.caption = ("Maximum-match similarity per layer, one panel per ε: solid lines are the mean over trained "
                      "pairs (each pair's repeats averaged first), bands their 95 % percentile bootstrap interval "
                      f"over models ({N_BOOT} resamples, seed {SEED}: pairs share models, so models are resampled)"
                      + ("; dashed lines with crosses the untrained null baseline (same architecture at "
                         "initialisation, same pairs)" if untrained else "; no untrained null baseline in the store")
                      + ("; dotted lines with pluses the permuted-row null (the trained pairs with model b's rows "
                         "permuted)" if permuted else "")
                      + ". The nulls are drawn over the trained line, their markers a little right of their layer so "
                      "that lines at the same value (often 0) all show.")
    result.figure, result.data = figure, data
    result.artists = {"trained": trained, "bands": bands, "untrained": untrained, "permuted": permuted,
                      "panels": dict(zip(ctx.grid, panels, strict=True))}
    return save_figure(result, out_dir)


def _max_epsilon_figure(ctx: ReportContext, out_dir: Path) -> FigureResult:
    result = FigureResult("max_epsilon.png")
    pairs = pair_summary(ctx.ok)
    data = pairs.loc[pairs["layer"].isin(ctx.layers), ["population", "model_a", "model_b", "layer",
                                                      "max_epsilon"]].reset_index(drop=True)
    chance = per_layer_chance(ctx)
    populations = population_order(data["population"])
    figure = new_figure(len(ctx.layers))
    axes = figure.add_subplot()
    width = 0.7 / len(populations)
    boxes, points = {}, {}
    for index, population in enumerate(populations):
        offset = (index - (len(populations) - 1) / 2) * width
        colour = POPULATION_COLOURS.get(population, f"C{index + 2}")
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
        points[population] = axes.scatter(xs + jitter(len(xs), width * 0.2, index), ys, s=14, color=colour,
                                          edgecolor="white", linewidth=0.4, zorder=3)
    marks = axes.hlines(chance.to_numpy(), np.arange(len(ctx.layers)) - 0.4, np.arange(len(ctx.layers)) + 0.4,
                        colors="black", linestyles=":", lw=2, zorder=4)
    layer_axis(axes, ctx.layers, ctx)
    unit_axis(axes, "maximal ε (every live neuron matched)")
    figure.suptitle(f"{ctx.study}: maximal ε per layer over pairs")

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=POPULATION_COLOURS.get(population, f"C{index + 2}"), alpha=0.5,
                     label=f"{population} pairs" + (" (null)" if population == UNTRAINED else ""))
               for index, population in enumerate(populations) if population in boxes]
    handles.append(Line2D([], [], color="black", ls=":", lw=2, label="chance ratio √(1 − k/d)"))
    legend_beside(axes, handles)
    result.caption = ("Maximal ε per layer (the smallest ε at which every live neuron of a pair is matched), one "
                      "point per pair (repeats averaged), boxes of the quartiles; dotted: the ratio √(1 − k/d) of "
                      "a random vector against a k-dimensional span in R^d (k neurons, d samples).")
    result.figure, result.data = figure, data.assign(chance=data["layer"].map(chance))
    result.artists = {"boxes": boxes, "points": points, "chance": marks}
    return save_figure(result, out_dir)


def _simple_sizes_figure(ctx: ReportContext, out_dir: Path) -> FigureResult:
    result = FigureResult("simple_match_sizes.png")
    if ctx.simple.empty:
        result.skipped = "the simple_matches table has no rows for this study (simple_matches not enabled?)"
        return result
    data = ctx.simple.assign(size=ctx.simple["size_a"] + ctx.simple["size_b"])[
        ["population", "layer", "eps", "model_a", "model_b", "size_a", "size_b", "size"]]
    layers = ordered(data["layer"], ctx.layers)
    populations = population_order(data["population"])
    grid = sorted(set(data["eps"]))
    groups = [(population, eps) for population in populations for eps in grid
              if ((data["population"] == population) & (data["eps"] == eps)).any()]
    colours = ctx.eps_colours()
    figure = new_figure(len(layers))
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

    layer_axis(axes, layers, ctx)
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("simple-match size |X| + |Y| (neurons)")
    figure.suptitle(f"{ctx.study}: sizes of the simple matches ({len(data)} found)")
    handles = [Patch(facecolor=colours.get(eps, "tab:green"), alpha=0.55, label=f"ε = {eps:g}") for eps in grid]
    if any(population != TRAINED for population, _ in groups):
        handles += [Patch(facecolor="lightgray", edgecolor="black", label="trained: filled"),
                    Patch(facecolor="white", edgecolor="black", ls="--", label="untrained (null): hollow")]
    legend_beside(axes, handles)
    result.caption = ("Sizes |X| + |Y| of the distinct simple matches found per layer, over every pair "
                      "(boxes of the quartiles, whiskers 1.5 IQR, outliers as dots), one box per ε"
                      + (" and population" if len(populations) > 1 else "") + ".")
    result.figure, result.data = figure, data.reset_index(drop=True)
    result.artists = {"boxes": boxes}
    return save_figure(result, out_dir)


def save_figure(result: FigureResult, out_dir: Path) -> FigureResult:
    """Write ``result``'s figure as ``out_dir/<name>`` (PNG), record the path in it and return it."""
    result.path = out_dir / result.name
    result.figure.savefig(result.path, format="png")
    return result


def draw_figures(ctx: ReportContext, out_dir: Path) -> dict[str, FigureResult]:
    """Draw every figure of :data:`FIGURE_NAMES` into ``out_dir``, in the report's style.

    Parameters
    ----------
    ctx : ReportContext
        The study's rows, layer order and ε grid.
    out_dir : Path
        Existing folder the PNG files are written into (files of the same names are replaced).

    Returns
    -------
    dict of str to FigureResult
        One entry per name of :data:`FIGURE_NAMES`, in that order, written or skipped (every figure is skipped
        when the study has no ``"ok"`` rows).
    """
    import matplotlib

    from .figures_at_eps import cka_figure, repeats_figure

    figures: dict[str, FigureResult] = {}
    with matplotlib.rc_context(FIGURE_STYLE):
        for name, draw in zip(FIGURE_NAMES, (_similarity_figure, _max_epsilon_figure, _simple_sizes_figure,
                                             cka_figure, repeats_figure, eps_curve_figure,
                                             universality_figure), strict=True):
            if ctx.ok.empty:
                figures[name] = FigureResult(name, skipped="no ok match rows (every row failed)")
            else:
                figures[name] = draw(ctx, out_dir)
    return figures
