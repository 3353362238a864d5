"""``raymatch report --html``: the page's embedded numbers against plain numpy on the stored critical ε, and the
page itself in a real headless chromium, offline: no request leaves ``file://``, no console error, every figure
drawn, and the ε slider moved with the keyboard shows the similarity the test computes from the curves table."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import numpy as np
import pytest

from raymatch.cli import main
from raymatch.report import write_report
from raymatch.results import load

from .browser import console_problems, open_page, requested_urls, screenshot
from .html_population import build_population_store
from .test_report import build_store

STEPS = 200


def expected_means(store, eps: float) -> dict[tuple[str, str], float]:
    """Mean over pairs (each pair's repeats averaged) of matched / (n_a + n_b) at ``eps``, from the definition:
    neuron i is matched iff its stored critical ε ≤ max(ε, exact_tol). Plain numpy on the stored curves table."""
    curves = load(store, "curves")
    curves = curves.loc[(curves["status"] == "ok") & (curves["population"] != "trajectory")]
    matched = np.array([np.sum(np.asarray(a) <= max(eps, tol)) + np.sum(np.asarray(b) <= max(eps, tol))
                        for a, b, tol in zip(curves["critical_a"], curves["critical_b"], curves["exact_tol"],
                                             strict=True)])
    frame = curves[["population", "layer", "model_a", "model_b"]].assign(
        similarity=matched / (curves["n_a"] + curves["n_b"]).to_numpy())
    per_pair = frame.groupby(["population", "layer", "model_a", "model_b"])["similarity"].mean()
    return {key: float(value) for key, value in per_pair.groupby(level=["population", "layer"]).mean().items()}


def unpack(packed: dict) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(packed["data"]))
    return np.frombuffer(raw, dtype=np.dtype(packed["dtype"]).newbyteorder("<")).reshape(packed["shape"])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    store = build_store(root / "store")
    return store, write_report(store, out_dir=root / "report", html=True)


def test_embedded_counts_are_the_exact_step_functions_of_the_stored_curves(planted):
    store, report = planted
    payload = report.html.payload
    assert payload["steps"] == STEPS and payload["neurons"] is False
    curves = load(store, "curves")
    curves = curves.loc[curves["status"] == "ok"]
    for population, by_layer in payload["pairs"].items():
        for layer, packed in by_layer.items():
            counts = np.cumsum(unpack(packed["counts"]).astype(np.int64), axis=0)  # (steps + 1, n_pairs)
            first, second, totals = unpack(packed["first"]), unpack(packed["second"]), unpack(packed["totals"])
            assert counts.shape == (STEPS + 1, len(first)) and "neurons" not in packed
            for pair, (i, j) in enumerate(zip(first, second, strict=True)):
                rows = curves.loc[(curves["population"] == population) & (curves["layer"] == layer)
                                  & (curves["model_a"] == packed["models"][i])
                                  & (curves["model_b"] == packed["models"][j])]
                assert totals[pair] == (rows["n_a"] + rows["n_b"]).sum()
                for k in (0, 20, 50, 51, 100, 200):  # ε = 0, 0.1, 0.25 (grid values: ≤ counts them), …
                    eps = k / STEPS
                    want = sum(int(np.sum(np.asarray(row.critical_a) <= max(eps, row.exact_tol))
                                   + np.sum(np.asarray(row.critical_b) <= max(eps, row.exact_tol)))
                               for row in rows.itertuples())
                    assert counts[k, pair] == want
    for (population, layer), mean in expected_means(store, 0.25).items():
        assert payload["means"][population][layer][50] == pytest.approx(mean, rel=1e-12)


def test_the_page_is_self_contained_and_summary_links_it(planted):
    _, report = planted
    text = report.html.path.read_text(encoding="utf-8")
    assert "<script src" not in text and "<link" not in text and "Content-Security-Policy" in text
    assert "default-src 'none'" in text  # the browser refuses any request the page would make
    assert "[index.html](index.html)" in report.summary
    assert report.html.path in report.paths and (report.out_dir / "similarity.png").exists()
    assert set(report.html.skipped) == {"cross", "trajectory"}


def test_command_prints_a_file_link_and_neurons_only_on_request(tmp_path, capsys):
    build_store(tmp_path / "store", simple=False, repeats=1, failed=0)
    assert main(["report", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--html-neurons"]) == 0
    out = capsys.readouterr().out
    assert f"{(tmp_path / 'out' / 'index.html').resolve().as_uri()}" in out
    assert main(["report", str(tmp_path / "store"), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "index.html").exists()
    assert "index.html" not in (tmp_path / "plain" / "summary.md").read_text()
    assert (tmp_path / "out" / "index.html").stat().st_size > 0


# --- in the browser -------------------------------------------------------------------------------------------

_FIGURES_JS = """
return Array.from(document.querySelectorAll('.figure')).map((div) => {
  const svg = div.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const images = Array.from(div.querySelectorAll('.hm image'))
    .filter((i) => (i.getAttribute('href') || '').length > 100);
  const lines = Array.from(div.querySelectorAll('.scatterlayer path.js-line'))
    .filter((p) => (p.getAttribute('d') || '').length > 10);
  const marks = div.querySelectorAll('.scatterlayer .point, .barlayer .point path');
  return {id: div.id, width: box.width, height: box.height, drawn: images.length + lines.length + marks.length};
});
"""


def shown_values(driver) -> dict[tuple[str, str], tuple[str, float]]:
    """The table at the slider's ε: (population, layer) → (text shown, full value)."""
    from selenium.webdriver.common.by import By

    return {(cell.get_attribute("data-population"), cell.get_attribute("data-layer")):
            (cell.text, float(cell.get_attribute("data-value") or "nan"))
            for cell in driver.find_elements(By.CSS_SELECTOR, "#at-eps td[data-layer]")}


def move_slider(driver, step: int) -> None:
    """Press the arrow keys on the focused slider until it stands at ``step`` (a user's moves, one step each)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element(By.ID, "eps-slider")
    driver.execute_script("arguments[0].focus()", slider)  # a click would move it to where it lands
    moves = step - int(slider.get_attribute("value"))
    ActionChains(driver).send_keys((Keys.ARROW_RIGHT if moves > 0 else Keys.ARROW_LEFT) * abs(moves)).perform()
    assert int(slider.get_attribute("value")) == step


def check_page(driver, store, tmp_path: Path, name: str, targets: list[int]) -> None:
    """The four checks, then a screenshot: offline, quiet console, every figure drawn, the slider's numbers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 90).until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
    figures = driver.execute_script(_FIGURES_JS)
    assert len(figures) >= 4
    for figure in figures:
        assert figure["width"] > 100 and figure["height"] > 100 and figure["drawn"] > 0, figure

    before = shown_values(driver)
    for step in targets:
        move_slider(driver, step)
        eps = step / STEPS
        assert driver.find_element(By.ID, "eps-value").text == f"{eps:.3f}"
        want, shown = expected_means(store, eps), shown_values(driver)
        assert set(want) <= set(shown)
        for key, value in want.items():
            assert shown[key][1] == pytest.approx(value, rel=1e-12, abs=1e-15) and shown[key][0] == f"{value:.3f}"
        WebDriverWait(driver, 30).until(lambda d, eps=eps: d.execute_script(
            f"return document.getElementById('fig-matrix-0').layout.title.text.includes('{eps:.3f}')"))
    assert any(shown_values(driver)[key][0] != before[key][0] for key in want) or len(targets) > 1

    driver.execute_script("window.scrollTo(0, 0)")
    assert console_problems(driver) == []
    urls = requested_urls(driver)
    assert urls and all(url.startswith(("data:", "blob:")) for url in urls[1:]), urls
    assert urls[0].startswith("file://")
    shot = screenshot(driver, tmp_path / f"report-html-{name}.png")
    assert shot.stat().st_size > 10_000


def test_the_planted_report_in_chromium(planted, tmp_path):
    store, report = planted
    with open_page(report.html.path) as driver:
        check_page(driver, store, tmp_path, "planted", [47])  # ε = 0.235, between grid values


QUICK_STUDY = """
name: html-quick
store: {{uri: "file://{root}"}}
population: {{training: {{seeds: [0, 1, 2], recipe: quick, dataset: digits, epochs: 3}}}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 1.0, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 200, seed: 0, rows: all}}
layers: [relu]
eps: [0.15, 0.25, 0.5]
pairs: all
cka: true
null_baseline: [untrained, permuted]
resources: {{gpus_per_actor: 0, pair_block: 4, max_in_flight: 4}}
"""


@pytest.mark.slow
def test_a_real_digits_study_in_chromium(ray_cluster, tmp_path):
    from raymatch.store import Store

    study = tmp_path / "study.yaml"
    study.write_text(QUICK_STUDY.format(root=tmp_path / "store"))
    assert main(["run", str(study), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "store"), "--out", str(tmp_path / "report"), "--html"]) == 0
    store = Store(str(tmp_path / "store"))
    with open_page(tmp_path / "report" / "index.html") as driver:
        check_page(driver, store, tmp_path, "digits", [53])  # ε = 0.265


@pytest.mark.slow  # ~20 s on the quiet 2-core machine: the synthetic store, the page and the browser
def test_the_200_model_table_scale_page_is_under_10_mb_and_works(tmp_path):
    from raymatch.report.html import html_report

    store = build_population_store(tmp_path / "store")
    page = html_report(store, tmp_path)
    print(f"200-model page: {page.size / 1e6:.2f} MB")
    assert page.size <= 10_000_000
    with open_page(page.path) as driver:
        check_page(driver, store, tmp_path, "200-models", [48, 50])  # 0.24, then 0.25: ≤ counts it
