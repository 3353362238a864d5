"""The figures of a report drawn at each layer's report ε: ``cka.png`` and ``repeats.png``.

Each layer is drawn at its ε of :attr:`ReportContext.layer_eps <raymatch.report.context.ReportContext.layer_eps>`
(one ε for every layer when ``--eps`` asks for one, said in the title; else each layer's own, under its name).

- ``cka.png`` — linear CKA per layer (left) beside the maximum-match similarity at each layer's ε (right), each
  panel with a legend in its own colour;
- ``repeats.png`` — spread of the similarity over row-sample repeats (conv layers under the paper's protocol),
  skipped with the reason when every pair's similarity is the same in every repeat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .context import TRAINED, ReportContext, ordered, population_order
from .figures import (
    NULL_STYLE,
    POPULATION_COLOURS,
    FigureResult,
    jitter,
    layer_axis,
    legend_beside,
    new_figure,
    save_figure,
    spread_by_layer,
    unit_axis,
)

__all__ = ["cka_figure", "layer_labels", "repeats_figure"]

_CKA_COLOUR = "tab:purple"
_PAIR = ["population", "layer", "model_a", "model_b"]


def layer_labels(ctx: ReportContext, layers: list[str]) -> list[str] | None:
    """Tick labels naming each layer's ε under it when the layers have ε of their own; None with one ε for all."""
    if not ctx.per_layer:
        return None
    return [f"{layer}\n{ctx.eps_label(layer)}" for layer in layers]


def _eps_text(ctx: ReportContext) -> str:
    """What the ε of a panel at the report's ε is, for titles and captions."""
    if ctx.eps is not None:
        return f"ε = {ctx.eps:g}" + (" (off the grid: from the stored curves)" if ctx.off_grid else "")
    return "each layer's ε"


def _draw_spread(axes, summary: pd.DataFrame, colour, *, population: str):
    """The mean per layer (a band of the min–max for the trained population; nulls as lines of their own style)."""
    positions = np.arange(len(summary))
    null = population != TRAINED
    ls, marker = NULL_STYLE.get(population, ("-.", "s")) if null else ("-", "o")
    (line,) = axes.plot(positions, summary["mean"], color=colour, lw=1.6 if null else 2, ls=ls, marker=marker,
                        ms=6 if null else 5, zorder=4 if null else 3)
    band = None if null else axes.fill_between(positions, summary["min"], summary["max"], color=colour,
                                               alpha=0.18, lw=0, zorder=2)
    return line, band


def _panel_legend(axes, colour, drawn: dict, where: str) -> None:
    """The legend of one panel in the panel's colour (what each line style means), below the figure's ``where``."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if TRAINED in drawn:
        handles += [Line2D([], [], color=colour, lw=2, marker="o", ms=5, label="trained: mean over pairs"),
                    Patch(color=colour, alpha=0.25, lw=0, label="trained: min–max over pairs")]
    for population, (ls, marker) in NULL_STYLE.items():
        if population in drawn:
            name = "permuted rows" if population == "permuted" else population
            handles.append(Line2D([], [], color=colour, lw=1.6, ls=ls, marker=marker, ms=6,
                                  label=f"{name} (null): mean"))
    if handles:  # a figure legend: constrained layout makes room for it
        axes.figure.legend(handles=handles, loc=f"outside lower {where}", ncols=2, frameon=False, fontsize=9)


def cka_figure(ctx: ReportContext, out_dir: Path) -> FigureResult:
    """``cka.png``: linear CKA per layer beside the maximum-match similarity at each layer's ε."""
    result = FigureResult("cka.png")
    if ctx.cka.empty:
        result.skipped = "no curve of this study carries a CKA value: the cka view has no rows (cka not enabled?)"
        return result
    per_pair = ctx.cka.groupby(_PAIR, sort=False)["cka"].mean().reset_index()
    layers = ordered(per_pair["layer"], ctx.layers)
    similarity = pd.DataFrame(columns=[*_PAIR, "similarity"])
    if not ctx.at_eps.empty:
        similarity = ctx.at_eps.groupby(_PAIR, sort=False)["similarity"].mean().reset_index()
    figure = new_figure(len(layers), height=5.4, ncols=2)
    cka_axes, match_axes = figure.subplots(1, 2, sharey=True)
    colour = ctx.eps_colour(ctx.eps) if ctx.eps is not None else "tab:green"
    artists: dict[str, dict] = {"cka": {}, "similarity": {}}
    for population in population_order([*per_pair["population"], *similarity["population"]]):
        for axes, values, column, line_colour, key in ((cka_axes, per_pair, "cka", _CKA_COLOUR, "cka"),
                                                       (match_axes, similarity, "similarity", colour, "similarity")):
            rows = values.loc[values["population"] == population]
            if rows.empty:
                continue
            artists[key][population] = _draw_spread(axes, spread_by_layer(rows, column, layers), line_colour,
                                                    population=population)
    layer_axis(cka_axes, layers, ctx)
    layer_axis(match_axes, layers, ctx, layer_labels(ctx, layers))
    unit_axis(cka_axes, "value")
    match_axes.tick_params(labelleft=True)
    cka_axes.set_title("linear CKA", color=_CKA_COLOUR)
    match_axes.set_title(f"maximum-match similarity at {_eps_text(ctx)}", color=colour)
    if similarity.empty:
        match_axes.text(0.5, 0.5, "no layer has an ε: " + "; ".join(ctx.eps_missing.values()) if ctx.eps_missing
                        else "no ok match rows", transform=match_axes.transAxes, ha="center", va="center", wrap=True)
    _panel_legend(cka_axes, _CKA_COLOUR, artists["cka"], "left")
    _panel_legend(match_axes, colour, artists["similarity"], "right")
    figure.suptitle(f"{ctx.study}: linear CKA beside the subspace match")
    result.caption = (f"Linear CKA (left) and maximum-match similarity at {_eps_text(ctx)} (right) per layer: "
                      "solid lines the mean over trained pairs (repeats averaged), bands the min–max over pairs, "
                      "dashed the untrained null baseline and dotted the permuted-row null where present.")
    data = per_pair.merge(similarity, how="outer", on=_PAIR)
    data["eps"] = data["layer"].map(ctx.layer_eps)
    result.figure, result.data, result.artists = figure, data, artists
    return save_figure(result, out_dir)


