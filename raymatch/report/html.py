"""``raymatch report --html``: one self-contained, offline page (``index.html``) to explore a study in a browser.

The page inlines plotly's JavaScript (from the ``plotly`` package: nothing is fetched, and its Content Security
Policy forbids any request), its own script (``assets/page.js``) and the study's numbers aggregated to what it shows
(:mod:`.html_data`): per (population, layer), each pair's matched-neuron counts at every ε of the slider, so the
layer × ε heatmap, the table at the slider's ε, the model × model matrices (ordered by a hierarchical clustering at
that ε) and the ε-curves are exact step functions of ε. Per-neuron critical ε are embedded only when asked for
(``neurons=True``, ``--html-neurons``). Also: the ε-curves' bands (a bootstrap over models), universality at the
report's ε, the cross-layer heatmap and trajectories where the study has them, the study's configuration and runs.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import connect
from ..results.uncertainty import SEED, model_bootstrap_curve
from ..store import Store
from . import html_figures as figs
from .beyond import cross_layer_data, trajectory_data
from .context import DEFAULT_EPS
from .html_data import (
    SLIDER_STEPS,
    PairCounts,
    cluster_orders,
    encode_counts,
    encode_neurons,
    encode_orders,
    model_labels,
    pack_integers,
    pair_counts,
    slider_grid,
)

PAGE_NAME = "index.html"
#: Resamples of the ε-curves' bands (each at every slider ε; the summary's tables use more).
BAND_BOOT = 400


@dataclass
class HtmlPage:
    """What :func:`write_html` wrote.

    Attributes
    ----------
    path : Path
        ``<out_dir>/index.html``.
    size : int
        Its size in bytes.
    skipped : dict of str to str
        Sections the page has no data for, with the reason (also shown on the page).
    payload : dict
        The data embedded (figures, encoded counts, labels, tables), for inspection.
    """

    path: Path
    size: int
    skipped: dict[str, str] = field(default_factory=dict)
    payload: dict = field(default_factory=dict)


def _query(con, sql: str, **params) -> pd.DataFrame:
    return con.sql(sql, params=params or None).to_arrow_table().to_pandas()


def _has_view(con, name: str) -> bool:
    return bool(_query(con, "SELECT count(*) AS n FROM duckdb_views() WHERE view_name = $name", name=name)["n"][0])


def _tables(store: Store, ctx) -> dict[str, pd.DataFrame | tuple]:
    """The rows the page needs beyond the report's context: models, runs, trajectories, cross-layer means."""
    config = (ctx.record or {}).get("config") or {}
    pairs, pool = config.get("pairs", "all"), (config.get("cross_layers") or {}).get("pool", "none")
    con = connect(store)
    try:
        return {"models": _query(con, "SELECT * FROM models WHERE study = $study", study=ctx.study),
                "runs": _query(con, "SELECT * FROM runs WHERE study = $study ORDER BY started_at", study=ctx.study),
                "trajectory": trajectory_data(con, ctx.study, pairs),
                "cross": cross_layer_data(con, ctx.study, pool) if _has_view(con, "cross_matches") else pd.DataFrame()}
    finally:
        con.close()


def _ordered_populations(ctx, counts: list[PairCounts]) -> list[str]:
    present = {entry.population for entry in counts}
    return [name for name in ctx.populations if name in present] + sorted(
        present.difference(ctx.populations))


def _ordered_layers(ctx, counts: list[PairCounts]) -> list[str]:
    present = list(dict.fromkeys(entry.layer for entry in counts))
    return [name for name in ctx.layers if name in present] + [name for name in present if name not in ctx.layers]


def _pairs_payload(entry: PairCounts, curves: pd.DataFrame, neurons: bool) -> dict:
    data = {"models": entry.models, "first": pack_integers(entry.first), "second": pack_integers(entry.second),
            "totals": pack_integers(entry.totals), "counts": encode_counts(entry),
            "orders": encode_orders(cluster_orders(entry))}
    if neurons:
        data["neurons"] = encode_neurons(curves, entry)
    return data


def _bands(entry: PairCounts) -> tuple[np.ndarray, np.ndarray]:
    if len(entry.models) < 2:
        nan = np.full(entry.counts.shape[1], np.nan)
        return nan, nan
    model_a, model_b = entry.pair_names()
    return model_bootstrap_curve(model_a, model_b, entry.similarity(), n_boot=BAND_BOOT, seed=SEED)


def _flatten(value, prefix: str = "") -> list[list[str]]:
    """A nested config as ``[dotted key, JSON value]`` rows."""
    if isinstance(value, dict) and value:
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}.{key}" if prefix else key)]
    return [[prefix, json.dumps(value, default=str)]]


