"""The text of a report's ``summary.md``.

Counts of models and pairs per population and of curves ok and failed, the layer × ε similarity table with the
untrained null beside it (and a column for an ε asked for off the grid), maximal ε and linear CKA per layer, the
simple matches found, which figures were written or skipped and why, and caveats (the probe, the chance ratio, mixed
configurations, the layer order).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from ..results import pair_summary
from ..store.layout import study_record_key
from .context import UNTRAINED, ReportContext, ordered, per_layer_chance, population_order
from .figures import FigureResult
from .science import bootstrap_lines, universality_lines
from .similarity_table import MISSING, format_number, markdown_table, similarity_cells

SUMMARY_NAME = "summary.md"


def _describe(value: Any, *, nested: bool = False) -> str:
    """``{"name": "vgg11", "rows": {"rows": 10}}`` as ``name vgg11, rows (rows 10)``."""
    if isinstance(value, dict):
        text = ", ".join(f"{key} {_describe(item, nested=True)}" for key, item in value.items() if item is not None)
        return f"({text})" if nested else text
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def _spread_text(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return MISSING
    text = f"{values.mean():.2f}"
    return text if len(values) == 1 else f"{text} [{values.min():.2f}–{values.max():.2f}]"


def _population_lines(ctx: ReportContext) -> list[str]:
    lines = []
    for population in ctx.populations:
        rows = ctx.matches.loc[ctx.matches["population"] == population]
        names = dict(zip(rows["model_a"], rows["name_a"], strict=True)) | dict(
            zip(rows["model_b"], rows["name_b"], strict=True))
        models = sorted(names.values())
        pairs = len(rows[["model_a", "model_b"]].drop_duplicates())
        shown = f" ({', '.join(models)})" if len(models) <= 6 else f" ({', '.join(models[:5])}, …)"
        lines.append(f"- {population.capitalize()}: {len(models)} models{shown}, {pairs} pairs")
    return lines


_CURVE_KEY = ["population", "layer", "model_a", "model_b", "repeat"]


def _count_lines(ctx: ReportContext) -> list[str]:
    """Curves ok and failed (a failed curve is a failed ``matches`` row at every ε of the grid), errors, extras."""
    curves = ctx.matches.drop_duplicates(_CURVE_KEY)
    status = curves["status"].value_counts()
    lines = [f"- Curves (pair × layer × repeat): {status.get('ok', 0)} ok, {status.get('failed', 0)} failed "
             f"(failed ones are not drawn; each curve gives one matches row per ε of the grid)"]
    failed = curves.loc[curves["status"] == "failed"]
    if not failed.empty:
        by_layer = failed.groupby("layer", sort=False).size()
        lines.append("  - failed by layer: " + ", ".join(f"{layer} {count}" for layer, count in by_layer.items()))
        first = str(failed["error"].iloc[0]).splitlines()[0]
        lines.append(f"  - first error: `{first}` (all: `raymatch query STORE \"SELECT * FROM curves WHERE "
                     f"status = 'failed'\"`)")
    lines.append(f"- Simple matches: {len(ctx.simple)}; CKA rows: {len(ctx.cka)}")
    return lines


def _layer_table(ctx: ReportContext) -> str:
    pairs = pair_summary(ctx.ok)
    chance = per_layer_chance(ctx)
    header = ["layer", "neurons", "samples", "repeats", "chance √(1−k/d)"] + [
        f"max ε {population}" for population in population_order(pairs["population"])]
    rows = []
    for layer in ctx.layers:
        layer_rows = ctx.ok.loc[ctx.ok["layer"] == layer]
        neurons = sorted(set(layer_rows["n_a"]) | set(layer_rows["n_b"]))
        samples = sorted(set(layer_rows["n_samples"]))
        row = [layer, "/".join(str(int(n)) for n in neurons), "/".join(str(int(n)) for n in samples),
               str(layer_rows["repeat"].nunique()), format_number(chance.get(layer, math.nan), 3)]
        for population in population_order(pairs["population"]):
            selected = pairs.loc[(pairs["population"] == population) & (pairs["layer"] == layer), "max_epsilon"]
            row.append(_spread_text(selected))
        rows.append(row)
    return markdown_table(header, rows)


def _cka_table(ctx: ReportContext) -> str:
    per_pair = ctx.cka.groupby(["population", "layer", "model_a", "model_b"], sort=False)["cka"].mean().reset_index()
    populations = population_order(per_pair["population"])
    rows = []
    for layer in ordered(per_pair["layer"], ctx.layers):
        rows.append([layer] + [_spread_text(per_pair.loc[(per_pair["population"] == population)
                                                         & (per_pair["layer"] == layer), "cka"])
                               for population in populations])
    return markdown_table(["layer"] + [f"CKA {population}" for population in populations], rows)


def _caveats(ctx: ReportContext) -> str:
    parts = []
    probe = (ctx.record or {}).get("probe")
    if isinstance(probe, dict) and probe.get("dataset"):
        examples = probe.get("n_examples") or "all"
        text = f"activations from the {probe.get('split', '?')} split of {probe['dataset']} ({examples} examples"
        if probe["dataset"] == "imported" or probe.get("path"):  # imported activations, or the user's own files
            source = "imported activations" if probe["dataset"] == "imported" else \
                f"{probe['dataset']} probe {probe['path']}"
            text = f"activations from {source} ({examples} examples"
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


def summary_markdown(ctx: ReportContext, figures: dict[str, FigureResult], table: pd.DataFrame,
                     html_page: str | None = None, sections: list[str] | None = None) -> str:
    """The text of ``summary.md``: counts, tables, the figures written or skipped (``figures``) and caveats.

    ``html_page``: the name of the interactive page written beside it, linked at the top. ``sections``: more lines
    before the list of figures (the standard measures, :func:`raymatch.report.measures.measure_sections`).
    """
    record = ctx.record or {}
    hashes = sorted(set(ctx.matches["config_hash"].dropna()))
    lines = [f"# raymatch report: {ctx.study}", ""]
    if html_page:
        lines += [f"Interactive report (ε slider, model × model matrices; open it in a browser, it works offline): "
                  f"[{html_page}]({html_page})", ""]
    lines.append(f"- Config hash: {record.get('config_hash') or ', '.join(hashes) or MISSING}")
    if record.get("architecture"):
        lines.append(f"- Architecture: {_describe(record['architecture'])}")
    if record.get("probe"):
        lines.append(f"- Probe: {_describe(record['probe'])}")
    lines += _population_lines(ctx)
    source = (f"network order, from {study_record_key(ctx.study)}" if ctx.layer_order == "record"
              else "order of first appearance in the matches table")
    lines.append(f"- Layers ({source}): {', '.join(ctx.layers) or MISSING}")
    lines += [f"  - {note}" for note in ctx.notes]
    recorded_eps = record.get("eps")
    grid = ", ".join(f"{eps:g}" for eps in ctx.grid) or MISSING
    lines.append(f"- ε grid: {grid}" + (f" (record: {', '.join(f'{e:g}' for e in recorded_eps)})"
                                        if isinstance(recorded_eps, list) and sorted(recorded_eps) != ctx.grid else ""))
    if ctx.eps is not None:
        lines.append(f"- ε of the CKA and repeats figures: {ctx.eps:g}" + (
            f" (not in the grid: read from the stored curves with matches_at({ctx.eps:g}), nothing recomputed; "
            "it has its own column in the similarity table)" if ctx.off_grid else "") + " (asked for with --eps)")
    elif ctx.layer_eps or ctx.eps_missing:
        values = [f"{layer} {eps:g}" for layer, eps in ctx.layer_eps.items()] + [
            f"{layer} none ({reason})" for layer, reason in ctx.eps_missing.items()]
        lines.append(f"- ε of the CKA, repeats and universality figures and of the tables at ε: {', '.join(values)}: "
                     f"{ctx.eps_rule()}" + ("; off the grid, so read from the stored curves (matches_at), nothing "
                                           "recomputed" if ctx.off_grid else "") + "; --eps sets one for every layer")
    lines += _count_lines(ctx)
    lines += ["", "## Mean maximum-match similarity", ""]
    if table.empty:
        lines.append("No ok match rows.")
    else:
        has_null = UNTRAINED in set(table.columns.get_level_values("population"))
        lines.append("Mean over pairs (each pair's repeats averaged first); " + (
            "the untrained null baseline in parentheses." if has_null else "no untrained baseline in the store.")
            + (" The permuted-row null (model b's rows permuted) follows as `perm`."
               if "permuted" in set(table.columns.get_level_values("population")) else "")
            + (f" The ε={ctx.eps:g} column is off the grid: the stored curves at that ε (matches_at)."
               if ctx.off_grid and ctx.eps is not None else ""))
        lines += ["", markdown_table(*similarity_cells(table))]
    lines += bootstrap_lines(ctx)
    lines += universality_lines(ctx)
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
                for layer in ordered(sizes["layer"], ctx.layers)
                for eps, group in sizes.loc[sizes["layer"] == layer].groupby("eps")]
        lines.append(markdown_table(["layer", "ε", "found", "median size", "largest"], rows))
    lines += sections or []
    lines += ["", "## Figures", ""]
    for name, result in figures.items():
        lines.append(f"- `{name}`: {result.caption}" if result.path is not None
                     else f"- `{name}`: skipped — {result.skipped}.")
    lines += ["", _caveats(ctx), ""]
    return "\n".join(lines)
