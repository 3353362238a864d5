"""``raymatch report``: load one study from a store, draw its figures, write its summary.

:func:`read_context` reads the store's ``matches``, ``simple_matches``, ``cka`` and ``curves`` views and
``universality(eps)`` at the report's ε (see :mod:`raymatch.results`; ``matches_at(eps)`` for an ε off the study's
grid) and the study's record
(:func:`raymatch.store.layout.study_record_key`, for the layers in network order);
:func:`write_report` draws the figures (:mod:`.figures`) and writes the summary (:mod:`.summary`) into a folder;
:func:`add_arguments` and :func:`command` are the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..match.inputs import EPS_RULE, check_eps
from ..results import connect
from ..store import Store
from ..store.layout import study_record_key, table_prefix
from .beyond import draw_beyond_figures
from .context import REPORT_SHARE, TRAINED, ReportContext, ordered, population_order
from .figures import FigureResult, draw_figures
from .html import HtmlPage, write_html
from .measures import draw_measure_figures, measure_sections, read_measure_report
from .similarity_table import TABLE_WIDTH, format_similarity_table, similarity_table
from .summary import SUMMARY_NAME, summary_markdown


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
        Every figure of :data:`~raymatch.report.figures.FIGURE_NAMES`, written or skipped.
    layers : list of str
        The layers drawn, in network order.
    layer_order : str
        ``"record"`` (from the study record, :func:`~raymatch.store.layout.study_record_key`) or ``"table"``
        (order of first appearance in ``matches``).
    record : dict or None
        The study record, when the store has one.
    similarity_table : pandas.DataFrame
        :func:`~raymatch.report.similarity_table.similarity_table` of the study's ``"ok"`` matches: index ``layer``,
        columns ``(population, eps)``; an ε asked for that is not in the grid has its own columns, from
        ``matches_at(eps)``.
    eps : float or None
        The ε asked for (``--eps``), of every layer's panels; None when each layer has its own (:attr:`layer_eps`).
    off_grid : bool
        Whether an ε used is not in the study's ε grid (its rows were read from ``matches_at(eps)``).
    summary : str
        The text of ``summary.md``.
    layer_eps : dict of str to float
        The ε of each layer's panels (CKA beside the match, repeats, universality, the summary's tables at ε).
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
    off_grid: bool = False
    html: HtmlPage | None = None
    layer_eps: dict[str, float] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """Every file written: the figures drawn, ``index.html`` (with ``html=True``), then ``summary.md``."""
        return [result.path for result in self.figures.values() if result.path is not None] + (
            [self.html.path] if self.html is not None else []) + [self.summary_path]

    @property
    def skipped(self) -> dict[str, str]:
        """Figures not written, with the reason."""
        return {name: result.skipped for name, result in self.figures.items() if result.skipped is not None}


def _choose_study(store: Store, studies: list[str], study: str | None, stale: int) -> str:
    """``study``, checked against ``studies`` (those with ``curves`` rows); the only one there when ``study`` is None.

    ``stale`` counts the stored curves of no study's current configuration (``curves_all`` but not ``curves``),
    named in the message of a store without current rows.
    """
    if not studies:
        hint = (f" of a study's current configuration ({stale} stored rows match no study record "
                f"{study_record_key('<name>')}: see the curves_all view)" if stale else "")
        raise ValueError(f"store {store.uri} holds no match results: it holds no curves rows "
                         f"({table_prefix('curves')}){hint}; run a study first")
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
    key = study_record_key(study)
    try:
        if not store.exists(key):
            return None, f"no study record {key}"
        record = store.read_json(key)
    except (ValueError, OSError) as error:  # a name that cannot be a key, unreadable JSON
        return None, f"study record {key} unreadable ({error})"
    if not isinstance(record, dict):
        return None, f"study record {key} is not a JSON object"
    return record, None


def _frame(con, sql: str, **params) -> pd.DataFrame:
    """One query's rows as :func:`raymatch.results.load` gives them (list cells as arrays, UTC times)."""
    import duckdb

    try:
        return con.sql(sql, params=params or None).to_arrow_table().to_pandas()
    except duckdb.Error as error:
        raise ValueError(str(error)) from None


#: Order of the rows of a study: the order they were written in (a layer's first row gives its place when the
#: study record lists no layers), then the key (the views themselves have no order).
_ROW_ORDER = "ORDER BY created_at, population, layer, model_a, model_b, repeat, eps"
#: Grid values closer than this to the ε asked for are taken as that ε.
_EPS_TOLERANCE = 1e-9


