"""The report's part on the standard measures: their table, the universal neurons and what each measure sees.

Read from the views of :func:`raymatch.results.connect` and the stored evaluation (nothing is recomputed):

- ``summary.md`` gets the mean of each measure per layer over pairs, trained beside the nulls (the ``measures``
  view: ``cka`` from ``curves``, the others from the ``measures`` table), the universal neurons per layer
  (``universal_neurons()``, its default margin and majority), and, when ``raymatch evaluate-measures`` has stored an
  evaluation of the study's current configuration, its measure × test table;
- ``universal_neurons.png`` — per layer, the share of each trained model's neurons that are universal, and the mean
  best correlation of the trained neurons beside the permuted and untrained nulls' (drawn with ``neurons`` rows);
- ``measure_evaluation.png`` — the evaluation's measure × test table as a heatmap (drawn with an evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import Store
from .context import ReportContext, ordered, population_order
from .evaluation import evaluation_rows, read_evaluation
from .figures import FIGURE_STYLE, FigureResult, new_figure, save_figure
from .similarity_table import MISSING, markdown_table

__all__ = ["MeasureReport", "draw_measure_figures", "measure_sections", "read_measure_report"]

_MEASURE_ORDER = ("cka", "cca", "svcca", "pwcca", "procrustes", "neuron_corr")


@dataclass
class MeasureReport:
    """What the report shows of the standard measures.

    Attributes
    ----------
    per_pair : pandas.DataFrame
        ``population``, ``layer``, ``measure``, ``model_a``, ``model_b``, ``value`` (repeats averaged), ``"ok"`` rows.
    universal : pandas.DataFrame
        ``universal_neurons()`` rows of the study.
    evaluation : dict or None
        The stored evaluation of the study's current configuration.
    """

    per_pair: pd.DataFrame
    universal: pd.DataFrame
    evaluation: dict | None


def read_measure_report(store: Store, ctx: ReportContext) -> MeasureReport:
    """The measures' rows of the report's study (one DuckDB connection) and its stored evaluation, if any."""
    from ..results import connect

    con = connect(store)
    try:
        per_pair = con.sql("SELECT population, layer, measure, model_a, model_b, avg(value) AS value FROM measures "
                           "WHERE study = $study AND status = 'ok' AND population <> 'trajectory' GROUP BY ALL",
                           params={"study": ctx.study}).df()
        universal = con.sql("SELECT * FROM universal_neurons() WHERE study = $study",
                            params={"study": ctx.study}).df()
    finally:
        con.close()
    config_hash = (ctx.record or {}).get("config_hash")
    evaluation = read_evaluation(store, ctx.study, config_hash) if config_hash else None
    return MeasureReport(per_pair, universal, evaluation)


def _spread(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return MISSING
    text = f"{values.mean():.2f}"
    return text if len(values) == 1 else f"{text} [{values.min():.2f}–{values.max():.2f}]"


def measure_sections(report: MeasureReport, ctx: ReportContext) -> list[str]:
    """The summary's lines on the measures (none when the study has no rows of a measure besides the match)."""
    lines: list[str] = []
    data = report.per_pair
    measures = [name for name in _MEASURE_ORDER if name in set(data["measure"])]
    if len(measures) > 1 or (measures and measures != ["cka"]):
        populations = population_order(data["population"])
        rows = [[layer, name, *(_spread(data.loc[(data["layer"] == layer) & (data["measure"] == name)
                                                 & (data["population"] == population), "value"])
                               for population in populations)]
                for layer in ordered(data["layer"], ctx.layers) for name in measures]
        lines += ["", "## Standard measures per layer", "",
                  "Mean [min–max] over pairs (repeats averaged) of each measure in the `measures` view: similarities, "
                  "except `procrustes`, a distance (0: the same up to rotation and scale). docs/measures.md gives "
                  "the formulas and what each is invariant to.", "",
                  markdown_table(["layer", "measure", *populations], rows)]
    universal = report.universal
    if not universal.empty:
        per_layer = universal.groupby("layer", sort=False).agg(
            universal=("universal", "sum"), neurons=("universal", "size"), models=("model", "nunique"),
            correlation=("correlation", "mean"), permuted=("permuted", "mean"), untrained=("untrained", "mean"))
        rows = [[layer, f"{int(row.universal)} of {int(row.neurons)}", _number(row.correlation),
                 _number(row.permuted), _number(row.untrained)]
                for layer, row in per_layer.reindex(ordered(per_layer.index, ctx.layers)).iterrows()]
        margin, most = universal["margin"].iloc[0], universal["most"].iloc[0]
        lines += ["", "## Universal neurons", "",
                  f"Neurons of the trained models whose best correlation with the other trained models beats both "
                  f"nulls (the same neuron against row-permuted partners; the layer's mean among the untrained "
                  f"models; a null the study lacks, shown —, counts as 0) by {margin:g} in more than {most:.0%} of "
                  f"them (`universal_neurons(margin := {margin:g}, "
                  f"most := {most:g})`), over every (model, neuron, row repeat); mean best correlations beside.", "",
                  markdown_table(["layer", "universal", "best |r| trained", "permuted null", "untrained null"],
                                 rows)]
    if report.evaluation is not None:
        header, cells = evaluation_rows(report.evaluation)
        lines += ["", "## What each measure sees", "",
                  f"`raymatch evaluate-measures` (Ding et al. 2021) on the {len(report.evaluation['models'])} trained "
                  "models: PC deletion ρ, the Spearman ρ of the number of top principal components deleted against "
                  "the dissimilarity (1: it sees every deletion; 0 where the measure never moves), averaged over "
                  "models and layers; the share of those in which it moved at all; where it stops noticing, as a "
                  "share of the components; depth ρ, of |depth difference| against dissimilarity "
                  "across layers of different seeds; specificity, the probability that the same layer of another "
                  "seed is rated closer than the next layer of the same seed.", "",
                  markdown_table(header, cells)]
    return lines


