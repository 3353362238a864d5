"""Models by name (issue 26.5): ``models.name`` and the ``name_a`` / ``name_b`` of the views, the report and the page.

A name is the seed for models a study trains or initialises (``seed3``), the checkpoint's path relative to the
folder the population's checkpoints share for checkpoints given, the imported model's name for imported
activations; a store written before the column existed still reads, its views naming models by id. The end-to-end
test runs a study of checkpoints found by a glob from the command line and asks ``raymatch query`` and
``raymatch report`` for names; it also checks ``eps_for_share`` against ``match_curve(A, B).min_epsilon`` on the
stored activations and the width of the printed tables.
"""

from __future__ import annotations

import datetime as dt
import io
import math

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.model_rows import checkpoint_names
from raymatch.match import EXACT_TOL, match_curve
from raymatch.models import checkpoint_bytes
from raymatch.report import write_report
from raymatch.results import append_rows, query, read_columns
from raymatch.results.schema import MODELS
from raymatch.store import ActivationKey, Store, read_activations
from raymatch.store.layout import study_record_key

from .extract.helpers import digits_model

CREATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_checkpoint_names_are_paths_relative_to_the_shared_folder():
    assert checkpoint_names(["ckpt/vgg/a/best.pt", "ckpt/vgg/b/best.pt"]) == ["a/best.pt", "b/best.pt"]
    assert checkpoint_names(["ckpt/vgg/seed0.pt", "ckpt/vgg/sub/seed1.pt"]) == ["seed0.pt", "sub/seed1.pt"]
    assert checkpoint_names(["s3://bucket/run3/m.pt", "s3://bucket/run4/m.pt"]) == ["run3/m.pt", "run4/m.pt"]
    assert checkpoint_names(["/data/x/a.pt", "/data/x/b.pt"]) == ["a.pt", "b.pt"]
    assert checkpoint_names(["a.pt", "b.pt"]) == ["a.pt", "b.pt"]
    assert checkpoint_names(["/x/a.pt", "y/b.pt"]) == ["/x/a.pt", "y/b.pt"]  # nothing shared: the keys


def _curve_row(model_a: str, model_b: str, **fields) -> dict:
    row = {"study": "s", "population": "trained", "layer": "fc", "repeat": 0, "model_a": model_a,
           "model_b": model_b, "probe_id": "p", "config_hash": "h", "code_version": "0.2.0", "n_samples": 10,
           "n_a": 2, "n_b": 2, "dead_a": 0, "dead_b": 0, "critical_a": [0.0, 0.4], "critical_b": [0.1, 0.3],
           "exact_tol": EXACT_TOL, "max_epsilon": 0.4, "chance": 0.9, "cka": 0.5, "seconds": 0.0, "status": "ok",
           "error": None, "created_at": CREATED}
    return row | fields


