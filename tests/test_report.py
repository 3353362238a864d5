"""``raymatch report``: figures and summary of a study's results tables, checked through the matplotlib objects and
the data they were drawn from (not pixels), on synthetic tables in a temporary local store."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools

import numpy as np
import pandas as pd
import pytest

from raymatch.report import (
    FIGURE_NAMES,
    add_arguments,
    command,
    format_similarity_table,
    similarity_table,
    write_report,
)
from raymatch.results import load, write_rows
from raymatch.store import Store

CREATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
PNG = b"\x89PNG\r\n\x1a\n"
# network order, deliberately neither alphabetical nor the order the rows are written in
LAYERS = ["features.0", "features.3", "features.10", "classifier.1", "classifier.4"]
CONV = {"features.0", "features.3", "features.10"}
WRITE_ORDER = ["classifier.4", "features.10", "classifier.1", "features.0", "features.3"]
EPS = [0.0, 0.1, 0.25, 0.5]
WIDTH = {"features.0": 16, "features.3": 32, "features.10": 64, "classifier.1": 128, "classifier.4": 10}


def _provenance(study: str) -> dict:
    return {"code_version": "0.1.0", "config_hash": f"hash-{study}", "created_at": CREATED}


def _similarity(population: str, layer: str, eps: float, pair: int, repeat: int) -> float:
    depth = LAYERS.index(layer)
    base = 0.2 + 1.2 * eps if population == "trained" else 0.05 + 0.6 * eps
    value = base + 0.1 * (2 - depth) / 2 + 0.03 * pair + 0.02 * repeat
    return float(np.clip(value, 0.0, 1.0))


def match_rows(study: str, population: str, layer: str, models: list[str], repeats: int) -> list[dict]:
    rows = []
    n = WIDTH[layer]
    for pair, (model_a, model_b) in enumerate(itertools.combinations(models, 2)):
        for eps, repeat in itertools.product(EPS, range(repeats)):
            similarity = _similarity(population, layer, eps, pair, repeat)
            size = round(similarity * n)
            rows.append({
                "study": study, "population": population, "layer": layer, "model_a": model_a, "model_b": model_b,
                "eps": eps, "repeat": repeat, "n_samples": 2000, "n_a": n, "n_b": n, "dead_a": 0, "dead_b": 0,
                "size_a": size, "size_b": size, "similarity": 2 * size / (2 * n),
                "max_epsilon": 0.3 + 0.05 * pair + (0.3 if population == "untrained" else 0.0),
                "chance": float(np.sqrt(1 - n / 2000)), "neurons_a": list(range(size)),
                "neurons_b": list(range(size)), "seconds": 0.01, "status": "ok", "error": None,
                **_provenance(study)})
    return rows


def build_store(root, study: str = "vgg-demo", *, record: bool = True, untrained: bool = True,
                simple: bool = True, cka: bool = True, repeats: int = 3, failed: int = 2) -> Store:
    """A study's tables: 4 trained models (6 pairs), 3 untrained (3 pairs), conv layers sampled ``repeats`` times."""
    store = Store(str(root))
    populations = {"trained": [f"t{i}" for i in range(4)]}
    if untrained:
        populations["untrained"] = [f"u{i}" for i in range(3)]
    for population, models in populations.items():
        for index, layer in enumerate(WRITE_ORDER):  # objects load in task-id order
            rows = match_rows(study, population, layer, models, repeats if layer in CONV else 1)
            write_rows(store, "matches", f"{study}.{index}.{population}", rows)
            if cka:
                write_rows(store, "cka", f"{study}.{population}.{layer}", [
                    {"study": study, "population": population, "layer": layer, "model_a": a, "model_b": b,
                     "repeat": 0, "cka": 0.9 - 0.1 * LAYERS.index(layer) - (0.3 if population == "untrained"
                                                                            else 0.0), **_provenance(study)}
                    for a, b in itertools.combinations(models, 2)])
    if failed:
        write_rows(store, "matches", f"{study}.failed", [
            {"study": study, "population": "trained", "layer": "features.3", "model_a": "t0", "model_b": "t1",
             "eps": eps, "repeat": 0, "status": "failed", "error": "MemoryError: out of memory",
             **_provenance(study)} for eps in EPS[:failed]])
    if simple:
        rows = [{"study": study, "population": population, "layer": layer, "model_a": "t0", "model_b": "t1",
                 "eps": 0.25, "repeat": 0, "match_id": index, "neurons_a": list(range(index % 3 + 1)),
                 "neurons_b": list(range(index % 2 + 1)), "size_a": index % 3 + 1, "size_b": index % 2 + 1,
                 "neuron": f"a:{index}", "search_order": "index", **_provenance(study)}
                for population in populations for layer in ("features.10", "features.0") for index in range(6)]
        write_rows(store, "simple_matches", f"{study}.simple", rows)
    if record:
        store.write_json(f"studies/{study}.json", {
            "name": study, "config_hash": f"hash-{study}", "layers": LAYERS, "eps": EPS,
            "architecture": {"name": "vgg11", "width": 1.0}, "probe": {
                "dataset": "cifar10", "split": "test", "n_examples": 1000, "seed": 0,
                "rows": {"rows": 2000, "repeats": repeats, "seed": 0}}})
    return store


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    store = build_store(root / "store")
    return store, write_report(store, out_dir=root / "report")


