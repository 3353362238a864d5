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
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..match.inputs import EPS_RULE, check_eps
from ..results import connect
from ..store import Store
from ..store.layout import study_record_key, table_prefix
from .beyond import draw_beyond_figures
from .context import DEFAULT_EPS, ReportContext, ordered, population_order
from .figures import FigureResult, draw_figures
from .html import HtmlPage, write_html
from .measures import draw_measure_figures, measure_sections, read_measure_report
from .similarity_table import format_similarity_table, similarity_table
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
        The ε of the CKA and repeats figures: the one asked for (None without ``"ok"`` rows).
    off_grid : bool
        Whether :attr:`eps` is not in the study's ε grid (its rows were read from ``matches_at(eps)``).
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
    off_grid: bool = False
    html: HtmlPage | None = None

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


def read_context(store: Store, study: str | None, eps: float | None) -> ReportContext:
    """Load one study's rows, record and layer order from ``store`` (one DuckDB connection).

    Parameters
    ----------
    store : Store
        The study store.
    study : str or None
        The study; None when the store holds a single one.
    eps : float
        The ε asked for. In the study's grid, its rows are the ``matches`` rows at that grid value; off the grid,
        the rows of ``matches_at(eps)`` (the stored curves at ``eps``: nothing is recomputed).

    Returns
    -------
    ReportContext
        The study's ``matches`` rows at its grid (every row, and the ``"ok"`` ones), the ``"ok"`` rows at ``eps``,
        its ``simple_matches`` rows (current configuration) and ``cka`` rows, the layers in network order (from
        the study record when usable, else order of first appearance) with notes on that order, the ε grid and
        the populations.

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
        chosen, off_grid, at_eps = None, False, ok.iloc[:0]
        if grid:
            nearest = min(grid, key=lambda value: (abs(value - (DEFAULT_EPS if eps is None else eps)), value))
            if eps is None or abs(nearest - eps) <= _EPS_TOLERANCE:
                chosen, at_eps = nearest, ok.loc[ok["eps"] == nearest].reset_index(drop=True)
            else:
                chosen, off_grid = eps, True
                rows = _frame(con, f"SELECT * FROM matches_at($eps) WHERE study = $study {_ROW_ORDER}",
                              eps=eps, study=study)
                at_eps = rows.loc[rows["status"] == "ok"].reset_index(drop=True)
        simple = _frame(con, "SELECT * FROM simple_matches SEMI JOIN studies USING (study, config_hash) "
                             "WHERE study = $study ORDER BY created_at, population, layer, model_a, model_b, repeat, "
                             "eps, match_id", study=study)
        cka = _frame(con, "SELECT * FROM cka WHERE study = $study AND population <> 'trajectory' "
                          "ORDER BY created_at, population, layer, model_a, model_b, repeat", study=study)
        curves = _frame(con, "SELECT * FROM curves WHERE study = $study AND status = 'ok' "
                             "ORDER BY population, layer, model_a, model_b, repeat", study=study)
        universality = None
        if chosen is not None:
            universality = _frame(con, "SELECT * FROM universality($eps) WHERE study = $study "
                                       "ORDER BY population, layer, repeat, model, neuron", eps=chosen, study=study)
    finally:
        con.close()

    record, problem = _read_record(store, study)
    layers, layer_order, notes = _layer_order(ok, study, record, problem)
    return ReportContext(study=study, matches=matches, ok=ok, layers=layers, layer_order=layer_order, notes=notes,
                    record=record, grid=grid, eps=chosen, populations=population_order(matches["population"]),
                    simple=simple, cka=cka, off_grid=off_grid, at_eps=at_eps, curves=curves,
                    universality=universality)


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
        ε of the CKA and repeats figures. Not in the study's ε grid, its rows are read from ``matches_at(eps)``
        (the stored ε-curves at that ε; nothing is recomputed) and the similarity table and summary get a column
        for it. By default, the grid's value nearest to 0.25.
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
    rows = pd.concat([ctx.ok, ctx.at_eps], ignore_index=True) if ctx.off_grid else ctx.ok
    table = similarity_table(rows, layers=ctx.layers)
    page = write_html(store, ctx, out, neurons=html_neurons) if html or html_neurons else None
    summary = summary_markdown(ctx, figures, table, html_page=page.path.name if page is not None else None,
                               sections=measure_sections(measures, ctx))
    summary_path = out / SUMMARY_NAME
    summary_path.write_text(summary, encoding="utf-8")
    return Report(study=ctx.study, out_dir=out, summary_path=summary_path, figures=figures, layers=ctx.layers,
                  layer_order=ctx.layer_order, record=ctx.record, similarity_table=table, eps=ctx.eps,
                  summary=summary, off_grid=ctx.off_grid, html=page)


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
                        help="ε of the CKA and repeats figures (default: the grid's value nearest 0.25); one not in "
                             "the study's ε grid is read from the stored curves (matches_at) and added to the "
                             "similarity table")
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
    print(f"study {report.study}: mean maximum-match similarity (null in parentheses)")
    print(format_similarity_table(report.similarity_table))
    if report.off_grid:
        print(f"ε = {report.eps:g} is not in the study's ε grid: its column is read from the stored curves "
              f"(matches_at({report.eps:g}))")
    print(f"wrote {', '.join(str(path) for path in report.paths)}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    if report.html is not None:
        print(f"interactive report ({report.html.size / 1e6:.1f} MB): {report.html.path.resolve().as_uri()}")
    return 0
