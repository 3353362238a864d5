"""The figures of studies that go beyond same-layer pairs: training trajectories and cross-layer matches.

- ``trajectory.png`` — similarity vs epoch per layer, one panel per ε: each saved epoch against its seed's final
  weights (``pairs: {reference: final}`` or ``all``), or against the next saved epoch (``pairs: consecutive``);
  mean over seeds, min–max band. Drawn when the study has ``trajectory`` rows.
- ``cross_layers.png`` — one heatmap per ε: mean similarity of layer i of model a against layer j of model b over
  the study's pairs (``cross_curves`` off the diagonal; on it ``curves``, or the pooled ``cross_curves`` rows
  with ``pool: mean``). Drawn when the study has ``cross_curves`` rows.

Both read the views of :func:`raymatch.results.connect` and recompute nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..store import Store
from .context import ReportContext, ordered
from .figures import FIGURE_STYLE, FigureResult, new_figure, save_figure

__all__ = ["cross_layer_data", "draw_beyond_figures", "trajectory_data"]

_TRAJECTORY_SQL = """
WITH pair AS (
    SELECT config_hash, layer, eps, model_a, model_b, avg(similarity) AS similarity
    FROM matches WHERE study = $study AND population = 'trajectory' AND status = 'ok'
    GROUP BY ALL
)
SELECT p.layer, p.eps, a.seed, coalesce(a.epoch, a.step) AS epoch_a, coalesce(b.epoch, b.step) AS epoch_b,
       b.population AS population_b, a.epoch IS NULL AS by_step, p.similarity
FROM pair p
JOIN models a ON a.study = $study AND a.config_hash = p.config_hash AND a.model_id = p.model_a
JOIN models b ON b.study = $study AND b.config_hash = p.config_hash AND b.model_id = p.model_b
ORDER BY p.layer, p.eps, a.seed, a.epoch
"""


def trajectory_data(con, study: str, pairs) -> tuple[pd.DataFrame, str]:
    """Per (layer, ε, seed, epoch) the similarity along a seed's trajectory (repeats averaged).

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        From :func:`raymatch.results.connect`.
    study : str
    pairs : str or dict
        The study's pair policy: ``'consecutive'`` compares epoch e with the next saved epoch; otherwise the
        rows whose model b is the seed's final (selected) weights are kept.

    Returns
    -------
    data : pandas.DataFrame
        Columns ``layer``, ``eps``, ``seed``, ``epoch`` (of model a: its saved epoch, or for a language model's
        Hub revision its training step), ``by_step`` (the axis is training steps), ``similarity``; one row per pair.
    against : str
        What epoch e is compared with, for the axis label.
    """
    frame = con.sql(_TRAJECTORY_SQL, params={"study": study}).df()
    if pairs == "consecutive":
        against = "the next saved epoch"
    else:
        frame = frame.loc[frame["population_b"] == "trained"]
        against = "the seed's final weights"
    frame = frame.rename(columns={"epoch_a": "epoch"})[["layer", "eps", "seed", "epoch", "by_step", "similarity"]]
    return frame.reset_index(drop=True), against


def _trajectory_figure(data: pd.DataFrame, against: str, ctx: ReportContext, study: str, out_dir: Path) -> FigureResult:
    from matplotlib import colormaps

    result = FigureResult("trajectory.png")
    grid = sorted(data["eps"].unique())
    layers = ordered(data["layer"], ctx.layers)
    figure = new_figure(0, height=4.2, ncols=len(grid))
    figure.set_size_inches(max(4.2 * len(grid), 7.5), 4.4)
    colours = colormaps["tab10"]
    summary = (data.groupby(["eps", "layer", "epoch"])["similarity"].agg(["mean", "min", "max", "count"])
               .reset_index())
    lines: dict = {}
    for column, eps in enumerate(grid):
        axes = figure.add_subplot(1, len(grid), column + 1)
        for index, layer in enumerate(layers):
            rows = summary.loc[(summary["eps"] == eps) & (summary["layer"] == layer)].sort_values("epoch")
            colour = colours(index % 10)
            (lines[(eps, layer)],) = axes.plot(rows["epoch"], rows["mean"], color=colour, marker="o", ms=4, lw=1.8,
                                               label=layer)
            axes.fill_between(rows["epoch"], rows["min"], rows["max"], color=colour, alpha=0.15, lw=0)
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(f"ε = {eps:g}")
        axes.set_xlabel("epoch")
        if column == 0:
            axes.set_ylabel(f"similarity to {against}")
            axes.legend(loc="lower right", fontsize=8)
    seeds = data["seed"].nunique()
    if data["by_step"].all():  # a language model's revisions: the axis is its training step
        for axes in figure.axes:
            axes.set_xlabel("training step")
    figure.suptitle(f"{study}: maximum-match similarity along training")
    saved = "revision (by training step)" if data["by_step"].all() else "saved epoch"
    result.caption = (f"Similarity of each {saved} to {against}, per layer: mean over {seeds} seeds (each pair's "
                      "repeats averaged first), band min–max over seeds.")
    result.figure, result.data, result.artists = figure, summary, {"lines": lines}
    return save_figure(result, out_dir)


_CROSS_SQL = """
WITH crossed AS (
    SELECT population, layer_a, layer_b, eps, avg(similarity) AS similarity, count(*) AS rows
    FROM cross_matches WHERE study = $study AND status = 'ok' AND model_a <> model_b AND pool = $pool
    GROUP BY ALL
), same AS (
    SELECT population, layer AS layer_a, layer AS layer_b, eps, avg(similarity) AS similarity, count(*) AS rows
    FROM matches WHERE study = $study AND status = 'ok'
      AND population IN (SELECT population FROM crossed) AND layer IN (SELECT layer_a FROM crossed)
    GROUP BY ALL
)
SELECT * FROM crossed
UNION ALL
SELECT * FROM same s WHERE NOT EXISTS (SELECT 1 FROM crossed c WHERE c.population = s.population
                                       AND c.layer_a = s.layer_a AND c.layer_b = s.layer_b AND c.eps = s.eps)