def tick_labels(axes) -> list[str]:
    return [label.get_text() for label in axes.get_xticklabels()]


def test_every_file_is_written_and_is_a_png(full):
    _, report = full
    assert report.study == "vgg-demo" and report.skipped == {}
    assert [path.name for path in report.paths] == [*FIGURE_NAMES, "summary.md"]
    for name in FIGURE_NAMES:
        assert report.figures[name].path.read_bytes()[:8] == PNG
        assert report.figures[name].caption
    assert report.summary_path.read_text() == report.summary
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are not registered with pyplot: nothing global to close or leak


def expected_means(store: Store, population: str, eps: float) -> pd.Series:
    rows = load(store, "matches")
    rows = rows[(rows["status"] == "ok") & (rows["population"] == population) & (rows["eps"] == eps)]
    per_pair = rows.groupby(["layer", "model_a", "model_b"])["similarity"].mean()
    return per_pair.groupby(level="layer").mean().reindex(LAYERS)


def test_similarity_figure_has_a_line_and_band_per_eps_and_dashed_nulls(full):
    store, report = full
    result = report.figures["similarity.png"]
    axes = result.figure.axes[0]
    assert report.layer_order == "record" and report.layers == LAYERS
    assert tick_labels(axes) == LAYERS
    trained, untrained, bands = result.artists["trained"], result.artists["untrained"], result.artists["bands"]
    assert sorted(trained) == sorted(untrained) == sorted(bands) == EPS
    assert len(axes.lines) == 2 * len(EPS) and len(axes.collections) == len(EPS)
    for eps in EPS:
        assert trained[eps].get_linestyle() == "-" and untrained[eps].get_linestyle() == "--"
        assert trained[eps].get_color() == untrained[eps].get_color()
        assert list(trained[eps].get_xdata()) == list(range(len(LAYERS)))
    # the plotted means: repeats averaged per pair, then the pairs, in network order
    assert trained[0.25].get_ydata() == pytest.approx(expected_means(store, "trained", 0.25).tolist())
    low, high = axes.get_ylim()
    assert low <= 0 and high >= 1
    legend = axes.get_legend().get_texts()
    assert any("min–max" in text.get_text() for text in legend)
    assert any("untrained" in text.get_text() for text in legend)


