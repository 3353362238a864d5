"""``raymatch report``: figures and summary of a study's results tables, checked through the matplotlib objects and
the data they were drawn from (not pixels), on synthetic tables in a temporary local store."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from raymatch.cli import main
from raymatch.match import EXACT_TOL, MatchCurve, match_curve, max_match
from raymatch.report import (
    FIGURE_NAMES,
    format_similarity_table,
    similarity_table,
    write_report,
)
from raymatch.results import append_rows, data_files, load, read_columns
from raymatch.store import Store

CREATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
PNG = b"\x89PNG\r\n\x1a\n"
# network order, deliberately neither alphabetical nor the order the rows are written in
LAYERS = ["features.0", "features.3", "features.10", "classifier.1", "classifier.4"]
CONV = {"features.0", "features.3", "features.10"}
WRITE_ORDER = ["classifier.4", "features.10", "classifier.1", "features.0", "features.3"]
EPS = [0.0, 0.1, 0.25, 0.5]
WIDTH = {"features.0": 16, "features.3": 32, "features.10": 64, "classifier.1": 128, "classifier.4": 10}
DEAD_B = {"classifier.1": 1}  # model_b's last neuron of this layer is dead: critical ε inf, in no match
N_SAMPLES = 2000


def _provenance(study: str, created_at: dt.datetime = CREATED) -> dict:
    return {"code_version": "0.2.0", "config_hash": f"hash-{study}", "created_at": created_at}


def _similarity(population: str, layer: str, eps: float, pair: int, repeat: int) -> float:
    depth = LAYERS.index(layer)
    base = 0.2 + 1.2 * eps if population == "trained" else 0.05 + 0.6 * eps
    value = base + 0.1 * (2 - depth) / 2 + 0.03 * pair + 0.02 * repeat
    return float(np.clip(value, 0.0, 1.0))


def _critical(sizes: list[int], n: int, dead: int, rest: float) -> list[float]:
    """Critical ε of ``n`` neurons with ``sizes[i]`` of them matched at ``EPS[i]``: those joining at ``EPS[i]`` get
    exactly ``EPS[i]``, the others ``rest`` (above the grid), the last ``dead`` ``inf``."""
    values = [rest] * (n - dead) + [math.inf] * dead
    start = 0
    for eps, size in zip(EPS, sizes, strict=True):
        values[start:size] = [eps] * (size - start)
        start = max(start, size)
    return values


def curve_rows(study: str, population: str, layer: str, models: list[str], repeats: int, *, cka: bool = True,
               created_at: dt.datetime = CREATED) -> list[dict]:
    """The ``curves`` rows of one layer: every pair × repeat, with planted per-ε match sizes (see ``_similarity``)."""
    rows = []
    n, dead_b = WIDTH[layer], DEAD_B.get(layer, 0)
    for pair, (model_a, model_b) in enumerate(itertools.combinations(models, 2)):
        for repeat in range(repeats):
            sizes = [round(_similarity(population, layer, eps, pair, repeat) * n) for eps in EPS]
            rest = 0.6 + 0.05 * pair + (0.2 if population == "untrained" else 0.0)
            critical_a = _critical(sizes, n, 0, rest)
            critical_b = _critical([min(size, n - dead_b) for size in sizes], n, dead_b, rest)
            finite = [value for value in critical_a + critical_b if math.isfinite(value)]
            rows.append({
                "study": study, "population": population, "layer": layer, "repeat": repeat, "model_a": model_a,
                "model_b": model_b, "probe_id": "probe-cifar10-test", "n_samples": N_SAMPLES, "n_a": n, "n_b": n,
                "dead_a": 0, "dead_b": dead_b, "critical_a": critical_a, "critical_b": critical_b,
                "exact_tol": EXACT_TOL, "max_epsilon": max(finite), "chance": float(np.sqrt(1 - n / N_SAMPLES)),
                "cka": (0.9 - 0.1 * LAYERS.index(layer) - (0.3 if population == "untrained" else 0.0)) if cka
                else None, "seconds": 0.01, "status": "ok", "error": None, **_provenance(study, created_at)})
    return rows


def _curve(row: dict) -> MatchCurve:
    critical_a, critical_b = np.asarray(row["critical_a"]), np.asarray(row["critical_b"])
    return MatchCurve(critical_a, critical_b, row["n_samples"], np.flatnonzero(np.isinf(critical_a)),
                      np.flatnonzero(np.isinf(critical_b)))


def match_rows(curves: list[dict], eps_grid=EPS) -> list[dict]:
    """The ``matches`` rows that ``curves`` imply at ``eps_grid`` (the maximum match of each curve at each ε)."""
    rows = []
    for row in curves:
        identity = {name: row[name] for name in ("study", "population", "layer", "model_a", "model_b", "repeat")}
        for eps in eps_grid:
            match = _curve(row).at(eps)
            rows.append({**identity, "eps": eps, "n_a": row["n_a"], "n_b": row["n_b"], "size_a": match.size_a,
                         "size_b": match.size_b, "similarity": match.similarity, "max_epsilon": row["max_epsilon"],
                         "chance": row["chance"], "status": "ok"})
    return rows


def study_record(study: str, *, full: bool = True, eps=EPS, repeats: int = 3) -> dict:
    """A study record: ``config_hash`` and ``eps`` are what the views need; ``full`` adds layers and the rest."""
    record = {"name": study, "config_hash": f"hash-{study}", "eps": list(eps)}
    if full:
        record |= {"layers": LAYERS, "architecture": {"name": "vgg11", "width": 1.0}, "probe": {
            "dataset": "cifar10", "split": "test", "n_examples": 1000, "seed": 0,
            "rows": {"rows": N_SAMPLES, "repeats": repeats, "seed": 0}}}
    return record


def planted_curves(study: str = "vgg-demo", *, untrained: bool = True, cka: bool = True,
                   repeats: int = 3) -> list[dict]:
    """4 trained models (6 pairs), 3 untrained (3 pairs), conv layers sampled ``repeats`` times; layers written in
    ``WRITE_ORDER`` (each a second after the previous, as a run writes them)."""
    populations = {"trained": [f"t{i}" for i in range(4)]}
    if untrained:
        populations["untrained"] = [f"u{i}" for i in range(3)]
    return [row for index, layer in enumerate(WRITE_ORDER) for population, models in populations.items()
            for row in curve_rows(study, population, layer, models, repeats if layer in CONV else 1, cka=cka,
                                  created_at=CREATED + dt.timedelta(seconds=index))]


def failed_curve(study: str, layer: str, model_a: str, model_b: str, repeat: int, error: str) -> dict:
    return {"study": study, "population": "trained", "layer": layer, "repeat": repeat, "model_a": model_a,
            "model_b": model_b, "probe_id": "probe-cifar10-test", "status": "failed", "error": error,
            **_provenance(study, CREATED + dt.timedelta(minutes=1))}


def build_store(root, study: str = "vgg-demo", *, record: bool | str = True, untrained: bool = True,
                simple: bool = True, cka: bool = True, repeats: int = 3, failed: int = 2) -> Store:
    """A study's tables as a run writes them: ``curves`` (CKA in each row), ``simple_matches`` and the study record.

    ``record``: True (full record), ``"minimal"`` (only the config hash and ε grid the views need: no layers) or
    False (none: the views then show none of the study's rows). ``failed`` failed curves get their own identity
    (pair t0–t1 of features.3 at repeats past the ok ones): the views keep one row per identity, ok first, so a
    failed row sharing an ok row's identity would not show.
    """
    store = Store(str(root))
    rows = planted_curves(study, untrained=untrained, cka=cka, repeats=repeats)
    rows += [failed_curve(study, "features.3", "t0", "t1", repeats + index, "MemoryError: out of memory")
             for index in range(failed)]
    append_rows(store, "curves", rows)
    if simple:
        populations = ["trained", "untrained"] if untrained else ["trained"]
        append_rows(store, "simple_matches", [
            {"study": study, "population": population, "layer": layer, "model_a": "t0", "model_b": "t1",
             "eps": 0.25, "repeat": 0, "match_id": index, "neurons_a": list(range(index % 3 + 1)),
             "neurons_b": list(range(index % 2 + 1)), "size_a": index % 3 + 1, "size_b": index % 2 + 1,
             "neuron": f"a:{index}", "search_order": "index", "probe_id": "probe-cifar10-test",
             **_provenance(study)}
            for population in populations for layer in ("features.10", "features.0") for index in range(6)])
    if record:
        store.write_json(f"studies/{study}.json", study_record(study, full=record is True, repeats=repeats))
    return store


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    store = build_store(root / "store")
    return store, write_report(store, out_dir=root / "report", eps=0.25)  # one ε for every layer's panels


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


def expected_pairs(store: Store, population: str, eps: float) -> pd.DataFrame:
    """Per (layer, pair): the similarity with the pair's repeats averaged."""
    rows = load(store, "matches")
    rows = rows[(rows["status"] == "ok") & (rows["population"] == population) & (rows["eps"] == eps)]
    return rows.groupby(["layer", "model_a", "model_b"])["similarity"].mean().reset_index()


def expected_means(store: Store, population: str, eps: float) -> pd.Series:
    return expected_pairs(store, population, eps).groupby("layer")["similarity"].mean().reindex(LAYERS)


def test_similarity_figure_has_a_line_and_band_per_eps_and_dashed_nulls(full):
    store, report = full
    result = report.figures["similarity.png"]
    axes = result.figure.axes[0]
    assert report.layer_order == "record" and report.layers == LAYERS
    assert tick_labels(axes) == LAYERS
    trained, untrained, bands = result.artists["trained"], result.artists["untrained"], result.artists["bands"]
    assert sorted(trained) == sorted(untrained) == sorted(bands) == EPS
    panels = result.artists["panels"]  # one per ε (issue 26.8): a line, its band and the null's line in each
    assert list(panels) == EPS and axes is panels[EPS[0]]
    assert all(len(panels[eps].lines) == 2 and len(panels[eps].collections) == 1 for eps in EPS)
    for eps in EPS:
        assert trained[eps].get_linestyle() == "-" and untrained[eps].get_linestyle() == "--"
        assert trained[eps].get_color() == untrained[eps].get_color()
        assert list(trained[eps].get_xdata()) == list(range(len(LAYERS)))
    # the plotted means: repeats averaged per pair, then the pairs, in network order
    assert trained[0.25].get_ydata() == pytest.approx(expected_means(store, "trained", 0.25).tolist())
    low, high = axes.get_ylim()
    assert low <= 0 and high >= 1
    legend = result.figure.legends[0].get_texts()
    assert any("bootstrap over models" in text.get_text() for text in legend)
    assert any("untrained" in text.get_text() for text in legend)
    # the band: the 95 % bootstrap interval over models of the per-pair means (repeats averaged), which holds the mean
    from raymatch.results.uncertainty import model_bootstrap

    per_pair = expected_pairs(store, "trained", 0.25)
    first = per_pair.loc[per_pair["layer"] == LAYERS[0]]
    interval = model_bootstrap(first["model_a"], first["model_b"], first["similarity"])
    path = bands[0.25].get_paths()[0].vertices
    at_first = path[np.isclose(path[:, 0], 0.0), 1]
    assert min(at_first) == pytest.approx(interval.low) and max(at_first) == pytest.approx(interval.high)
    assert interval.low <= trained[0.25].get_ydata()[0] <= interval.high


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
            for row in match_rows(curve_rows("s", population, layer, models, 1))]
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
    # the views show a study's rows only with its record (config hash and ε grid): this one lists no layers
    store = build_store(tmp_path / "store", record="minimal", untrained=False, simple=False, cka=False, repeats=1,
                        failed=0)
    report = write_report(store, study="vgg-demo", out_dir=tmp_path / "out")
    assert report.layer_order == "table" and report.layers == WRITE_ORDER
    assert set(report.skipped) == {"simple_match_sizes.png", "cka.png", "repeats.png"}
    assert sorted(path.name for path in tmp_path.joinpath("out").iterdir()) == [
        "eps_curve.png", "max_epsilon.png", "similarity.png", "summary.md", "universality.png"]
    similarity = report.figures["similarity.png"]
    panels = similarity.artists["panels"]
    assert similarity.artists["untrained"] == {} and sum(len(axes.lines) for axes in panels.values()) == len(EPS)
    assert tick_labels(similarity.figure.axes[0]) == WRITE_ORDER
    assert "first appearance" in similarity.figure.axes[0].get_xlabel()
    assert list(report.figures["max_epsilon.png"].artists["boxes"]) == ["trained"]
    text = report.summary
    assert "study record studies/vgg-demo.json has no list of layer names" in text
    assert "order of first appearance" in text and "unknown without the study record" in text
    for name in report.skipped:
        assert f"`{name}`: skipped" in text
    assert "0 failed" in text and "(null" not in text and "no untrained baseline" in text


