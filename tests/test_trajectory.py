"""Training trajectories: ``population.training.save_every`` and pairs within each seed's trajectory.

The end-to-end test runs a small trajectory study on digits and checks its ``curves`` rows against a plain float64
maximum match of the stored activations (tests/plain_match.py), and the ``models`` table's epochs against the
training records.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.planning import model_groups
from raymatch.results import load
from raymatch.store import ActivationKey, Store
from raymatch.store.activations import read_activations
from raymatch.study import Study, StudyError, load_study
from raymatch.train import recipe, train_model

from .plain_match import plain_max_match


def _study(tmp_path, **changes) -> dict:
    data = {
        "name": "traj", "store": {"uri": f"file://{tmp_path / 'store'}"},
        "population": {"training": {"seeds": [0, 1], "recipe": "quick", "dataset": "digits", "epochs": 4,
                                    "n_train": 400, "save_every": 2}},
        "architecture": {"name": "small_cnn", "in_channels": 1, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 200},
        "layers": ["relu1", "relu3"], "eps": [0.25, 0.5], "pairs": {"reference": "final"}, "cka": False,
        "resources": {"gpus_per_actor": 0, "pair_block": 4, "max_in_flight": 2},
    }
    data.update(changes)
    return data


def test_saving_epochs_leaves_the_selected_checkpoint_alone():
    spec = recipe("quick", dataset="digits", epochs=2, n_train=200)
    kwargs = {"in_channels": 1, "input_size": 8}
    plain = train_model("small_cnn", kwargs, spec, seed=3)
    saved = train_model("small_cnn", kwargs, spec, seed=3, save_every=1)
    assert saved.checkpoint == plain.checkpoint
    assert [point.epoch for point in saved.trajectory] == [1, 2] and saved.record["saved_epochs"] == [1, 2]
    selected = saved.record["selected_epoch"]
    assert saved.trajectory[selected - 1].checkpoint == saved.checkpoint  # the selected epoch is the final model
    assert plain.trajectory == [] and "saved_epochs" not in plain.record


@pytest.mark.parametrize(("pairs", "expected"), [
    ({"reference": "final"}, [(0, 3), (1, 3), (2, 3)]),
    ("consecutive", [(0, 1), (1, 2)]),
    ("all", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]),
])
def test_trajectory_pairs_stay_within_each_seed(tmp_path, pairs, expected):
    data = _study(tmp_path, pairs=pairs)
    data["population"]["training"].update(epochs=6, save_every=2)
    study = Study.from_dict(data)
    groups = {group.name: group for group in model_groups(study, Store(str(tmp_path / "store")))}
    trajectory = groups["trajectory"]
    assert trajectory.origins == [(0, 2), (0, 4), (0, 6), (0, None), (1, 2), (1, 4), (1, 6), (1, None)]
    assert trajectory.position_pairs == expected + [(i + 4, j + 4) for i, j in expected]
    assert trajectory.checkpoints[3] == groups["trained"].checkpoints[0]  # the final weights are the trained model
    assert groups["trained"].train_todo == [0, 1]


def test_trajectory_keys_are_checked_and_leave_the_hash_alone(tmp_path):
    with pytest.raises(StudyError, match=r"needs population\.training\.save_every"):
        data = _study(tmp_path)
        del data["population"]["training"]["save_every"]
        Study.from_dict(data)
    with pytest.raises(StudyError, match=r"reference \(one seed\) does not apply"):
        Study.from_dict(_study(tmp_path, pairs="reference", reference="seed0"))
    with pytest.raises(StudyError, match="save_every: 9 is more than the 4 epochs"):
        data = _study(tmp_path)
        data["population"]["training"]["save_every"] = 9
        Study.from_dict(data)
    with pytest.raises(StudyError, match="must be a positive integer"):
        data = _study(tmp_path)
        data["population"]["training"]["save_every"] = 0
        Study.from_dict(data)
    with_trajectory = Study.from_dict(_study(tmp_path, pairs="all"))
    data = _study(tmp_path, pairs="all")
    del data["population"]["training"]["save_every"]
    without = Study.from_dict(data)
    assert "save_every" not in without.to_dict()["population"]["training"]
    assert with_trajectory.config_hash == without.config_hash  # the trained models' rows stay the study's
    assert Study.from_dict(with_trajectory.to_dict()) == with_trajectory


@pytest.mark.slow
def test_trajectory_study_end_to_end_matches_plain_numpy(tmp_path, ray_cluster, capsys):
    study_file = tmp_path / "traj.yaml"
    study_file.write_text(yaml.safe_dump(_study(tmp_path)))
    study = load_study(study_file)
    assert main(["run", str(study_file), "--quiet"]) == 0
    store = study.store.open()
    models = load(store, "models")
    final = models[models["population"] == "trained"].set_index("seed")
    assert (final["epoch"] == final["selected_epoch"]).all()
    saved = models[models["population"] == "trajectory"]
    for seed in (0, 1):
        record = store.read_json(f"{study.population.training.prefix(study.architecture)}/seed{seed}.json")
        assert record["saved_epochs"] == [2, 4]
        # a saved epoch with the selected weights is the final model itself (recorded once, as trained)
        expected = {2, 4} - ({record["selected_epoch"]} if record["selected_epoch"] in (2, 4) else set())
        assert set(saved.loc[saved["seed"] == seed, "epoch"]) == expected
        assert set(saved.loc[saved["seed"] == seed, "name"]) == {f"seed{seed}@epoch{epoch}" for epoch in expected}
    assert final["name"].tolist() == [f"seed{seed}" for seed in final.index]  # models by name (issue 26.5)

    matches = load(store, "matches")
    rows = matches[matches["population"] == "trajectory"]
    assert set(rows["status"]) == {"ok"}
    assert len(rows) == len(saved) * 2 * 2  # pairs × layers × ε
    finals = dict(zip(final.index, final["model_id"], strict=True))
    checked = 0
    for row in rows.itertuples():
        seed = int(saved.loc[saved["model_id"] == row.model_a, "seed"].iloc[0])
        assert row.model_b == finals[seed]
        a = read_activations(store, ActivationKey(study.probe.id, row.model_a, row.layer, 0))
        b = read_activations(store, ActivationKey(study.probe.id, row.model_b, row.layer, 0))
        keep_a, keep_b = plain_max_match(a, b, row.eps, floor=1e-6)
        assert (row.size_a, row.size_b) == (len(keep_a), len(keep_b))
        assert row.neurons_a.tolist() == keep_a and row.neurons_b.tolist() == keep_b
        assert row.similarity == pytest.approx((len(keep_a) + len(keep_b)) / (a.shape[1] + b.shape[1]))
        checked += 1
    assert checked > 0

    capsys.readouterr()
    out_dir = tmp_path / "report"
    assert main(["report", str(store.root), "--out", str(out_dir)]) == 0
    assert (out_dir / "trajectory.png").is_file()
    summary = (rows.merge(saved[["model_id", "epoch"]], left_on="model_a", right_on="model_id")
               .groupby(["layer", "eps", "epoch"])["similarity"].mean())
    assert np.isfinite(summary.to_numpy()).all()


def test_a_models_table_from_before_the_epoch_column_takes_new_rows(tmp_path):
    import datetime as dt

    import pyarrow as pa
    from deltalake import write_deltalake

    from raymatch.results import append_rows, query
    from raymatch.results.schema import MODELS
    from raymatch.store.layout import study_record_key

    store = Store(str(tmp_path / "store"))
    old = pa.schema([field for field in MODELS if field.name != "epoch"])
    row = {"study": "s", "config_hash": "h", "population": "trained", "model_id": "m0", "seed": 0, "checkpoint": None,
           "architecture": "mlp", "holdout_accuracy": None, "test_accuracy": None, "epochs": 3, "selected_epoch": 2,
           "created_at": dt.datetime.now(dt.timezone.utc)}
    write_deltalake(store.path("results/models"), pa.Table.from_pylist([row], schema=old))
    append_rows(store, "models", [{**row, "model_id": "m1", "epoch": 2, "created_at": None}])
    store.write_json(study_record_key("s"), {"name": "s", "config_hash": "h", "eps": [0.5], "layers": []})
    epochs = query(store, "SELECT model_id, epoch FROM models ORDER BY model_id")
    assert epochs["model_id"].tolist() == ["m0", "m1"]
    assert epochs["epoch"].isna().tolist() == [True, False] and epochs["epoch"].iloc[1] == 2