def test_max_epsilon_figure_boxes_points_and_chance(full):
    _, report = full
    result = report.figures["max_epsilon.png"]
    axes = result.figure.axes[0]
    assert tick_labels(axes) == LAYERS
    assert {population: len(boxes) for population, boxes in result.artists["boxes"].items()} == {
        "trained": len(LAYERS), "untrained": len(LAYERS)}
    assert len(result.artists["points"]["trained"].get_offsets()) == 6 * len(LAYERS)
    assert len(result.artists["points"]["untrained"].get_offsets()) == 3 * len(LAYERS)
    chance = result.artists["chance"]
    assert len(chance.get_segments()) == len(LAYERS)
    heights = [segment[0][1] for segment in chance.get_segments()]
    assert heights == pytest.approx([np.sqrt(1 - WIDTH[layer] / 2000) for layer in LAYERS])


def test_simple_sizes_cka_and_repeats_figures(full):
    _, report = full
    simple = report.figures["simple_match_sizes.png"]
    assert tick_labels(simple.figure.axes[0]) == ["features.0", "features.10"]  # only layers with simple matches
    assert {key: len(boxes) for key, boxes in simple.artists["boxes"].items()} == {
        ("trained", 0.25): 2, ("untrained", 0.25): 2}
    assert simple.data["size"].tolist() == (simple.data["size_a"] + simple.data["size_b"]).tolist()

    cka = report.figures["cka.png"]
    assert report.eps == 0.25
    cka_axes, match_axes = cka.figure.axes[:2]
    assert tick_labels(cka_axes) == tick_labels(match_axes) == LAYERS
    line, band = cka.artists["cka"]["trained"]
    assert line.get_linestyle() == "-" and band is not None
    assert line.get_ydata() == pytest.approx([0.9 - 0.1 * i for i in range(len(LAYERS))])
    null_line, null_band = cka.artists["cka"]["untrained"]
    assert null_line.get_linestyle() == "--" and null_band is None
    assert set(cka.artists["similarity"]) == {"trained", "untrained"}
    assert "ε = 0.25" in match_axes.get_title()

    repeats = report.figures["repeats.png"]
    assert tick_labels(repeats.figure.axes[0]) == ["features.0", "features.3", "features.10"]
    assert len(repeats.artists["points"]["trained"].get_offsets()) == 6 * 3
    assert len(repeats.artists["points"]["untrained"].get_offsets()) == 3 * 3
    assert set(repeats.data["repeats"]) == {3}


def test_summary_counts_tables_and_caveats(full):
    _, report = full
    text = report.summary
    assert "# raymatch report: vgg-demo" in text and "hash-vgg-demo" in text
    assert "Trained: 4 models" in text and "6 pairs" in text and "Untrained: 3 models" in text
    assert "features.0, features.3, features.10, classifier.1, classifier.4" in text
    assert "ε grid: 0, 0.1, 0.25, 0.5" in text
    assert "2 failed" in text and "MemoryError" in text
    assert "(null " in text and "## Maximal ε per layer" in text and "## Linear CKA per layer" in text
    assert "Caveats:" in text and "test split of cifar10" in text
    for name in FIGURE_NAMES:
        assert f"`{name}`" in text


def test_similarity_table_and_its_text():
    rows = [row for layer in WRITE_ORDER for population, models in (("trained", ["a", "b", "c"]),
                                                                    ("untrained", ["x", "y"]))
            for row in match_rows("s", population, layer, models, 1)]
    table = similarity_table(pd.DataFrame(rows), layers=LAYERS)
    assert table.index.tolist() == LAYERS
    assert table["trained"].columns.tolist() == EPS and table["untrained"].columns.tolist() == EPS
    frame = pd.DataFrame(rows)
    null = frame[(frame["population"] == "untrained") & (frame["layer"] == "features.0") & (frame["eps"] == 0.0)]
    assert table.loc["features.0", ("untrained", 0.0)] == pytest.approx(null["similarity"].mean())
    lines = format_similarity_table(table).splitlines()
    assert lines[0].split() == ["layer", "ε=0", "ε=0.1", "ε=0.25", "ε=0.5"]
    assert [line.split()[0] for line in lines[1:]] == LAYERS
    assert "(null " in lines[1] and len({len(line) for line in lines[1:]}) == 1
    trained_only = similarity_table(pd.DataFrame([r for r in rows if r["population"] == "trained"]))
    assert "null" not in format_similarity_table(trained_only)
    assert trained_only.index.tolist() == WRITE_ORDER  # no order given: order of first appearance
    assert format_similarity_table(similarity_table(pd.DataFrame(rows).iloc[:0])) == "(no ok match rows)"