def test_store_errors_are_one_clear_value_error(tmp_path):
    empty = Store(str(tmp_path / "empty"))
    empty.write_json("studies/x.json", study_record("x", full=False))
    with pytest.raises(ValueError, match=r"holds no match results.*no curves rows \(results/curves\)") as error:
        write_report(empty, out_dir=tmp_path / "out")
    assert "curves_all" not in str(error.value)
    # rows of no study's current configuration (here: no record at all) are kept but not shown
    orphan = Store(str(tmp_path / "orphan"))
    append_rows(orphan, "curves", curve_rows("y", "trained", "classifier.4", ["m0", "m1"], 1))
    with pytest.raises(ValueError, match=r"holds no match results.*1 stored rows.*curves_all"):
        write_report(orphan, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        write_report(Store(str(tmp_path / "nowhere")), out_dir=tmp_path / "out")
    store = Store(str(tmp_path / "two"))
    for study in ("beta", "alpha"):
        append_rows(store, "curves", curve_rows(study, "trained", "classifier.4", ["m0", "m1"], 1))
        store.write_json(f"studies/{study}.json", study_record(study, full=False))
    with pytest.raises(ValueError, match=r"several studies \(alpha, beta\).*--study") as error:
        write_report(store, out_dir=tmp_path / "out")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"study 'gamma' has no match results.*alpha, beta"):
        write_report(store, study="gamma", out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match="eps must be"):
        write_report(store, study="beta", eps=2.0, out_dir=tmp_path / "out")
    report = write_report(store, study="alpha", out_dir=tmp_path / "alpha")
    assert report.study == "alpha" and report.layers == ["classifier.4"]


