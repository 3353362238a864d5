"""The report's figures as a new user read them (issue 26.8), checked through the matplotlib objects drawn.

- ``universality.png`` has a bar at every possible share j/k (k: the other models), so a share of 1/2 or 1 is
  counted at 1/2 or 1, not in a bin read as 0.45 or 0.95;
- ``repeats.png`` is skipped, with the reason, at an ε where every pair's similarity is the same in every repeat;
- ``similarity.png`` has one panel per ε, every line visible: the nulls over the trained line, their markers
  apart, the axis with a margin below 0;
- ``cka.png``'s legends are in the colours of their panels;
- the chance-ratio lines near 1 (``max_epsilon.png``, ``eps_curve.png``) stay clear of the frame.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from raymatch.cli import main
from raymatch.match import EXACT_TOL
from raymatch.report import write_report
from raymatch.results import append_rows, query
from raymatch.store import Store, layout

from .test_report import EPS, LAYERS, build_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    store = build_store(root / "store")
    return store, write_report(store, out_dir=root / "report")


def test_universality_has_a_bar_at_every_possible_share(planted):
    store, report = planted
    result = report.figures["universality.png"]
    for layer in LAYERS:
        eps = report.layer_eps[layer]
        # 4 trained models (3 others each) and 3 untrained (2 others): j/3 and j/2
        assert result.artists["positions"][layer] == pytest.approx([0, 1 / 3, 1 / 2, 2 / 3, 1])
        rows = query(store, f"SELECT population, share FROM universality({eps!r}) WHERE layer = '{layer}'")
        for population in ("trained", "untrained"):
            bars = result.artists["bars"][layer, population]  # one per possible share, beside the other population's
            positions = result.artists["positions"][layer]
            centres = np.array([bar.get_x() + bar.get_width() / 2 for bar in bars])
            assert np.ptp(centres - positions) < 1e-12 and abs(centres[0] - positions[0]) < 0.1
            shares = rows.loc[rows["population"] == population, "share"].to_numpy()
            for share, bar in zip(positions, bars, strict=True):
                assert bar.get_height() == pytest.approx(np.mean(np.isclose(shares, share))), (layer, population)
            assert sum(bar.get_height() for bar in bars) == pytest.approx(1.0)
            assert result.artists["all"][layer, population] == int((shares == 1).sum())
    titles = [axes.get_title() for axes in result.figure.axes if axes.get_visible()]
    assert all(f"at ε = {report.layer_eps[layer]:g}" in title for layer, title in zip(LAYERS, titles, strict=True))


def _flat_store(root) -> Store:
    """One conv layer sampled 3 times whose every neuron's critical ε is above 0.4: at ε ≤ 0.4 every similarity is
    0 in every repeat (nothing spreads); above, the repeats differ (repeat r's critical ε are 0.02 r higher)."""
    store = Store(str(root))
    store.write_json(layout.study_record_key("flat"), {"name": "flat", "config_hash": "h", "eps": [0.2, 0.8],
                                                       "layers": ["conv1"]})
    rows = []
    for (a, b), repeat in itertools.product(itertools.combinations(["m0", "m1", "m2"], 2), range(3)):
        critical = [0.42 + 0.04 * i + 0.02 * repeat for i in range(6)]
        rows.append({"study": "flat", "population": "trained", "layer": "conv1", "repeat": repeat, "model_a": a,
                     "model_b": b, "probe_id": "p", "config_hash": "h", "code_version": "0.2.0", "n_samples": 500,
                     "n_a": 6, "n_b": 6, "dead_a": 0, "dead_b": 0, "critical_a": critical, "critical_b": critical[::-1],
                     "exact_tol": EXACT_TOL, "max_epsilon": max(critical), "chance": 0.99, "cka": 0.4,
                     "seconds": 0.0, "status": "ok", "error": None})
    append_rows(store, "curves", rows)
    return store


def test_repeats_is_skipped_with_the_reason_where_nothing_spreads_and_drawn_at_the_layers_eps(tmp_path, capsys):
    store = _flat_store(tmp_path / "store")
    assert main(["report", store.root, "--out", str(tmp_path / "flat"), "--eps", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "skipped repeats.png: at ε = 0.2 every pair's similarity is the same in every repeat (std 0; " \
           "similarity 0.00): no spread to show" in out
    summary = (tmp_path / "flat" / "summary.md").read_text()
    assert "`repeats.png`: skipped — at ε = 0.2 every pair's similarity" in summary
    # each layer's own ε: half the neurons of each side matched, the median over pairs and repeats (0.50, 0.52, 0.54)
    report = write_report(store, out_dir=tmp_path / "own")
    assert report.eps is None and report.layer_eps == {"conv1": 0.52}
    repeats = report.figures["repeats.png"]
    assert repeats.path is not None and (repeats.data["std"] > 0).all() and set(repeats.data["eps"]) == {0.52}
    labels = [label.get_text() for label in repeats.figure.axes[0].get_xticklabels()]
    assert labels == ["conv1\nε = 0.52"] and repeats.figure.get_suptitle().endswith("at each layer's ε")
    low, _ = repeats.figure.axes[0].get_ylim()
    assert low < 0  # points at 0 stay off the frame


def test_similarity_has_a_panel_per_eps_with_every_line_visible(planted):
    _, report = planted
    result = report.figures["similarity.png"]
    panels = result.artists["panels"]
    assert list(panels) == EPS
    for eps, axes in panels.items():
        assert axes.get_title() == f"ε = {eps:g}"
        low, high = axes.get_ylim()
        assert low < 0 and high > 1  # a line at 0 (a null, often) or 1 is not on the frame
        trained, null = result.artists["trained"][eps], result.artists["untrained"][eps]
        assert trained.axes is axes and null.axes is axes
        assert null.get_zorder() > trained.get_zorder()  # drawn over the trained line
        assert np.all(np.asarray(null.get_xdata()) > np.asarray(trained.get_xdata()))  # its markers beside
        assert null.get_marker() != trained.get_marker()
    legend = result.figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()][-1].startswith("untrained (null)")


def test_cka_legends_are_in_the_colours_of_their_panels(planted):
    _, report = planted
    result = report.figures["cka.png"]
    cka_legend, match_legend = result.figure.legends
    for legend, key in ((cka_legend, "cka"), (match_legend, "similarity")):
        line_colour = to_rgba(result.artists[key]["trained"][0].get_color())
        for handle in legend.legend_handles:
            colour = handle.get_color() if hasattr(handle, "get_linestyle") and hasattr(handle, "get_xdata") \
                else handle.get_facecolor()
            assert to_rgba(colour)[:3] == pytest.approx(line_colour[:3]), key
        labels = [text.get_text() for text in legend.get_texts()]
        assert labels[:2] == ["trained: mean over pairs", "trained: min–max over pairs"]
        assert "untrained (null): mean" in labels
    assert to_rgba(result.artists["cka"]["trained"][0].get_color()) != to_rgba(
        result.artists["similarity"]["trained"][0].get_color())


def test_the_chance_ratio_near_1_stays_off_the_frame(planted):
    _, report = planted
    max_eps = report.figures["max_epsilon.png"]
    chance = max(segment[0][1] for segment in max_eps.artists["chance"].get_segments())
    assert chance > 0.99 and max_eps.figure.axes[0].get_ylim()[1] >= chance + 0.04
    curve = report.figures["eps_curve.png"]
    for layer, line in curve.artists["chance"].items():
        axes = line.axes
        assert axes.get_xlim()[1] >= line.get_xdata()[0] + 0.04, layer
        assert axes.get_ylim()[0] < 0 < 1 < axes.get_ylim()[1]
        assert math.isclose(curve.artists["report_eps"][layer].get_xdata()[0], report.layer_eps[layer])
