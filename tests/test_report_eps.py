"""The report's ε (issue 26.10): each layer's own, from its curves, unless ``--eps`` forces one.

A study whose grid misses where its layers match (every layer 0 at every grid value near the old default) must not
give panels and tables of zeros: each layer is drawn at the median over its trained pairs of the smallest ε at which
half the live neurons of each side are matched (``eps_for_share(0.5)``, rounded up to 3 decimals), every panel says
which ε it uses, and a layer without one says why in one line.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL
from raymatch.report import write_report
from raymatch.results import append_rows, query
from raymatch.store import Store, layout

GRID = [0.0, 0.1, 0.2, 0.25]
LAYERS = ["block1.conv", "block2.conv", "head.dead"]


def _critical(layer: str, model: int, n: int = 8) -> list[float]:
    """Critical ε above the whole grid (0.3 … 0.9), a little different per model; ``head.dead``: every neuron dead
    on model b's side, so no ε matches a share of it."""
    return [0.3 + 0.6 * (i + 0.5 * model) / (n + 1) + (0.05 if layer == "block2.conv" else 0.0) for i in range(n)]


def _store(root) -> Store:
    store = Store(str(root))
    store.write_json(layout.study_record_key("late"), {"name": "late", "config_hash": "h", "eps": GRID,
                                                       "layers": LAYERS})
    rows = []
    for population, models in (("trained", range(4)), ("untrained", range(4, 7))):
        for layer, (a, b) in itertools.product(LAYERS, itertools.combinations(models, 2)):
            dead = layer == "head.dead"
            critical_b = [math.inf] * 8 if dead else _critical(layer, b)[::-1]
            critical_a = _critical(layer, a)
            if population == "untrained":  # the null: later still
                critical_a = [min(value + 0.1, 1.0) for value in critical_a]
            rows.append({"study": "late", "population": population, "layer": layer, "repeat": 0, "model_a": f"m{a}",
                         "model_b": f"m{b}", "probe_id": "p", "config_hash": "h", "code_version": "0.2.0",
                         "n_samples": 900, "n_a": 8, "n_b": 8, "dead_a": 0, "dead_b": 8 if dead else 0,
                         "critical_a": critical_a, "critical_b": critical_b, "exact_tol": EXACT_TOL,
                         "max_epsilon": max(critical_a), "chance": 0.99, "cka": 0.5, "seconds": 0.0, "status": "ok",
                         "error": None})
    append_rows(store, "curves", rows)
    return store


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    root = tmp_path_factory.mktemp("late")
    store = _store(root / "store")
    return store, write_report(store, out_dir=root / "report")


def test_every_grid_value_is_zero_but_each_layer_is_drawn_where_half_its_neurons_match(late):
    store, report = late
    grid = query(store, "SELECT max(similarity) AS top FROM matches WHERE layer <> 'head.dead'")
    assert grid["top"].item() == 0.0  # the old report's ε (0.25, the grid's nearest) drew zeros only
    medians = query(store, "SELECT layer, median(eps) AS eps FROM eps_for_share(0.5) WHERE population = 'trained' "
                           "AND eps IS NOT NULL GROUP BY layer")
    expected = {row.layer: math.ceil(round(row.eps * 1000, 6)) / 1000 for row in medians.itertuples()}
    assert report.eps is None and report.layer_eps == expected and list(expected) != []
    assert list(report.layer_eps) == ["block1.conv", "block2.conv"]  # network order; head.dead has none
    assert report.layer_eps["block2.conv"] > report.layer_eps["block1.conv"] > 0.25
    for layer, eps in report.layer_eps.items():
        at = query(store, f"SELECT similarity FROM matches_at({eps!r}) WHERE layer = '{layer}' "
                          "AND population = 'trained'")["similarity"]
        assert 0.4 < np.median(at) <= 1.0  # informative: about half the neurons of the median pair
        drawn = report.figures["cka.png"].artists["similarity"]["trained"][0].get_ydata()
        assert drawn[LAYERS.index(layer)] == pytest.approx(at.mean())


def test_every_panel_and_table_says_its_eps_and_an_empty_layer_says_why(late):
    _, report = late
    ticks = [label.get_text() for label in report.figures["cka.png"].figure.axes[1].get_xticklabels()]
    assert ticks == [f"{layer}\nε = {report.layer_eps[layer]:g}" for layer in LAYERS[:2]] + ["head.dead\nno ε"]
    universality = report.figures["universality.png"]
    titles = [axes.get_title() for axes in universality.figure.axes if axes.get_visible()]
    assert [title.splitlines()[0].split(",")[0] for title in titles] == [
        f"{layer} at ε = {report.layer_eps[layer]:g}" for layer in LAYERS[:2]]
    curve = report.figures["eps_curve.png"]
    assert set(curve.artists["report_eps"]) == set(report.layer_eps)
    text = report.summary
    line = next(line for line in text.splitlines() if line.startswith("- ε of the CKA"))
    for layer, eps in report.layer_eps.items():
        assert f"{layer} {eps:g}" in line
    assert "head.dead none (no trained pair of head.dead has a live neuron on both sides" in line
    assert "eps_for_share(0.5)" in line and "--eps sets one for every layer" in line
    assert "## Mean similarity at each layer's report ε with a 95 % interval over models" in text
    assert "| layer | ε | trained | untrained |" in text
    assert "head.dead is left out: no trained pair of head.dead has a live neuron on both sides" in text


@pytest.mark.slow  # two more reports
def test_eps_forces_one_for_every_layer_and_the_command_prints_each_layers(late, tmp_path, capsys):
    store, _ = late
    assert main(["report", store.root, "--out", str(tmp_path / "own")]) == 0
    out = capsys.readouterr().out
    printed = out[: out.index("wrote ")]
    assert "each layer's ε (half its live neurons matched in the median trained pair" in printed
    assert max(map(len, printed.splitlines())) <= 100
    forced = write_report(store, out_dir=tmp_path / "forced", eps=0.2)
    assert forced.eps == 0.2 and set(forced.layer_eps.values()) == {0.2}
    assert forced.figures["repeats.png"].skipped is not None  # one repeat: nothing to spread
    assert "ε = 0.2" in forced.figures["cka.png"].figure.axes[1].get_title()
    assert "ε of the CKA and repeats figures: 0.2 (asked for with --eps)" in forced.summary