"""


def cross_layer_data(con, study: str, pool: str = "none") -> pd.DataFrame:
    """Mean similarity per (population, layer of a, layer of b, ε) over the study's pairs of distinct models.

    Off the diagonal from ``cross_curves``; on it (``layer_a = layer_b``) from ``cross_curves`` where it has them
    (``pool: mean``: the pooled matrices), else from ``curves`` (the same pairs and matrices).

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        From :func:`raymatch.results.connect`.
    study : str
    pool : {'none', 'mean'}
        The rows of this pooling only (the study's ``cross_layers.pool``).

    Returns
    -------
    pandas.DataFrame
        Columns ``population``, ``layer_a``, ``layer_b``, ``eps``, ``similarity``, ``rows``.
    """
    return con.sql(_CROSS_SQL, params={"study": study, "pool": pool}).df()


def _cross_figure(data: pd.DataFrame, ctx: ReportContext, study: str, out_dir: Path) -> FigureResult:
    result = FigureResult("cross_layers.png")
    data = data.loc[data["population"] == "trained"] if (data["population"] == "trained").any() else data
    grid = sorted(data["eps"].unique())
    layers = ordered(pd.concat([data["layer_a"], data["layer_b"]]), ctx.layers)
    layers = [layer for layer in layers if ((data["layer_a"] == layer) & (data["layer_b"] != layer)).any()
              or ((data["layer_b"] == layer) & (data["layer_a"] != layer)).any()]
    figure = new_figure(0, height=4.4, ncols=len(grid))
    figure.set_size_inches(max(3.9 * len(grid) + 1.0, 7.5), 4.2)
    matrices, image = {}, None
    for column, eps in enumerate(grid):
        axes = figure.add_subplot(1, len(grid), column + 1)
        rows = data.loc[data["eps"] == eps]
        matrix = (rows.pivot_table(index="layer_a", columns="layer_b", values="similarity", aggfunc="mean")
                  .reindex(index=layers, columns=layers))
        matrices[eps] = matrix
        image = axes.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", origin="upper")
        axes.set_xticks(np.arange(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        axes.set_yticks(np.arange(len(layers)), layers if column == 0 else [], fontsize=8)
        axes.set_title(f"ε = {eps:g}")
        axes.set_xlabel("layer of model b")
        axes.grid(False)
        if column == 0:
            axes.set_ylabel("layer of model a")
        for (i, j), value in np.ndenumerate(matrix.to_numpy(dtype=float)):
            if np.isfinite(value):
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if value < 0.6 else "black")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="mean similarity")
    figure.suptitle(f"{study}: maximum-match similarity across layers")
    result.caption = ("Mean similarity of layer i of model a with layer j of model b over the study's pairs of "
                      "distinct models (cross_curves off the diagonal; on it curves, or cross_curves with pool: "
                      "mean; repeats averaged in).")
    result.figure, result.data, result.artists = figure, data, {"matrices": matrices}
    return save_figure(result, out_dir)


def draw_beyond_figures(store: Store, ctx: ReportContext, out_dir: Path) -> dict[str, FigureResult]:
    """Draw ``trajectory.png`` and ``cross_layers.png`` where the study has their rows; nothing otherwise.

    Parameters
    ----------
    store : Store
    ctx : ReportContext
        The report's context (study, layer order, record).
    out_dir : Path

    Returns
    -------
    dict of str to FigureResult
        Only the figures the study has data for.
    """
    import matplotlib

    from ..results import connect

    config = (ctx.record or {}).get("config") or {}
    pairs, pool = config.get("pairs", "all"), (config.get("cross_layers") or {}).get("pool", "none")
    con = connect(store)
    try:
        trajectory, against = trajectory_data(con, ctx.study, pairs)
        cross = cross_layer_data(con, ctx.study, pool) if _has_view(con, "cross_matches") else pd.DataFrame()
    finally:
        con.close()
    figures: dict[str, FigureResult] = {}
    with matplotlib.rc_context(FIGURE_STYLE):
        if not trajectory.empty:
            figures["trajectory.png"] = _trajectory_figure(trajectory, against, ctx, ctx.study, out_dir)
        if not cross.empty and (cross["layer_a"] != cross["layer_b"]).any():
            figures["cross_layers.png"] = _cross_figure(cross, ctx, ctx.study, out_dir)
    return figures


def _has_view(con, name: str) -> bool:
    return bool(con.sql("SELECT count(*) FROM duckdb_views() WHERE view_name = $name",
                        params={"name": name}).fetchall()[0][0])