def repeats_figure(ctx: ReportContext, out_dir: Path) -> FigureResult:
    """``repeats.png``: each pair's spread of the similarity over its row-sample repeats, at each layer's ε."""
    result = FigureResult("repeats.png")
    if not ctx.layer_eps:
        result.skipped = "no layer has an ε: " + ("; ".join(ctx.eps_missing.values()) or "no ok match rows")
        return result
    per_pair = ctx.at_eps.groupby(_PAIR, sort=False)["similarity"].agg(repeats="count", std="std", mean="mean",
                                                                    low="min", high="max").reset_index()
    sampled = per_pair.groupby("layer", sort=False)["repeats"].max()
    layers = [layer for layer in ctx.layers if sampled.get(layer, 0) > 1]
    if not layers:
        result.skipped = "every layer has a single repeat (no row sampling over several draws)"
        return result
    data = per_pair.loc[per_pair["layer"].isin(layers) & (per_pair["repeats"] > 1)].reset_index(drop=True)
    data["eps"] = data["layer"].map(ctx.layer_eps)
    if not (data["std"] > 0).any():
        values = ", ".join(f"{value:.2f}" for value in sorted(set(data["mean"].round(2))))
        result.skipped = (f"at {_eps_text(ctx)} every pair's similarity is the same in every repeat (std 0; "
                          f"similarity {values}): no spread to show")
        return result
    populations = population_order(data["population"])
    figure = new_figure(len(layers))
    axes = figure.add_subplot()
    width = 0.7 / len(populations)
    points, means = {}, {}
    for index, population in enumerate(populations):
        offset = (index - (len(populations) - 1) / 2) * width
        colour = POPULATION_COLOURS.get(population, f"C{index + 2}")
        rows = data.loc[data["population"] == population]
        xs = rows["layer"].map({layer: position for position, layer in enumerate(layers)}).to_numpy(float) + offset
        points[population] = axes.scatter(xs + jitter(len(xs), width * 0.25, index), rows["std"], s=16,
                                          color=colour, edgecolor="white", linewidth=0.4, zorder=3)
        mean = rows.groupby("layer", sort=False)["std"].mean().reindex(layers)
        centres = np.arange(len(layers)) + offset
        means[population] = axes.hlines(mean.to_numpy(), centres - width * 0.4, centres + width * 0.4,
                                        colors=colour, lw=2.5, zorder=4)
    layer_axis(axes, layers, ctx, layer_labels(ctx, layers))
    top = float(data["std"].max())
    axes.set_ylim(-0.05 * top, 1.08 * top)  # a margin: points at 0 stay off the frame
    axes.set_ylabel("std of similarity over repeats")
    counts = sorted(set(data["repeats"]))
    repeats_text = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    at = f"at ε = {ctx.eps:g}" if ctx.eps is not None else "at each layer's ε"
    figure.suptitle(f"{ctx.study}: spread over {repeats_text} row-sample repeats {at}")

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=POPULATION_COLOURS.get(population, f"C{index + 2}"), marker="o", ls="",
                      label=f"{population}: one point per pair") for index, population in enumerate(populations)]
    handles.append(Line2D([], [], color="black", lw=2.5, label="mean over pairs"))
    legend_beside(axes, handles)
    result.caption = (f"Sample standard deviation of each pair's similarity over its row-sample repeats at "
                      f"{_eps_text(ctx)}, for the layers sampled more than once; bars: mean over pairs.")
    result.figure, result.data = figure, data
    result.artists = {"points": points, "means": means}
    return save_figure(result, out_dir)
