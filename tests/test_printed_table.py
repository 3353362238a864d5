"""The layer × ε table that ``raymatch run`` and ``raymatch report`` print fits a terminal of 100 columns
(issue 25.3): long layer names, three populations and the paper's five ε; twelve ε, summarised with a pointer to
``raymatch query``. The numbers printed are those of :func:`raymatch.report.similarity_table`."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL
from raymatch.report import format_similarity_table, similarity_table
from raymatch.results import append_rows, load
from raymatch.store import Store, layout

LONG = ["features.denseblock4.denselayer16.conv2", "features.transition3.pool", "classifier.head.fc_out.relu",
        "encoder.layers.11.attention.output.dense.projection"]  # the last one: longer than 40 characters
PAPER = [0.15, 0.2, 0.25, 0.3, 0.5]
TWELVE = [round(0.05 * k, 2) for k in range(1, 13)]
POPULATIONS = {"trained": ("t0", "t1", "t2"), "untrained": ("u0", "u1", "u2"), "permuted": ("t0", "t1", "t2")}


def _store(root, grid: list[float]) -> Store:
    """Curves of 3 models per population whose similarity grows with ε (the nulls slower), one repeat."""
    store = Store(str(root))
    store.write_json(layout.study_record_key("wide"), {"name": "wide", "config_hash": "h", "eps": grid,
                                                       "layers": LONG})
    rows = []
    for (population, models), layer in itertools.product(POPULATIONS.items(), LONG):
        slower = {"trained": 0.0, "untrained": 0.15, "permuted": 0.25}[population]
        for index, (a, b) in enumerate(itertools.combinations(models, 2)):
            critical = [min(1.0, 0.04 * i + slower + 0.01 * index + 0.02 * LONG.index(layer)) for i in range(20)]
            rows.append({"study": "wide", "population": population, "layer": layer, "repeat": 0, "model_a": a,
                         "model_b": b, "probe_id": "p", "config_hash": "h", "code_version": "0.2.0",
                         "n_samples": 500, "n_a": 20, "n_b": 20, "dead_a": 0, "dead_b": 0, "critical_a": critical,
                         "critical_b": critical, "exact_tol": EXACT_TOL, "max_epsilon": max(critical),
                         "chance": 0.98, "cka": None, "seconds": 0.0, "status": "ok", "error": None})
    append_rows(store, "curves", rows)
    return store


def _table_lines(out: str, first: str) -> list[str]:
    return out[out.index(first): out.index("wrote ")].splitlines()


@pytest.mark.parametrize("grid", [PAPER, TWELVE], ids=["paper-5-eps", "12-eps"])
def test_the_printed_table_fits_100_columns_and_shows_the_tables_numbers(tmp_path, grid):
    store = _store(tmp_path / "store", grid)
    table = similarity_table(load(store, "matches"), layers=LONG)
    text = format_similarity_table(table)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, text
    # one value per cell, the nulls on lines of their own below each layer
    header = lines[0].split("  ")
    assert header[0].startswith("layer") and "nulls below" in header[0]
    shown = [float(column.split("=")[1]) for column in lines[0].split()[3:]]
    assert set(shown) <= set(grid) and shown[0] == grid[0] and shown[-1] == grid[-1]
    body = {}
    current = None
    for line in lines[1:]:
        if not line or line[0].isdigit() or line.startswith(("  raymatch", "    \"SELECT")):
            break
        label, *values = line.rsplit(None, len(shown))
        if line.startswith("  "):
            body[current, label.strip().split(" ")[0]] = values
        else:
            current = label.strip()
            body[current, "trained"] = values
    short = LONG[3][:20] + "…" + LONG[3][-19:]
    assert [layer for layer, population in body if population == "trained"] == [*LONG[:3], short]
    for layer, population in itertools.product(LONG, POPULATIONS):
        key = (short if layer == LONG[3] else layer, population)
        assert body[key] == [f"{table.at[layer, (population, eps)]:.2f}" for eps in shown], key
    if len(shown) < len(grid):  # summarised: what is left out, and the query that shows it all
        left = [eps for eps in grid if eps not in shown]
        assert f"{len(left)} more ε not shown ({', '.join(f'{eps:g}' for eps in left)})" in text
        assert lines[-2] == "  raymatch query STORE \\"
        assert lines[-1].strip() == '"SELECT layer, population, eps, avg(similarity) FROM matches GROUP BY ALL ' \
                                    'ORDER BY ALL"'
    else:
        assert grid == PAPER


@pytest.mark.slow  # a whole report: its figures take a few seconds
def test_raymatch_report_prints_the_table_and_each_layers_eps_in_100_columns(tmp_path, capsys):
    store = _store(tmp_path / "store", PAPER)
    text = format_similarity_table(similarity_table(load(store, "matches"), layers=LONG))
    assert main(["report", store.root, "--out", str(tmp_path / "report")]) == 0
    printed = _table_lines(capsys.readouterr().out, text.splitlines()[0])
    assert max(map(len, printed)) <= 100
    assert "\n".join(printed).startswith(text) and "each layer's ε" in printed[len(text.splitlines())]


def test_narrow_tables_keep_the_null_beside_the_value_and_a_compact_form_fits_between():
    rows = []
    for (population, models), layer in itertools.product(POPULATIONS.items(), ("relu1", "relu2")):
        for a, b in itertools.combinations(models, 2):
            for eps in PAPER:
                rows.append({"study": "s", "population": population, "layer": layer, "model_a": a, "model_b": b,
                             "repeat": 0, "eps": eps, "status": "ok", "n_a": 10, "n_b": 10, "max_epsilon": 0.5,
                             "chance": 0.9, "similarity": eps * {"trained": 1.6, "untrained": 0.6,
                                                                 "permuted": 0.2}[population]})
    frame = pd.DataFrame(rows)
    two = similarity_table(frame.loc[frame["population"] != "permuted"])
    text = format_similarity_table(two)
    assert "(null " in text and max(map(len, text.splitlines())) <= 100  # as before: it fits
    three = similarity_table(frame)
    compact = format_similarity_table(three, width=110)  # too wide labelled, the compact cells fit 110
    assert compact.splitlines()[0] == "each cell: trained | untrained (null) | permuted (null)"
    assert "0.24 | 0.09 | 0.03" in compact and max(map(len, compact.splitlines())) <= 110
    stacked = format_similarity_table(three)
    assert "  permuted (null)" in stacked and max(map(len, stacked.splitlines())) <= 100
    assert np.isclose(three.at["relu1", ("trained", 0.15)], 0.24)
