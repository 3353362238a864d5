"""Cross-layer matches (``cross_layers``): ``cross_curves`` rows against a plain float64 maximum match of the stored
activations, pooling against a plain mean over positions, and the refusal of layers with different rows."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.context import PlanContext
from raymatch.engine.plan import Plan
from raymatch.engine.stages.cross import layer_pairs, pooled_layers
from raymatch.match import match_curve
from raymatch.report.beyond import cross_layer_data
from raymatch.results import connect, load
from raymatch.store import ActivationKey, Store
from raymatch.store.activations import read_activations
from raymatch.study import Study, StudyError, load_study

from .plain_match import plain_max_match

CONV = {"relu1": 64, "relu2": 64}  # positions per image of small_cnn's conv layers on 8×8 digits


def _study(tmp_path, **changes) -> dict:
    data = {
        "name": "cross", "store": {"uri": f"file://{tmp_path / 'store'}"},
        "population": {"training": {"seeds": [0, 1], "recipe": "quick", "dataset": "digits", "epochs": 2,
                                    "n_train": 300}},
        "architecture": {"name": "small_cnn", "in_channels": 1, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 150},
        "layers": ["relu"], "eps": [0.25, 0.5],
        "cross_layers": {"layers": ["relu1", "relu2", "relu3"], "within_model": True, "pool": "mean"},
        "resources": {"gpus_per_actor": 0, "pair_block": 4, "max_in_flight": 2},
    }
    data.update(changes)
    return data


def test_layer_pairs():
    assert layer_pairs(["a", "b", "c"], same_model=True) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert layer_pairs(["a", "b"], same_model=False) == [("a", "b"), ("b", "a")]
    assert layer_pairs(["a", "b"], same_model=False, diagonal=True) == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]


def test_the_pooled_layers_of_a_probe_read_from_the_users_files(tmp_path):
    """The conv layers are found from the files' image shape (a built-in dataset's table has no entry for them)."""
    np.save(tmp_path / "probe.npy", np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32))
    study = Study.from_dict(_study(tmp_path, probe={"dataset": "array", "path": str(tmp_path / "probe.npy")}))
    context = PlanContext(study, Store(str(tmp_path / "store")), Plan([], list(study.layer_names)))
    assert pooled_layers(context) == tuple(CONV)


def test_layers_of_other_rows_are_refused_unless_pooled(tmp_path):
    data = _study(tmp_path, cross_layers={"layers": ["relu1", "relu3"]})
    with pytest.raises(StudyError, match=r"cross_layers\.layers: relu1 \(positions 8×8\) and relu3 \(one row per "
                                         r"example\) are not compared over the same rows; give cross_layers\.pool"):
        Study.from_dict(data)
    Study.from_dict(_study(tmp_path, cross_layers={"layers": ["relu1", "relu2"]}))  # same positions: fine
    with pytest.raises(StudyError, match=r"cross_layers\.layers: selects fc2, which the study's layers"):
        Study.from_dict(_study(tmp_path, cross_layers={"layers": ["relu1", "fc2"], "pool": "mean"}))
    with pytest.raises(StudyError, match="must select at least 2 layers"):
        Study.from_dict(_study(tmp_path, cross_layers={"layers": ["relu1"]}))
    with pytest.raises(StudyError, match="must be one of none, mean"):
        Study.from_dict(_study(tmp_path, cross_layers={"layers": ["relu1", "relu2"], "pool": "max"}))
    plain = _study(tmp_path)
    del plain["cross_layers"]
    assert Study.from_dict(_study(tmp_path)).config_hash == Study.from_dict(plain).config_hash
    assert "cross_layers" not in Study.from_dict(plain).to_dict()


def _matrix(store, probe_id, model, layer, pool):
    """The rows a cross-layer match should see: pooled plainly from the stored conv layer, or the layer as stored."""
    stored = read_activations(store, ActivationKey(probe_id, model, layer, 0)).astype(np.float64)
    if pool == "mean" and layer in CONV:  # stored rows are (image, position), image-major
        return stored.reshape(-1, CONV[layer], stored.shape[1]).mean(axis=1)
    return stored


def _check_rows(store, study, rows, pool) -> int:
    checked = 0
    for row in rows.itertuples():
        a = _matrix(store, study.probe.id, row.model_a, row.layer_a, pool)
        b = _matrix(store, study.probe.id, row.model_b, row.layer_b, pool)
        assert row.n_samples == a.shape[0] == b.shape[0]
        keep_a, keep_b = plain_max_match(a, b, row.eps, floor=1e-6)
        assert (row.neurons_a.tolist(), row.neurons_b.tolist()) == (keep_a, keep_b), (row.layer_a, row.layer_b)
        assert row.similarity == pytest.approx((len(keep_a) + len(keep_b)) / (a.shape[1] + b.shape[1]))
        checked += 1
    return checked


@pytest.mark.slow
def test_cross_layers_end_to_end_match_plain_numpy(tmp_path, ray_cluster, capsys):
    study_file = tmp_path / "cross.yaml"
    study_file.write_text(yaml.safe_dump(_study(tmp_path)))
    study = load_study(study_file)
    assert main(["run", str(study_file), "--quiet"]) == 0
    store = study.store.open()
    curves = load(store, "cross_curves")
    assert set(curves["status"]) == {"ok"} and set(curves["pool"]) == {"mean"}
    distinct = curves[curves["model_a"] != curves["model_b"]]
    within = curves[curves["model_a"] == curves["model_b"]]
    assert len(distinct) == 1 * 9 and len(within) == 2 * 3  # 1 pair × 3 × 3 layers; 2 models × 3 pairs i < j
    assert set(zip(within["layer_a"], within["layer_b"], strict=True)) == {("relu1", "relu2"), ("relu1", "relu3"),
                                                                          ("relu2", "relu3")}
    # pooled matrices are the plain mean over positions of the stored conv rows
    model = curves["model_a"].iloc[0]
    pooled = read_activations(store, ActivationKey(study.probe.id, model, "relu2+mean", 0))
    np.testing.assert_allclose(pooled, _matrix(store, study.probe.id, model, "relu2", "mean"), rtol=1e-5, atol=1e-6)

    cross = load(store, "cross_matches")
    assert _check_rows(store, study, cross, "mean") == len(curves) * 2
    for row in curves.itertuples():  # every neuron's critical ε, against match_curve of the plain matrices
        curve = match_curve(_matrix(store, study.probe.id, row.model_a, row.layer_a, "mean"),
                            _matrix(store, study.probe.id, row.model_b, row.layer_b, "mean"))
        np.testing.assert_allclose(row.critical_a, curve.critical_a, atol=1e-6)
        np.testing.assert_allclose(row.critical_b, curve.critical_b, atol=1e-6)
    # the per-example layer's pooled diagonal is its curves row
    matches = load(store, "matches").set_index(["layer", "eps"])
    diagonal = cross[(cross["layer_a"] == "relu3") & (cross["layer_b"] == "relu3")].set_index("eps")
    for eps in (0.25, 0.5):
        assert diagonal.loc[eps, "similarity"] == pytest.approx(matches.loc[("relu3", eps), "similarity"])

    # the same study without pooling, on two conv layers of the same positions: their stored rows as they are
    study_file.write_text(yaml.safe_dump(_study(tmp_path, cross_layers={"layers": ["relu1", "relu2"]})))
    assert main(["run", str(study_file), "--quiet"]) == 0
    cross = load(store, "cross_matches")
    plain = cross[cross["pool"] == "none"]
    assert len(plain) == 2 * 2  # (relu1, relu2) and (relu2, relu1) of the one pair, at 2 ε
    assert _check_rows(store, study, plain, "none") == 4
    con = connect(store)
    try:
        heat = cross_layer_data(con, "cross", "none").set_index(["layer_a", "layer_b", "eps"])
    finally:
        con.close()
    for eps in (0.25, 0.5):  # the heatmap's diagonal is the curves value of the pair
        assert heat.loc[("relu1", "relu1", eps), "similarity"] == pytest.approx(
            matches.loc[("relu1", eps), "similarity"])

    capsys.readouterr()
    out_dir = tmp_path / "report"
    assert main(["report", str(store.root), "--out", str(out_dir)]) == 0
    assert (out_dir / "cross_layers.png").is_file()