def _layer_order(ok: pd.DataFrame, study: str, record: dict | None, problem: str | None):
    """The layers drawn, where their order comes from (``"record"`` or ``"table"``), and notes on it."""
    notes: list[str] = []
    record_layers = record.get("layers") if record else None
    if record is not None and not (isinstance(record_layers, list) and record_layers
                                   and all(isinstance(name, str) for name in record_layers)):
        problem = f"study record {study_record_key(study)} has no list of layer names"
        record_layers = None
    present = list(dict.fromkeys(ok["layer"]))
    if record_layers:
        layers = ordered(present, record_layers)
        extra = [name for name in layers if name not in record_layers]
        if extra:
            notes.append(f"layers not in the study record (drawn last): {', '.join(extra)}")
        idle = [name for name in record_layers if name not in present]
        if idle:
            notes.append(f"layers of the record without ok rows: {', '.join(idle)}")
        return layers, "record", notes
    notes.append(f"{problem}: layers are in order of first appearance in the matches table (the order their rows "
                 "were written in), which need not be network order")
    return present, "table", notes


def _chosen_eps(con, study: str, populations: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Each layer's report ε by :data:`~raymatch.report.context.REPORT_SHARE`, and why a layer has none.

    The median over the layer's trained pairs and repeats (the first population's where it has no trained pairs)
    of ``eps_for_share(REPORT_SHARE)``, rounded up to 3 decimals (so that the shown value is the one used).
    """
    rows = _frame(con, "SELECT layer, population, median(eps) AS eps, count(eps) AS reached, count(*) AS rows "
                       "FROM eps_for_share($share) WHERE study = $study AND population <> 'trajectory' "
                       "GROUP BY layer, population", share=REPORT_SHARE, study=study)
    chosen, missing = {}, {}
    for layer, group in rows.groupby("layer", sort=False):
        present = [name for name in populations if name in set(group["population"])]
        row = group.loc[group["population"] == (TRAINED if TRAINED in present else present[0])].iloc[0]
        if row["reached"] == 0:
            missing[layer] = (f"no {row['population']} pair of {layer} has a live neuron on both sides, so no ε "
                              "matches a share of them")
            continue
        chosen[layer] = math.ceil(round(float(row["eps"]) * 1000, 6)) / 1000
    return chosen, missing


def _rows_at(con, ok: pd.DataFrame, study: str, layer_eps: dict[str, float], grid: list[float]) -> pd.DataFrame:
    """The ``"ok"`` rows of each layer at its ε: from ``ok`` on the grid, from ``matches_at(eps)`` off it."""
    parts = []
    for eps in sorted(set(layer_eps.values())):
        layers = [layer for layer, value in layer_eps.items() if value == eps]
        if eps in grid:
            parts.append(ok.loc[(ok["eps"] == eps) & ok["layer"].isin(layers)])
            continue
        rows = _frame(con, f"SELECT * FROM matches_at($eps) WHERE study = $study AND population <> 'trajectory' "
                           f"AND status = 'ok' AND list_contains($layers, layer) {_ROW_ORDER}",
                      eps=eps, study=study, layers=layers)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else ok.iloc[:0]


def _universality_at(con, study: str, layer_eps: dict[str, float]) -> pd.DataFrame | None:
    """``universality(eps)`` of each layer at its ε (None when no layer has one)."""
    parts = [_frame(con, "SELECT * FROM universality($eps) WHERE study = $study AND list_contains($layers, layer) "
                         "ORDER BY population, layer, repeat, model, neuron", eps=eps, study=study,
                    layers=[layer for layer, value in layer_eps.items() if value == eps])
             for eps in sorted(set(layer_eps.values()))]
    return pd.concat(parts, ignore_index=True) if parts else None


def read_context(store: Store, study: str | None, eps: float | None) -> ReportContext:
    """Load one study's rows, record and layer order from ``store`` (one DuckDB connection).

    Parameters
    ----------
    store : Store
        The study store.
    study : str or None
        The study; None when the store holds a single one.
    eps : float or None
        The ε asked for, of every layer's panels. In the study's grid, its rows are the ``matches`` rows at that
        grid value; off the grid, the rows of ``matches_at(eps)`` (the stored curves at ``eps``: nothing is
        recomputed). None: each layer's own ε (:data:`~raymatch.report.context.REPORT_SHARE`, from
        ``eps_for_share``).

    Returns
    -------
    ReportContext
        The study's ``matches`` rows at its grid (every row, and the ``"ok"`` ones), the ``"ok"`` rows of each
        layer at its ε, its ``simple_matches`` rows (current configuration) and ``cka`` rows, the layers in network
        order (from the study record when usable, else order of first appearance) with notes on that order, the ε
        grid, each layer's ε and the populations.

    Raises
    ------
    ValueError
        A missing local store, a store without ``curves`` rows, several studies and no ``study``, an unknown
        ``study``, or a store the results views refuse (a 0.1.0 store, a study record without a config hash).
    """
    if store.is_local and not os.path.isdir(store.root):
        raise ValueError(f"store {store.uri!r} does not exist (no folder {store.root})")
    con = connect(store)
    try:
        studies = sorted(_frame(con, "SELECT DISTINCT study FROM curves")["study"])
        stale = 0 if studies else int(_frame(con, "SELECT count(*) AS n FROM curves_all")["n"].iloc[0])
        study = _choose_study(store, studies, study, stale)
        # trajectory rows (saved epochs within a seed) have a figure of their own (report/beyond.py)
        matches = _frame(con, f"SELECT * FROM matches WHERE study = $study AND population <> 'trajectory' "
                              f"{_ROW_ORDER}", study=study)
        ok = matches.loc[matches["status"] == "ok"].reset_index(drop=True)
        grid = sorted(set(ok["eps"].astype(float)))
        populations = population_order(matches["population"])
        chosen, layer_eps, missing = None, {}, {}
        if grid and eps is not None:
            nearest = min(grid, key=lambda value: (abs(value - eps), value))
            chosen = nearest if abs(nearest - eps) <= _EPS_TOLERANCE else eps
            layer_eps = dict.fromkeys(dict.fromkeys(ok["layer"]), chosen)
        elif grid:
            layer_eps, missing = _chosen_eps(con, study, populations)
            layer_eps = {layer: next((value for value in grid if abs(value - eps) <= _EPS_TOLERANCE), eps)
                         for layer, eps in layer_eps.items()}
        at_eps = _rows_at(con, ok, study, layer_eps, grid)
        simple = _frame(con, "SELECT * FROM simple_matches SEMI JOIN studies USING (study, config_hash) "
                             "WHERE study = $study ORDER BY created_at, population, layer, model_a, model_b, repeat, "
                             "eps, match_id", study=study)
        cka = _frame(con, "SELECT * FROM cka WHERE study = $study AND population <> 'trajectory' "
                          "ORDER BY created_at, population, layer, model_a, model_b, repeat", study=study)
        curves = _frame(con, "SELECT * FROM curves WHERE study = $study AND status = 'ok' "
                             "ORDER BY population, layer, model_a, model_b, repeat", study=study)
        universality = _universality_at(con, study, layer_eps)
    finally:
        con.close()

    record, problem = _read_record(store, study)
    layers, layer_order, notes = _layer_order(ok, study, record, problem)
    layer_eps = {layer: layer_eps[layer] for layer in ordered(layer_eps, layers)}
    missing = {layer: missing[layer] for layer in ordered(missing, layers)}
    return ReportContext(study=study, matches=matches, ok=ok, layers=layers, layer_order=layer_order, notes=notes,
                         record=record, grid=grid, eps=chosen, populations=populations, simple=simple, cka=cka,
                         off_grid=any(value not in grid for value in layer_eps.values()), at_eps=at_eps,
                         curves=curves, universality=universality, layer_eps=layer_eps, eps_missing=missing)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)


def write_report(store: Store, *, study: str | None = None, out_dir: str | os.PathLike | None = None,
                 eps: float | None = None, html: bool = False, html_neurons: bool = False) -> Report:
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
    eps : float, optional
        The ε of every layer's panels (CKA beside the match, repeats, universality, the summary's tables at ε).
        Not in the study's ε grid, its rows are read from ``matches_at(eps)`` (the stored ε-curves at that ε;
        nothing is recomputed) and the similarity table and summary get a column for it. By default each layer
        has its own: the median over its trained pairs of the smallest ε at which half the live neurons of each
        side are matched (``eps_for_share(0.5)``), rounded up to 3 decimals.
    html : bool
        Also write ``index.html``, the interactive page (:mod:`raymatch.report.html`); ``summary.md`` links to it.
    html_neurons : bool
        Embed each pair's per-neuron critical ε in the page too (larger; implies ``html``).

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
    if eps is not None:
        try:
            eps = check_eps(eps)
        except ValueError:
            raise ValueError(f"eps must be {EPS_RULE}; got {eps!r}") from None
    ctx = read_context(store, study, eps)
    out = Path(out_dir) if out_dir is not None else Path(f"report-{_safe_name(ctx.study)}")
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(ctx, out)
    figures.update(draw_beyond_figures(store, ctx, out))  # trajectory.png, cross_layers.png: where there are rows
    measures = read_measure_report(store, ctx)  # the standard measures, universal neurons, a stored evaluation
    figures.update(draw_measure_figures(measures, ctx, out))
    rows = pd.concat([ctx.ok, ctx.at_eps], ignore_index=True) if ctx.off_grid and ctx.eps is not None else ctx.ok
    table = similarity_table(rows, layers=ctx.layers)
    page = write_html(store, ctx, out, neurons=html_neurons) if html or html_neurons else None
    summary = summary_markdown(ctx, figures, table, html_page=page.path.name if page is not None else None,
                               sections=measure_sections(measures, ctx))
    summary_path = out / SUMMARY_NAME
    summary_path.write_text(summary, encoding="utf-8")
    return Report(study=ctx.study, out_dir=out, summary_path=summary_path, figures=figures, layers=ctx.layers,
                  layer_order=ctx.layer_order, record=ctx.record, similarity_table=table, eps=ctx.eps,
                  summary=summary, off_grid=ctx.off_grid, html=page, layer_eps=dict(ctx.layer_eps))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``raymatch report`` after ``STORE [--endpoint-url URL]``: ``--study --out --eps --html``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``report`` subcommand's parser, made with the command line's store options as a parent; changed in
        place.
    """
    parser.add_argument("--study", metavar="NAME", help="the study to report on (needed when the store holds several)")
    parser.add_argument("--out", metavar="DIR", help="folder for the figures and summary.md (default: report-<study>)")
    parser.add_argument("--eps", type=float, default=None,
                        help="one ε for every layer's panels (CKA beside the match, repeats, universality); default: "
                             "each layer's own, the median over its trained pairs of the smallest ε at which half "
                             "the live neurons are matched (eps_for_share(0.5)); one not in the study's ε grid is "
                             "read from the stored curves (matches_at) and added to the similarity table")
    parser.add_argument("--html", action="store_true",
                        help="also write index.html: one self-contained page (works offline) with an ε slider, the "
                             "model × model matrices, the ε-curves and the study's runs")
    parser.add_argument("--html-neurons", action="store_true",
                        help="with --html: embed every pair's per-neuron critical ε too (a larger page)")