def test_missing_record_and_optional_tables_are_reported(tmp_path):
    store = build_store(tmp_path / "store", record=False, untrained=False, simple=False, cka=False, repeats=1,
                        failed=0)
    report = write_report(store, study="vgg-demo", out_dir=tmp_path / "out")
    assert report.layer_order == "table" and report.layers == WRITE_ORDER
    assert set(report.skipped) == {"simple_match_sizes.png", "cka.png", "repeats.png"}
    assert sorted(path.name for path in tmp_path.joinpath("out").iterdir()) == [
        "max_epsilon.png", "similarity.png", "summary.md"]
    similarity = report.figures["similarity.png"]
    assert similarity.artists["untrained"] == {} and len(similarity.figure.axes[0].lines) == len(EPS)
    assert tick_labels(similarity.figure.axes[0]) == WRITE_ORDER
    assert "first appearance" in similarity.figure.axes[0].get_xlabel()
    assert list(report.figures["max_epsilon.png"].artists["boxes"]) == ["trained"]
    text = report.summary
    assert "no study record studies/vgg-demo.json" in text and "order of first appearance" in text
    for name in report.skipped:
        assert f"`{name}`: skipped" in text
    assert "0 failed" in text and "(null" not in text and "no untrained baseline" in text


def test_store_errors_are_one_clear_value_error(tmp_path):
    empty = Store(str(tmp_path / "empty"))
    empty.write_json("studies/x.json", {"name": "x"})
    with pytest.raises(ValueError, match="holds no match results"):
        write_report(empty, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        write_report(Store(str(tmp_path / "nowhere")), out_dir=tmp_path / "out")
    store = Store(str(tmp_path / "two"))
    for study in ("beta", "alpha"):
        write_rows(store, "matches", study, match_rows(study, "trained", "classifier.4", ["m0", "m1"], 1))
    with pytest.raises(ValueError, match=r"several studies \(alpha, beta\).*--study") as error:
        write_report(store, out_dir=tmp_path / "out")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"study 'gamma' has no match results.*alpha, beta"):
        write_report(store, study="gamma", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="eps must be"):
        write_report(store, study="beta", eps=2.0, out_dir=tmp_path / "out")
    report = write_report(store, study="alpha", out_dir=tmp_path / "alpha")
    assert report.study == "alpha" and report.layers == ["classifier.4"]


def test_command_runs_end_to_end(tmp_path, capsys, monkeypatch):
    build_store(tmp_path / "store", simple=False, cka=False, repeats=1, failed=0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "store"), "--study", "vgg-demo", "--eps", "0.1"])
    monkeypatch.chdir(tmp_path)
    assert command(args) == 0
    out = capsys.readouterr().out
    assert "(null " in out and "features.10" in out and "skipped cka.png" in out
    written = tmp_path / "report-vgg-demo"
    assert (written / "summary.md").exists() and (written / "similarity.png").read_bytes()[:8] == PNG
    assert (written / "repeats.png").exists() is False


def test_a_study_whose_rows_all_failed_still_gets_a_summary(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_rows(store, "matches", "t1", [
        {"study": "broken", "population": "trained", "layer": "fc", "model_a": "m0", "model_b": "m1", "eps": 0.25,
         "repeat": 0, "status": "failed", "error": "RuntimeError: boom", **_provenance("broken")}])
    store.write_json("studies/broken.json", {"name": "broken", "config_hash": "hash-broken", "layers": ["fc"],
                                             "eps": [0.25]})
    report = write_report(store, out_dir=tmp_path / "out")
    assert set(report.skipped) == set(FIGURE_NAMES) and report.paths == [report.summary_path]
    assert "0 ok, 1 failed" in report.summary and "RuntimeError: boom" in report.summary
    assert "layers of the record without ok rows: fc" in report.summary