def test_a_store_from_before_the_name_column_reads_and_takes_named_rows(tmp_path, capsys):
    from deltalake import write_deltalake

    store = Store(str(tmp_path / "store"))
    store.write_json(study_record_key("s"), {"name": "s", "config_hash": "h", "eps": [0.2], "layers": ["fc"]})
    old = pa.schema([field for field in MODELS if field.name != "name"])
    row = {"study": "s", "config_hash": "h", "population": "trained", "model_id": "m0", "seed": 0,
           "architecture": "mlp", "created_at": CREATED}
    write_deltalake(store.path("results/models"), pa.Table.from_pylist([row], schema=old))
    append_rows(store, "curves", [_curve_row("m0", "m1")])
    # the views fall back to the ids; planning's column reads see the new column as null
    assert query(store, "SELECT name_a, name_b FROM matches").values.tolist() == [["m0", "m1"]]
    assert read_columns(store, "models", ["model_id", "name"]).to_pylist() == [{"model_id": "m0", "name": None}]
    assert query(store, "SELECT * FROM models").columns.tolist() == MODELS.names
    # a rerun records the models again, named: the latest row wins
    append_rows(store, "models", [{**row, "name": "seed0", "created_at": CREATED + dt.timedelta(seconds=1)},
                                  {**row, "model_id": "m1", "seed": 1, "name": "seed1"}])
    for view, columns in (("matches", "name_a, name_b"), ("curves", "name_a, name_b"), ("cka", "name_a, name_b"),
                          ("matches_at(0.35)", "name_a, name_b"), ("eps_for_share(0.5)", "name_a, name_b")):
        assert query(store, f"SELECT {columns} FROM {view}").values.tolist() == [["seed0", "seed1"]], view
    names = query(store, "SELECT model, name FROM universality(0.35) GROUP BY ALL ORDER BY model")
    assert names.values.tolist() == [["m0", "seed0"], ["m1", "seed1"]]
    assert main(["query", store.root, "SELECT DISTINCT name_a, name_b FROM matches", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["name_a,name_b", "seed0,seed1"]


def test_cross_views_and_the_report_use_the_names(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.write_json(study_record_key("s"), {"name": "s", "config_hash": "h", "eps": [0.2], "layers": ["fc"]})
    append_rows(store, "curves", [_curve_row(a, b) for a, b in (("m0", "m1"), ("m0", "m2"), ("m1", "m2"))])
    cross = {key: value for key, value in _curve_row("m0", "m1").items() if key != "layer"}
    append_rows(store, "cross_curves", [{**cross, "layer_a": "fc", "layer_b": "fc2", "pool": "none"}])
    append_rows(store, "models", [{"study": "s", "config_hash": "h", "population": "trained", "model_id": f"m{i}",
                                   "name": f"runs/r{i}.pt", "architecture": "mlp"} for i in range(3)])
    for view in ("cross_curves", "cross_matches"):
        assert query(store, f"SELECT name_a, name_b FROM {view}").values.tolist() == [["runs/r0.pt", "runs/r1.pt"]]
    report = write_report(store, out_dir=tmp_path / "report", html=True)
    assert "Trained: 3 models (runs/r0.pt, runs/r1.pt, runs/r2.pt), 3 pairs" in report.summary
    labels = report.html.payload["labels"]
    assert {entry["label"] for entry in labels.values()} == {"runs/r0.pt", "runs/r1.pt", "runs/r2.pt"}


CHECKPOINTS = ("runs/lr0.1/model.safetensors", "runs/lr0.01/model.safetensors", "runs/lr0.001/model.safetensors")
LONG_LAYERS = ["relu1", "relu3"]


@pytest.mark.slow
def test_a_glob_study_names_its_models_and_eps_for_share_is_min_epsilon_of_its_activations(tmp_path, ray_cluster,
                                                                                             capsys):
    store = Store(str(tmp_path / "store"))
    for seed, key in enumerate(CHECKPOINTS):
        store.write_bytes(f"checkpoints/{key}", checkpoint_bytes(digits_model(10 + seed)))  # not the nulls
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "named", "store": {"uri": f"file://{store.root}"},
        "population": {"glob": "checkpoints/runs/*/model.safetensors"},
        "architecture": {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 150, "seed": 0, "rows": "all"},
        "layers": LONG_LAYERS, "eps": [0.15, 0.2, 0.25, 0.3, 0.5], "pairs": "all", "cka": True,
        "null_baseline": ["untrained", "permuted"],
        "resources": {"gpus_per_actor": 0, "pair_block": 4, "max_in_flight": 2}}))
    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("mean maximum-match similarity"):].splitlines()
    assert max(map(len, table)) <= 100
    assert "untrained (null)" in out or "(null " in out

    assert main(["query", store.root, "SELECT population, name, seed FROM models ORDER BY ALL", "--format",
                 "csv"]) == 0
    models = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert models.loc[models["population"] == "trained", "name"].tolist() == sorted(
        key.split("/", 1)[1] for key in CHECKPOINTS)  # relative to the glob's folder, checkpoints/runs
    assert models.loc[models["population"] == "untrained", "name"].tolist() == ["seed0", "seed1", "seed2"]
    assert models.loc[models["population"] == "untrained", "seed"].tolist() == [0, 1, 2]
    names = query(store, "SELECT DISTINCT population, name_a, name_b FROM matches")
    trained = {"lr0.1/model.safetensors", "lr0.01/model.safetensors", "lr0.001/model.safetensors"}
    for population, expected in (("trained", trained), ("permuted", trained), ("untrained", {"seed0", "seed1",
                                                                                             "seed2"})):
        rows = names[names["population"] == population]
        assert set(rows["name_a"]) | set(rows["name_b"]) == expected and len(rows) == 3

    shares = query(store, "SELECT * FROM eps_for_share(0.5) WHERE population = 'trained' "
                          "UNION ALL SELECT * FROM eps_for_share(0.9) WHERE population = 'trained'")
    probe = query(store, "SELECT DISTINCT probe_id FROM curves")["probe_id"].item()
    assert len(shares) == 2 * 3 * len(LONG_LAYERS)
    for row in shares.itertuples():
        A = read_activations(store, ActivationKey(probe, row.model_a, row.layer, 0))
        B = read_activations(store, ActivationKey(probe, row.model_b, row.layer, 0))
        curve = match_curve(A, B)  # float32 activations: the exact tolerance of the stored rows
        assert (row.live_a, row.live_b) == (curve.n_a - len(curve.dead_a), curve.n_b - len(curve.dead_b))
        side = [sorted(c[~pd.isna(c) & (c < math.inf)]) for c in (curve.critical_a, curve.critical_b)]
        plain = max(side[0][row.needed_a - 1], side[1][row.needed_b - 1])
        assert row.eps == pytest.approx(plain, abs=1e-6)
        if row.needed_a == row.needed_b:
            assert row.eps == pytest.approx(curve.min_epsilon(row.needed_a), abs=1e-6)

    assert main(["report", store.root, "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    printed = out[: out.index("wrote ")].splitlines()
    assert max(map(len, printed)) <= 100
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Trained: 3 models (lr0.001/model.safetensors, lr0.01/model.safetensors, lr0.1/model.safetensors)" \
        in summary
    assert "Untrained: 3 models (seed0, seed1, seed2)" in summary