def means_implied(curves: list[dict], population: str, eps: float) -> pd.Series:
    """Per layer: the mean over pairs (repeats averaged first) of the similarity the planted curves imply at ``eps``."""
    rows = pd.DataFrame(match_rows([row for row in curves if row["population"] == population], [eps]))
    per_pair = rows.groupby(["layer", "model_a", "model_b"])["similarity"].mean()
    return per_pair.groupby(level="layer").mean().reindex(LAYERS)


@pytest.mark.slow
def test_an_eps_off_the_grid_is_read_from_the_curves(full, tmp_path, capsys):
    store, _ = full
    files, stored = data_files(store, "curves"), read_columns(store, "curves", ["study"]).num_rows
    report = write_report(store, out_dir=tmp_path / "report", eps=0.22)
    assert report.eps == 0.22 and report.off_grid
    table = report.similarity_table
    assert table["trained"].columns.tolist() == table["untrained"].columns.tolist() == [0.0, 0.1, 0.22, 0.25, 0.5]
    curves = planted_curves()
    trained, untrained = means_implied(curves, "trained", 0.22), means_implied(curves, "untrained", 0.22)
    assert table[("trained", 0.22)].tolist() == pytest.approx(trained.tolist())
    assert table[("untrained", 0.22)].tolist() == pytest.approx(untrained.tolist())
    # as the curves imply: no neuron joins between 0.1 and 0.25, so ε = 0.22 matches as 0.1 does, not as the
    # nearest grid value 0.25 (what the report used before)
    assert table[("trained", 0.22)].tolist() == pytest.approx(table[("trained", 0.1)].tolist())
    assert (table[("trained", 0.22)] < table[("trained", 0.25)]).all()

    cka = report.figures["cka.png"]
    assert "ε = 0.22" in cka.figure.axes[1].get_title()
    assert cka.artists["similarity"]["trained"][0].get_ydata() == pytest.approx(trained.tolist())
    assert cka.artists["similarity"]["untrained"][0].get_ydata() == pytest.approx(untrained.tolist())
    repeats = report.figures["repeats.png"]
    assert repeats.figure.get_suptitle().endswith("at ε = 0.22")
    implied = pd.DataFrame(match_rows(curves, [0.22])).groupby(
        ["population", "layer", "model_a", "model_b"])["similarity"].std()
    data = repeats.data.set_index(["population", "layer", "model_a", "model_b"])
    assert data["std"].tolist() == pytest.approx(implied.reindex(data.index).tolist())
    assert sorted(report.figures["similarity.png"].artists["trained"]) == EPS  # the grid's figure is the grid's
    assert data_files(store, "curves") == files  # nothing recomputed, nothing written
    assert read_columns(store, "curves", ["study"]).num_rows == stored

    assert main(["report", store.root, "--eps", "0.22", "--out", str(tmp_path / "cli")]) == 0
    assert "ε = 0.22 is not in the study's ε grid" in capsys.readouterr().out
    text = (tmp_path / "cli" / "summary.md").read_text()
    assert "ε of the CKA and repeats figures: 0.22 (not in the grid" in text and "matches_at(0.22)" in text
    assert "| layer | ε=0 | ε=0.1 | ε=0.22 | ε=0.25 | ε=0.5 |" in text
    for layer in LAYERS:
        cells = next(line for line in text.splitlines() if line.startswith(f"| {layer} |")).strip("| ").split(" | ")
        assert cells[3] == f"{trained[layer]:.2f} (null {untrained[layer]:.2f})"


