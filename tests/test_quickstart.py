"""The quickstart study (the README's main job) end to end: train, extract, match, report, null baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymatch.cli import main
from raymatch.results import load
from raymatch.study import load_study

QUICKSTART = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "quickstart.yaml"


@pytest.fixture
def quickstart(tmp_path, ray_cluster):
    store = tmp_path / "store"
    text = QUICKSTART.read_text().replace("uri: file://./raymatch-store", f"uri: file://{store}")
    study_file = tmp_path / "quickstart.yaml"
    study_file.write_text(text)
    return load_study(study_file), study_file, store


@pytest.mark.slow
def test_quickstart_table_has_every_pair_layer_eps_row_and_the_null_sits_below(quickstart, tmp_path, capsys):
    study, study_file, store = quickstart
    assert main(["run", str(study_file), "--quiet"]) == 0
    capsys.readouterr()
    matches = load(study.store.open(), "matches")
    n_pairs, n_layers, n_eps = 6, len(study.layer_names), len(study.eps)
    for population in ("trained", "untrained"):
        rows = matches[matches["population"] == population]
        assert len(rows) == n_pairs * n_layers * n_eps
        assert set(rows["status"]) == {"ok"}
        assert rows.groupby(["layer", "eps"]).size().eq(n_pairs).all()
    last = study.layer_names[-1]
    mean = matches[matches["layer"] == last].groupby(["population", "eps"])["similarity"].mean()
    for eps in (0.25, 0.3):
        assert mean["untrained", eps] < mean["trained", eps]
    assert set(load(study.store.open(), "cka")["population"]) == {"trained", "untrained", "permuted"}
    permuted = matches[(matches["population"] == "permuted") & (matches["eps"] <= 0.3)]
    assert len(permuted) == n_pairs * n_layers * 4 and permuted["similarity"].max() == 0.0  # far below chance

    out_dir = tmp_path / "report"
    assert main(["report", str(store), "--out", str(out_dir)]) == 0
    written = {path.name for path in out_dir.iterdir()}
    assert {"similarity.png", "max_epsilon.png", "cka.png", "summary.md"} <= written
    assert "null" in (out_dir / "summary.md").read_text()
