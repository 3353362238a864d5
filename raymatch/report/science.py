"""The ε-curve and universality figures of a report, and the summary tables of their numbers.

- ``eps_curve.png`` — similarity as a continuous function of ε per layer, from ``curves``: the mean over pairs of
  each pair's step function (exact, no grid: it steps at the critical ε of the neurons), trained beside the nulls,
  with a 95 % band from a bootstrap over models (:mod:`raymatch.results.uncertainty`), the chance ratio and the
  layer's report ε marked;
- ``universality.png`` — per layer, the distribution of a neuron's ``share`` (of the other models in whose maximum
  match with its model it lies, ``universality(eps)``) at the layer's report ε, per population: a bar at each
  possible share j/k (k other models), with the number of neurons shared by every other model.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..match.inputs import EPS_MAX, in_match
from ..results.uncertainty import N_BOOT, SEED, bootstrap_table, model_bootstrap_curve
from .context import ReportContext, ordered, population_order

SCIENCE_FIGURES = ("eps_curve.png", "universality.png")

_COLOURS = {"trained": "tab:blue", "untrained": "tab:gray", "permuted": "tab:red"}
_STYLES = {"trained": "-", "untrained": "--", "permuted": ":"}
#: ε at which the ε-curve figure's band is evaluated (the curve itself is exact).
BAND_POINTS = 101
#: Resamples of the band at each of its ε (the tables use :data:`~raymatch.results.uncertainty.N_BOOT`).
BAND_BOOT = 400


def _colour(population: str, index: int):
    return _COLOURS.get(population, f"C{index + 3}")


def pair_steps(curves: pd.DataFrame) -> pd.DataFrame:
    """Each pair's ε-curve as its breakpoints, repeats averaged: one row per (population, layer, model_a, model_b).

    Parameters
    ----------
    curves : pandas.DataFrame
        ``curves`` rows (only ``"ok"`` ones are used): ``critical_a``, ``critical_b``, ``n_a``, ``n_b``,
        ``exact_tol``, ``repeat``, ``chance``.

    Returns
    -------
    pandas.DataFrame
        Columns ``population``, ``layer``, ``model_a``, ``model_b``, ``breaks`` (sorted finite critical ε, those at
        most ``exact_tol`` as 0) and ``weights`` (each break's step in similarity: ``1 / (n_a + n_b)`` over the
        pair's repeats), ``chance``.
    """
    if "status" in curves.columns:
        curves = curves.loc[curves["status"] == "ok"]
    out = []
    for key, group in curves.groupby(["population", "layer", "model_a", "model_b"], sort=False):
        breaks, weights = [], []
        for row in group.itertuples():
            values = np.concatenate([np.asarray(row.critical_a, float), np.asarray(row.critical_b, float)])
            # The kernel's membership rule: a neuron steps into the match at its critical ε, or at 0 when it is in
            # the exact match; dead neurons (inf) never do. So a break b <= ε iff in_match(critical, ε, exact_tol).
            values = values[in_match(values, EPS_MAX, row.exact_tol)]
            values = np.where(in_match(values, 0.0, row.exact_tol), 0.0, values)
            breaks.append(values)
            weights.append(np.full(values.size, 1.0 / ((row.n_a + row.n_b) * len(group))))
        breaks, weights = np.concatenate(breaks), np.concatenate(weights)
        order = np.argsort(breaks, kind="stable")
        out.append([*key, breaks[order], weights[order], float(group["chance"].mean())])
    return pd.DataFrame(out, columns=["population", "layer", "model_a", "model_b", "breaks", "weights", "chance"])


def similarity_at(steps: pd.DataFrame, eps: np.ndarray) -> np.ndarray:
    """Each pair's similarity at each ε: ``(n_pairs, n_eps)``, from :func:`pair_steps` rows."""
    eps = np.asarray(eps, dtype=np.float64)
    values = np.empty((len(steps), eps.size))
    for index, (breaks, weights) in enumerate(zip(steps["breaks"], steps["weights"], strict=True)):
        cumulative = np.concatenate([[0.0], np.cumsum(weights)])
        values[index] = cumulative[np.searchsorted(breaks, eps, side="right")]
    return values


def mean_curve(steps: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean over pairs of their ε-curves as a step function: ``(eps, similarity)`` from 0 to 1.

    ``similarity[i]`` holds on ``[eps[i], eps[i + 1])`` (draw with ``drawstyle='steps-post'``).
    """
    n_pairs = len(steps)
    breaks = np.concatenate([[0.0], *steps["breaks"], [1.0]]) if n_pairs else np.array([0.0, 1.0])
    weights = np.concatenate([[0.0], *(w / n_pairs for w in steps["weights"]), [0.0]]) if n_pairs else np.zeros(2)
    order = np.argsort(breaks, kind="stable")
    breaks, levels = breaks[order], np.cumsum(weights[order])
    last = np.r_[breaks[1:] != breaks[:-1], True]  # the level after every step at one ε
    return breaks[last], levels[last]


def _band(steps: pd.DataFrame, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return model_bootstrap_curve(list(steps["model_a"]), list(steps["model_b"]), similarity_at(steps, eps),
                                 n_boot=BAND_BOOT, seed=SEED)


def _grid_axes(figure, n: int):
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    axes = figure.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for extra in axes.flat[n:]:
        extra.set_visible(False)
    return list(axes.flat[:n])


def _new_grid_figure(n: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols, nrows = min(n, 4), math.ceil(n / 4)
    figure = Figure(figsize=(3.6 * ncols + 1.0, 3.0 * nrows + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def eps_curve_figure(ctx: ReportContext, out_dir: Path):
    """``eps_curve.png``: each layer's mean similarity as an exact step function of ε, populations overlaid."""
    from .figures import FigureResult, save_figure

    result = FigureResult("eps_curve.png")
    curves = ctx.curves if ctx.curves is not None else pd.DataFrame()
    if curves.empty:
        result.skipped = "no ok curves"
        return result
    steps = pair_steps(curves)
    layers = ordered(steps["layer"], ctx.layers)
    populations = population_order(steps["population"])
    figure = _new_grid_figure(len(layers))
    grid = np.linspace(0.0, 1.0, BAND_POINTS)
    artists: dict = {"curves": {}, "bands": {}, "chance": {}}
    rows = []
    for axes, layer in zip(_grid_axes(figure, len(layers)), layers, strict=True):
        for index, population in enumerate(populations):
            selected = steps.loc[(steps["layer"] == layer) & (steps["population"] == population)]
            if selected.empty:
                continue
            colour = _colour(population, index)
            eps, level = mean_curve(selected)
            (line,) = axes.plot(eps, level, drawstyle="steps-post", color=colour, lw=1.8,
                                ls=_STYLES.get(population, "-."), zorder=3)
            artists["curves"][(layer, population)] = line
            low, high = _band(selected, grid)
            artists["bands"][(layer, population)] = axes.fill_between(grid, low, high, color=colour, alpha=0.15,
                                                                      lw=0, zorder=2)
            rows += [{"layer": layer, "population": population, "eps": e, "similarity": s} for e, s in
                     zip(eps, level, strict=True)]
        chance = float(steps.loc[steps["layer"] == layer, "chance"].mean())
        artists["chance"][layer] = axes.axvline(chance, color="black", ls=(0, (1, 2)), lw=1.4, zorder=4)
        if layer in ctx.layer_eps:
            artists.setdefault("report_eps", {})[layer] = axes.axvline(ctx.layer_eps[layer], color="tab:green",
                                                                       lw=1.0, alpha=0.8)
        axes.set_title(f"{layer} (report {ctx.eps_label(layer)})" if ctx.per_layer else layer)
        # margins: a null at 0 and a chance ratio near 1 stay off the frame
        axes.set_xlim(-0.03, 1.06)
        axes.set_ylim(-0.05, 1.05)
    for axes in figure.axes:
        if axes.get_visible() and axes.get_subplotspec().is_last_row():
            axes.set_xlabel("ε")
        if axes.get_visible() and axes.get_subplotspec().is_first_col():
            axes.set_ylabel("similarity")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=_colour(p, i), ls=_STYLES.get(p, "-."), lw=1.8, label=f"{p}: mean over pairs")
               for i, p in enumerate(populations)]
    handles += [Patch(color="black", alpha=0.15, lw=0, label="95 % bootstrap over models"),
                Line2D([], [], color="black", ls=(0, (1, 2)), lw=1.2, label="chance ratio √(1 − k/d)")]
    if ctx.layer_eps:
        handles.append(Line2D([], [], color="tab:green", lw=1.0, label=f"report ε = {ctx.eps:g}" if ctx.eps is not None
                              else "the layer's report ε"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    figure.suptitle(f"{ctx.study}: similarity as a function of ε (exact step functions from the stored curves)")
    result.caption = ("Mean maximum-match similarity over pairs as a function of ε, per layer: the exact step "
                      "function of the stored critical ε (each pair's repeats averaged), one line per population; "
                      f"bands: 95 % percentile bootstrap over models ({BAND_BOOT} resamples, seed {SEED}, at "
                      f"{BAND_POINTS} ε); dotted: the chance ratio √(1 − k/d).")
    result.figure, result.data, result.artists = figure, pd.DataFrame(rows), artists
    return save_figure(result, out_dir)


def possible_shares(others) -> np.ndarray:
    """Every share a neuron can have: ``j / k`` for j = 0 … k, for each number ``k`` of other models in ``others``."""
    return np.unique(np.round(np.concatenate([np.arange(k + 1) / k for k in set(map(int, others)) if k > 0]), 12))


def universality_figure(ctx: ReportContext, out_dir: Path):
    """``universality.png``: per layer, how many neurons lie in the maximum match with a share of the other models.

    One bar per possible share ``j / k`` (k: the other models a model was compared with), at each layer's ε.
    """
    from .figures import FigureResult, save_figure

    result = FigureResult("universality.png")
    data = ctx.universality if ctx.universality is not None else pd.DataFrame()
    if data.empty:
        result.skipped = ("no layer has an ε: " + "; ".join(ctx.eps_missing.values()) if ctx.eps_missing
                          else "no ok curves")
        return result
    layers = ordered(data["layer"], ctx.layers)
    populations = population_order(data["population"])
    figure = _new_grid_figure(len(layers))
    artists: dict = {"bars": {}, "all": {}, "positions": {}}
    for axes, layer in zip(_grid_axes(figure, len(layers)), layers, strict=True):
        in_layer = data.loc[data["layer"] == layer]
        positions = possible_shares(in_layer["others"])
        artists["positions"][layer] = positions
        gap = np.diff(positions).min() if positions.size > 1 else 1.0
        width = min(gap, 0.25) * 0.85 / len(populations)
        lines = []
        for index, population in enumerate(populations):
            shares = in_layer.loc[in_layer["population"] == population, "share"].to_numpy()
            if not shares.size:
                continue
            counts = np.array([np.sum(np.isclose(shares, value, rtol=0, atol=1e-9)) for value in positions])
            offset = (index - (len(populations) - 1) / 2) * width
            artists["bars"][(layer, population)] = axes.bar(positions + offset, counts / shares.size, width=width,
                                                            color=_colour(population, index), alpha=0.8)
            everyone = int((shares == 1.0).sum())
            artists["all"][(layer, population)] = everyone
            others = sorted(set(map(int, in_layer.loc[in_layer["population"] == population, "others"])))
            lines.append(f"{population} {everyone}/{shares.size}"
                         + (f" (k = {'/'.join(map(str, others))})" if len(set(in_layer["others"])) > 1 else ""))
        ks = sorted(set(map(int, in_layer["others"])))
        k_text = f", k = {ks[0]} others" if len(ks) == 1 else ""
        axes.set_title(f"{layer} at {ctx.eps_label(layer)}{k_text}\n"
                       + textwrap.fill("shared by all others: " + ", ".join(lines), 50), fontsize=8)
        half = width * len(populations) / 2 + 0.02
        axes.set_xlim(positions[0] - half, positions[-1] + half)
        if positions.size <= 11:
            axes.set_xticks(positions, [share_label(value, ks) for value in positions],
                            fontsize=8 if positions.size > 6 else None)
    for axes in figure.axes:
        if axes.get_visible() and axes.get_subplotspec().is_last_row():
            axes.set_xlabel("share of the other models")
        if axes.get_visible() and axes.get_subplotspec().is_first_col():
            axes.set_ylabel("fraction of neurons")
    from matplotlib.patches import Patch

    figure.legend(handles=[Patch(color=_colour(p, i), alpha=0.75, label=p) for i, p in enumerate(populations)],
                  loc="outside lower center", ncols=len(populations), frameon=False)
    at = f"ε = {ctx.eps:g}" if ctx.eps is not None else "each layer's ε"
    figure.suptitle(f"{ctx.study}: neuron universality at {at}")
    result.caption = (f"Per layer, the distribution over neurons (every model, every repeat) of the share of the other "
                      f"models in whose maximum match at {at} the neuron lies (universality(ε)), one bar per possible "
                      "share j/k (k other models); the counts of neurons shared by every other model (share = 1) per "
                      "population are in each panel's title.")
    result.figure, result.data, result.artists = figure, data, artists
    return save_figure(result, out_dir)


def share_label(value: float, ks: list[int]) -> str:
    """A share as a tick label: ``0``, ``1``, or ``j/k`` with the first ``k`` that gives it exactly."""
    if value in (0.0, 1.0):
        return f"{value:g}"
    for k in ks:
        j = round(value * k)
        if abs(j / k - value) < 1e-9:
            return f"{j}/{k}"
    return f"{value:.2f}"


def bootstrap_lines(ctx: ReportContext) -> list[str]:
    """Summary lines: mean similarity at the report's ε with its 95 % bootstrap interval over models, per layer."""
    from .similarity_table import markdown_table

    if ctx.at_eps is None or ctx.at_eps.empty:
        return _empty_lines(ctx, "Mean similarity at the report's ε")
    table = bootstrap_table(ctx.at_eps)
    populations = population_order(table["population"])
    rows = []
    for layer in ordered(table["layer"], ctx.layers):
        row = [layer] + ([f"{ctx.layer_eps[layer]:g}"] if ctx.per_layer else [])
        for population in populations:
            cell = table.loc[(table["layer"] == layer) & (table["population"] == population)]
            if cell.empty:
                row.append("—")
                continue
            cell = cell.iloc[0]
            row.append(f"{cell.similarity_mean:.3f} [{cell.ci_low:.3f}, {cell.ci_high:.3f}]"
                       if np.isfinite(cell.ci_low) else f"{cell.similarity_mean:.3f}")
        rows.append(row)
    n_models = ", ".join(f"{p} {int(table.loc[table['population'] == p, 'n_models'].max())}" for p in populations)
    title = f"at ε = {ctx.eps:g}" if ctx.eps is not None else "at each layer's report ε"
    return ["", f"## Mean similarity {title} with a 95 % interval over models", "",
            f"Percentile bootstrap over models ({N_BOOT} resamples, seed {SEED}; models: {n_models}): models are "
            "resampled with replacement and the mean recomputed over the pairs among the models drawn (a model drawn "
            "twice counts twice, two draws of one model make no pair); each pair's repeats are averaged first. With "
            "few models the interval is too narrow (see docs/science.md).", *_missing_lines(ctx), "",
            markdown_table(["layer", *(["ε"] if ctx.per_layer else []), *populations], rows)]


def universality_lines(ctx: ReportContext) -> list[str]:
    """Summary lines: per layer and population, the neurons shared by every other model at the report's ε."""
    from .similarity_table import markdown_table

    data = ctx.universality
    if data is None or data.empty:
        return _empty_lines(ctx, "Neurons shared by every other model")
    populations = population_order(data["population"])
    rows = []
    for layer in ordered(data["layer"], ctx.layers):
        row = [layer] + ([f"{ctx.layer_eps[layer]:g}"] if ctx.per_layer else [])
        for population in populations:
            shares = data.loc[(data["layer"] == layer) & (data["population"] == population), "share"]
            row.append(f"{int((shares == 1).sum())}/{len(shares)} (mean share {shares.mean():.2f})"
                       if len(shares) else "—")
        rows.append(row)
    at = f"at ε = {ctx.eps:g}" if ctx.eps is not None else "at each layer's report ε"
    query = f"universality({ctx.eps:g})" if ctx.eps is not None else "universality(ε)"
    return ["", f"## Neurons shared by every other model {at}", "",
            f"Neurons (over every model and repeat) in the maximum match with every other model they were compared "
            f"with, of all neurons, and the mean share (`SELECT * FROM {query}`).", *_missing_lines(ctx), "",
            markdown_table(["layer", *(["ε"] if ctx.per_layer else []), *populations], rows)]


def _missing_lines(ctx: ReportContext) -> list[str]:
    """One line per layer left out of the tables at ε because it has no ε of its own."""
    return [f"{layer} is left out: {reason}." for layer, reason in ctx.eps_missing.items()]


def _empty_lines(ctx: ReportContext, title: str) -> list[str]:
    """A section without rows at ε: one line saying why (nothing without ``"ok"`` rows)."""
    if not ctx.eps_missing:
        return []
    return ["", f"## {title}", "", "No layer has an ε: " + "; ".join(ctx.eps_missing.values()) + "."]


__all__ = ["SCIENCE_FIGURES", "bootstrap_lines", "eps_curve_figure", "mean_curve", "pair_steps", "possible_shares",
           "share_label",
           "similarity_at", "universality_figure", "universality_lines"]