def test_an_eps_off_the_grid_gives_max_match_of_the_activations(tmp_path):
    """One pair of real activations: the report at ε = 0.22 (grid 0, 0.5) is ``max_match(A, B, 0.22)``."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((400, 12))
    angles = np.linspace(0.02, 0.7, 12)  # B's neuron j: A's neuron j turned by an angle, sines 0.02 … 0.64
    B = np.cos(angles) * A + np.sin(angles) * rng.standard_normal((400, 12))
    curve = match_curve(A, B)
    row = {"study": "real", "population": "trained", "layer": "fc", "repeat": 0, "model_a": "m0", "model_b": "m1",
           "probe_id": "probe-1", "n_samples": 400, "n_a": 12, "n_b": 12, "dead_a": 0, "dead_b": 0,
           "critical_a": curve.critical_a.tolist(), "critical_b": curve.critical_b.tolist(), "exact_tol": EXACT_TOL,
           "max_epsilon": curve.max_epsilon, "chance": float(np.sqrt(1 - 12 / 400)), "cka": 0.5, "seconds": 0.1,
           "status": "ok", "error": None, **_provenance("real")}
    store = Store(str(tmp_path / "store"))
    append_rows(store, "curves", [row])
    store.write_json("studies/real.json", study_record("real", full=False, eps=[0.0, 0.5]) | {"layers": ["fc"]})
    report = write_report(store, out_dir=tmp_path / "out", eps=0.22)
    expected = max_match(A, B, 0.22).similarity
    assert 0 < expected < 1 and expected not in (max_match(A, B, 0.0).similarity, max_match(A, B, 0.5).similarity)
    assert report.similarity_table.loc["fc", ("trained", 0.22)] == pytest.approx(expected)
    assert report.figures["cka.png"].artists["similarity"]["trained"][0].get_ydata() == pytest.approx([expected])
    assert f"| fc | {max_match(A, B, 0.0).similarity:.2f} | {expected:.2f} |" in report.summary


def test_command_runs_end_to_end(tmp_path, capsys, monkeypatch):
    build_store(tmp_path / "store", simple=False, cka=False, repeats=1, failed=0)
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(tmp_path / "store"), "--study", "vgg-demo", "--eps", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "(null " in out and "features.10" in out and "skipped cka.png" in out
    written = tmp_path / "report-vgg-demo"
    assert (written / "summary.md").exists() and (written / "similarity.png").read_bytes()[:8] == PNG
    assert (written / "repeats.png").exists() is False


def test_a_study_whose_rows_all_failed_still_gets_a_summary(tmp_path):
    store = Store(str(tmp_path / "store"))
    append_rows(store, "curves", [
        {"study": "broken", "population": "trained", "layer": "fc", "repeat": 0, "model_a": "m0", "model_b": "m1",
         "probe_id": "probe-1", "status": "failed", "error": "RuntimeError: boom", **_provenance("broken")}])
    store.write_json("studies/broken.json", {"name": "broken", "config_hash": "hash-broken", "layers": ["fc"],
                                             "eps": [0.25]})
    report = write_report(store, out_dir=tmp_path / "out")
    assert set(report.skipped) == set(FIGURE_NAMES) and report.paths == [report.summary_path]
    assert "0 ok, 1 failed" in report.summary and "RuntimeError: boom" in report.summary
    assert "layers of the record without ok rows: fc" in report.summary
