"""``raymatch report``: load one study from a store, draw its figures, write its summary.

:func:`_context` reads the store's ``matches``, ``simple_matches`` and ``cka`` tables (see :mod:`raymatch.results`)
and the study's record (:func:`raymatch.store.layout.study_record_key`, for the layers in network order);
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

from ..results import load
from ..store import Store
from ..store.layout import study_record_key, table_prefix
from .context import DEFAULT_EPS, _Context, _ordered, _populations
from .figures import FigureResult, draw_figures
from .summary import SUMMARY_NAME, _summary
from .tables import format_similarity_table, similarity_table


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
        :func:`~raymatch.report.tables.similarity_table` of the study's ``"ok"`` matches: index ``layer``,
        columns ``(population, eps)``.
    eps : float or None
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


def _choose_study(store: Store, matches: pd.DataFrame, study: str | None) -> str:
    """``study``, checked against the studies of ``matches``; the only study there when ``study`` is None."""
    studies = sorted(set(matches["study"]))
    if not studies:
        raise ValueError(f"store {store.uri} holds no match results ({table_prefix('matches')} is empty): run a "
                         "study first")
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


def _context(store: Store, study: str | None, eps: float) -> _Context:
    """Load one study's rows, record and layer order from ``store``.

    Parameters
    ----------
    store : Store
        The study store.
    study : str or None
        The study; None when the store holds a single one.
    eps : float
        The ε asked for; the nearest value of the study's grid becomes ``_Context.eps``.

    Returns
    -------
    _Context
        The study's ``matches`` rows (every row, and the ``"ok"`` ones), its ``simple_matches`` and ``cka`` rows,
        the layers in network order (from the study record when usable, else order of first appearance) with
        notes on that order, the ε grid and the populations.

    Raises
    ------
    ValueError
        A missing local store, a store without match results, several studies and no ``study``, or an unknown
        ``study``.
    """
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
        problem = f"study record {study_record_key(study)} has no list of layer names"
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
    if not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1]; got {eps!r}")
    ctx = _context(store, study, float(eps))
    out = Path(out_dir) if out_dir is not None else Path(f"report-{_safe_name(ctx.study)}")
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(ctx, out)
    table = similarity_table(ctx.ok, layers=ctx.layers)
    summary = _summary(ctx, figures, table)
    summary_path = out / SUMMARY_NAME
    summary_path.write_text(summary, encoding="utf-8")
    return Report(study=ctx.study, out_dir=out, summary_path=summary_path, figures=figures, layers=ctx.layers,
                  layer_order=ctx.layer_order, record=ctx.record, similarity_table=table, eps=ctx.eps,
                  summary=summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``raymatch report`` after ``STORE [--endpoint-url URL]``: ``[--study] [--out] [--eps]``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``report`` subcommand's parser, made with the command line's store options as a parent; changed in
        place.
    """
    parser.add_argument("--study", metavar="NAME", help="the study to report on (needed when the store holds several)")
    parser.add_argument("--out", metavar="DIR", help="folder for the figures and summary.md (default: report-<study>)")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS,
                        help="ε of the CKA and repeats figures; the grid's nearest value is used (default: 0.25)")


def command(args: argparse.Namespace) -> int:
    """Run ``raymatch report``: write the report, print the similarity table and the files written.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of :func:`add_arguments` (``store``, ``study``, ``out``, ``eps``, ``endpoint_url``).

    Returns
    -------
    int
        The exit status, 0.
    """
    store = Store.open_existing(args.store, endpoint_url=getattr(args, "endpoint_url", None))
    report = write_report(store, study=args.study, out_dir=args.out, eps=getattr(args, "eps", DEFAULT_EPS))
    print(f"study {report.study}: mean maximum-match similarity (null in parentheses)")
    print(format_similarity_table(report.similarity_table))
    print(f"wrote {', '.join(str(path) for path in report.paths)}")
    for name, reason in report.skipped.items():
        print(f"skipped {name}: {reason}")
    return 0