def _time(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
        return "—"
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _runs_rows(runs: pd.DataFrame) -> list[list[str]]:
    rows = []
    for run in runs.to_dict("records"):
        ended = run.get("ended_at")
        seconds = (pd.Timestamp(ended) - pd.Timestamp(run["started_at"])).total_seconds() if not pd.isna(ended) \
            else None
        error = [] if pd.isna(run.get("error")) else str(run["error"]).splitlines()[:1]
        rows.append([str(run["run_id"]), str(run.get("code_version") or "—"), _time(run["started_at"]),
                     "—" if seconds is None else f"{seconds:.1f} s", str(run["status"]), str(run.get("computed")),
                     str(run.get("skipped")), str(run.get("failed")), error[0] if error else ""])
    return rows


def _failed_rows(ctx) -> list[list[str]]:
    curves = ctx.matches.drop_duplicates(["population", "layer", "model_a", "model_b", "repeat"])
    failed = curves.loc[curves["status"] == "failed"]
    return [[layer, str(len(group)), str(group["error"].iloc[0]).splitlines()[0] if len(group) else ""]
            for layer, group in failed.groupby("layer", sort=False)]


def _figure_json(figure) -> dict:
    return json.loads(figure.to_json())


def page_payload(store: Store, ctx, *, neurons: bool = False, steps: int = SLIDER_STEPS) -> tuple[dict, dict]:
    """The data the page embeds, and the sections it skips (with why).

    Parameters
    ----------
    store : Store
    ctx : raymatch.report.context.ReportContext
        The report's context (rows, layers in network order, populations, the report's ε, universality).
    neurons : bool
        Also embed each pair's per-neuron critical ε (repeat 0).
    steps : int
        The slider's ε are ``k / steps``.

    Returns
    -------
    payload : dict
        JSON-able: ``study``, ``steps``, ``initial`` (the slider's first step), ``layers``, ``populations``,
        ``means[population][layer]`` (exact mean over pairs at every step), ``pairs[population][layer]`` (encoded
        counts and cluster orders), ``labels``, ``figures`` (plotly figure dicts), ``tables``, ``notes``.
    skipped : dict of str to str
    """
    grid = slider_grid(steps)
    curves = ctx.curves if ctx.curves is not None else pd.DataFrame()
    counts = pair_counts(curves, grid) if not curves.empty else []
    layers, populations = _ordered_layers(ctx, counts), _ordered_populations(ctx, counts)
    tables = _tables(store, ctx)
    start = ctx.eps if ctx.eps is not None else (
        float(np.median(list(ctx.layer_eps.values()))) if ctx.layer_eps else DEFAULT_EPS)
    initial = int(np.clip(round(start * steps), 0, steps))
    skipped: dict[str, str] = {}
    means = {population: {} for population in populations}
    bands = {population: {} for population in populations}
    pairs = {population: {} for population in populations}
    chance = {}
    for entry in counts:
        means[entry.population][entry.layer] = entry.similarity().mean(axis=0)
        bands[entry.population][entry.layer] = _bands(entry)
        pairs[entry.population][entry.layer] = _pairs_payload(entry, curves, neurons)
        chance.setdefault(entry.layer, entry.chance)
    names = list(dict.fromkeys(name for entry in counts for name in entry.models))
    figures = {}
    if counts:
        figures["heatmap"] = _figure_json(figs.layer_eps_heatmap(means, layers, populations, grid, grid[initial]))
        caption = (f"Mean similarity over pairs at every slider ε (exact steps); bands: 95 % bootstrap over models "
                   f"({BAND_BOOT} resamples, seed {SEED}); dotted: the chance ratio √(1 − k/d)")
        figures["curves"] = _figure_json(figs.eps_curves(means, bands, chance, layers, populations, grid,
                                                         grid[initial], caption))
    else:
        skipped["similarity"] = "the study has no ok curves"
    universality = ctx.universality if ctx.universality is not None else pd.DataFrame()
    if universality.empty:
        skipped["universality"] = "the study has no ok curves (universality needs them)"
    else:
        figures["universality"] = _figure_json(figs.universality_bars(
            universality, [name for name in ctx.layers if name in set(universality["layer"])],
            [name for name in ctx.populations if name in set(universality["population"])], ctx.layer_eps,
            ctx.eps))
    cross = tables["cross"]
    if cross.empty or not (cross["layer_a"] != cross["layer_b"]).any():
        skipped["cross"] = "the study has no cross-layer rows (cross_layers is not enabled)"
    else:
        if (cross["population"] == "trained").any():
            cross = cross.loc[cross["population"] == "trained"]
        cross_layers = [name for name in ctx.layers if name in set(cross["layer_a"]) | set(cross["layer_b"])]
        figures["cross"] = _figure_json(figs.cross_layer_heatmaps(cross, cross_layers))
    trajectory, against = tables["trajectory"]
    if trajectory.empty:
        skipped["trajectory"] = "the study has no trajectory rows (no saved epochs are compared)"
    else:
        figures["trajectory"] = _figure_json(figs.trajectory_lines(
            trajectory, [name for name in ctx.layers if name in set(trajectory["layer"])], against))
    record = ctx.record or {}
    payload = {
        "study": ctx.study, "steps": steps, "initial": initial, "layers": layers, "populations": populations,
        "report_eps": ctx.eps, "layer_eps": ctx.layer_eps,
        "means": {p: {layer: values.tolist() for layer, values in by_layer.items()} for p, by_layer in means.items()},
        "pairs": pairs, "labels": model_labels(tables["models"], names), "figures": figures,
        "neurons": neurons,
        "tables": {"config": _flatten(record.get("config") or {k: v for k, v in record.items() if k != "config"}),
                   "runs": _runs_rows(tables["runs"]), "failed": _failed_rows(ctx)},
        "facts": _facts(ctx, counts, record),
    }
    return payload, skipped


def _facts(ctx, counts: list[PairCounts], record: dict) -> list[list[str]]:
    facts = [["study", ctx.study], ["config hash", str(record.get("config_hash") or "—")],
             ["code version", str(record.get("code_version") or "—")],
             ["layers", ", ".join(ctx.layers) or "—"], ["ε grid", ", ".join(f"{e:g}" for e in ctx.grid) or "—"]]
    for population in ctx.populations:
        entries = [entry for entry in counts if entry.population == population]
        if entries:
            facts.append([population, f"{len(entries[0].models)} models, {len(entries[0].first)} pairs per layer"])
    return facts


def _asset(name: str) -> str:
    return resources.files("raymatch.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_text(text: str) -> str:
    """Text safe inside a ``<script>`` element (no ``</`` that could end it)."""
    return text.replace("</", "<\\/")


#: No request of any kind may leave the page: scripts and styles are inline, images are data: or blob: URLs.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
        "font-src data:; connect-src data: blob:")


def render_page(payload: dict, skipped: dict[str, str]) -> str:
    """The whole page as one string: plotly.js, the page's script and style, and ``payload`` inlined."""
    from plotly.offline import get_plotlyjs

    data = _script_text(json.dumps({**payload, "skipped": skipped}, separators=(",", ":"), allow_nan=False,
                                   default=_json_default))
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = html.escape(f"raymatch report: {payload['study']}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n"
            f"<style>{_asset('page.css')}</style>\n"
            f"<script>{get_plotlyjs()}</script>\n</head>\n"
            f"<body data-ready=\"false\"><header><h1>{title}</h1><p class=\"note\">Written {created} by raymatch "
            f"report --html; works offline (everything is in this file).</p></header>\n<main id=\"page\"></main>\n"
            f"<script type=\"application/json\" id=\"raymatch-data\">{data}</script>\n"
            f"<script>{_script_text(_asset('page.js'))}</script>\n</body></html>\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_html(store: Store, ctx, out_dir: str | Path, *, neurons: bool = False) -> HtmlPage:
    """Write ``<out_dir>/index.html`` for the report's context ``ctx`` (see :func:`page_payload`).

    The file is written whole under a temporary name and renamed, so a reader never sees half a page.
    """
    out = Path(out_dir)
    payload, skipped = page_payload(store, ctx, neurons=neurons)
    text = render_page(payload, skipped)
    path = out / PAGE_NAME
    partial = out / f".{PAGE_NAME}.partial"
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return HtmlPage(path=path, size=path.stat().st_size, skipped=skipped, payload=payload)


def html_report(store: Store, out_dir: str | Path, *, study: str | None = None, eps: float | None = None,
                neurons: bool = False) -> HtmlPage:
    """Only ``index.html`` of a study (no PNGs, no summary): what ``write_report(..., html=True)`` adds.

    ``study`` and ``eps`` as in :func:`raymatch.report.write_report`; ``out_dir`` is created if needed.
    """
    from .command import read_context

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_html(store, read_context(store, study, eps), out, neurons=neurons)


__all__ = ["BAND_BOOT", "PAGE_NAME", "HtmlPage", "html_report", "page_payload", "render_page", "write_html"]