def command(args: argparse.Namespace) -> int:
    """Run ``raymatch report``: write the report, print the similarity table and the files written.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of :func:`add_arguments` (``store``, ``study``, ``out``, ``eps``, ``html``, ``html_neurons``,
        ``endpoint_url``).

    Returns
    -------
    int
        The exit status, 0.
    """
    store = Store.open_existing(args.store, endpoint_url=getattr(args, "endpoint_url", None))
    report = write_report(store, study=args.study, out_dir=args.out, eps=getattr(args, "eps", None),
                          html=getattr(args, "html", False), html_neurons=getattr(args, "html_neurons", False))
    print(f"study {report.study}: mean maximum-match similarity over pairs (layer × ε)")
    print(format_similarity_table(report.similarity_table))
    if report.off_grid and report.eps is not None:
        print(f"ε = {report.eps:g} is not in the study's ε grid: its column is read from the stored curves "
              f"(matches_at({report.eps:g}))")
    elif report.layer_eps and report.eps is None:
        print(textwrap.fill(f"each layer's ε (half its live neurons matched in the median trained pair: "
                            f"eps_for_share({REPORT_SHARE:g}); --eps sets one): "
                            + ", ".join(f"{layer} {eps:g}" for layer, eps in report.layer_eps.items()),
                            width=TABLE_WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    print(f"wrote {', '.join(str(path) for path in report.paths)}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    if report.html is not None:
        print(f"interactive report ({report.html.size / 1e6:.1f} MB): {report.html.path.resolve().as_uri()}")
    return 0