def _number(value) -> str:
    return MISSING if value is None or not np.isfinite(value) else f"{value:.2f}"


def _universal_figure(report: MeasureReport, ctx: ReportContext, out_dir: Path) -> FigureResult:
    result = FigureResult("universal_neurons.png")
    data = report.universal
    layers = ordered(data["layer"], ctx.layers)
    shares = data.groupby(["layer", "model"], sort=False)["universal"].mean().reset_index()
    figure = new_figure(len(layers), height=4.4, ncols=2)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    positions = np.arange(len(layers))
    means = [shares.loc[shares["layer"] == layer, "universal"] for layer in layers]
    left.bar(positions, [m.mean() for m in means], color="tab:blue", alpha=0.7)
    for x, values in zip(positions, means, strict=True):
        left.plot(np.full(len(values), x), values, "k.", ms=5)
    left.set_ylim(0, 1)
    left.set_ylabel("share of a model's neurons that are universal")
    lines = {}
    for column, label, style in (("correlation", "trained", "o-"), ("permuted", "permuted null", "s:"),
                                 ("untrained", "untrained null", "x--")):
        values = data.groupby("layer", sort=False)[column].mean().reindex(layers)
        (lines[column],) = right.plot(positions, values.to_numpy(dtype=float), style, label=label)
    right.set_ylim(0, 1.02)
    right.set_ylabel("mean best |Pearson r| with another model")
    right.set_xlim(-0.4, len(layers) - 0.6)  # the end points clear of the frame
    right.legend(loc="best", fontsize=9)  # where it hides no line
    for axes in (left, right):
        axes.set_xticks(positions, layers, rotation=30 if len(layers) > 4 else 0, ha="right" if len(layers) > 4
                        else "center")
        axes.set_xlabel("layer")
    margin, most = data["margin"].iloc[0], data["most"].iloc[0]
    figure.suptitle(f"{ctx.study}: universal neurons (margin {margin:g}, more than {most:.0%} of the other seeds)")
    result.caption = (f"Left: per layer, the share of each trained model's neurons whose best correlation beats both "
                      f"nulls by {margin:g} in more than {most:.0%} of the other trained models (dots: models). "
                      "Right: mean best correlation of the trained neurons, of the same neurons against row-permuted "
                      "partners, and among the untrained models.")
    result.figure, result.data, result.artists = figure, data, {"lines": lines}
    return save_figure(result, out_dir)


def _evaluation_figure(content: dict, study: str, out_dir: Path) -> FigureResult:
    result = FigureResult("measure_evaluation.png")
    columns = ("deletion_spearman", "deletion_moved", "deletion_stops_noticing", "depth_spearman", "specificity")
    labels = ("PC deletion ρ", "moved in", "stops noticing\n(share deleted)", "depth ρ", "specificity")
    names = [row["measure"] for row in content["table"]]
    matrix = np.array([[np.nan if row.get(c) is None else row[c] for c in columns] for row in content["table"]],
                      dtype=float)
    figure = new_figure(0, height=0.42 * len(names) + 1.6)
    figure.set_size_inches(8.5, 0.42 * len(names) + 1.8)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, "—" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=9,
                  color="black" if np.isnan(value) or abs(value) < 0.6 else "white")
    axes.set_xticks(np.arange(len(columns)), labels)
    axes.set_yticks(np.arange(len(names)), names)
    axes.grid(False)
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(f"{study}: what each measure sees ({len(content['models'])} trained models)")
    result.caption = ("Ding et al.'s tests on the study's trained models (raymatch evaluate-measures): rank "
                      "correlation with principal-component deletion and where the measure stops noticing, rank "
                      "correlation with depth, and seed-vs-layer specificity; — where a test had nothing to compare.")
    result.figure, result.data = figure, pd.DataFrame(matrix, index=names, columns=columns)
    return save_figure(result, out_dir)


def draw_measure_figures(report: MeasureReport, ctx: ReportContext, out_dir: Path) -> dict[str, FigureResult]:
    """``universal_neurons.png`` (with ``neurons`` rows) and ``measure_evaluation.png`` (with an evaluation)."""
    import matplotlib

    figures: dict[str, FigureResult] = {}
    with matplotlib.rc_context(FIGURE_STYLE):
        if not report.universal.empty:
            figures["universal_neurons.png"] = _universal_figure(report, ctx, out_dir)
        if report.evaluation is not None:
            figures["measure_evaluation.png"] = _evaluation_figure(report.evaluation, ctx.study, out_dir)
    return figures
