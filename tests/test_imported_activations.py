"""Bringing one's own activations: the authors' npz layout and one .npy per (model, layer) (issue 13, items 6–7)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import raymatch
from raymatch.cli import main
from raymatch.probes import ProbeSpec, RowSample
from raymatch.results import load
from raymatch.store import ActivationKey, Store, read_activations, read_manifest
from raymatch.study import StudyError, load_study

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "imported-activations.yaml"
N = 60
#: layer → shape without the examples axis: two conv layers and a linear one, as the authors' code saves them
LAYERS = {"features.1": (4, 4, 4), "features.4": (6, 2, 2), "classifier.1": (8,)}


def _authors_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: np.maximum(rng.standard_normal((N, *shape)), 0).astype(np.float32)
            for layer, shape in LAYERS.items()}  # ReLU outputs: dead units and zeros included


def _write_authors(root: Path, seeds=(0, 1, 2), edit=None) -> Path:
    for seed in seeds:
        arrays = _authors_arrays(seed)
        if edit is not None:
            edit(seed, arrays)
        (root / f"rnd_{seed}").mkdir(parents=True, exist_ok=True)
        np.savez(root / f"rnd_{seed}" / "best_test_relu.npz", **arrays)
    return root


def _study_file(tmp_path: Path, data: Path, store: Path, **changes) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["store"]["uri"] = f"file://{store}"
    config["population"]["activations"]["dir"] = str(data)
    config.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _plain_matrix(array: np.ndarray, rows: RowSample, repeat: int) -> np.ndarray:
    """The matrix the study compares, recomputed from the npz array with numpy alone (float64)."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        return array  # (N, F): every example, no sampling
    n, channels, height, width = array.shape
    flat = array.transpose(0, 2, 3, 1).reshape(n * height * width, channels)  # rows (example, y, x)
    chosen = np.random.default_rng([rows.seed, repeat, n, height, width]).choice(n * height * width, rows.rows,
                                                                                replace=False)
    return flat[np.sort(chosen)]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_the_example_imports_the_authors_layout_and_its_curves_equal_max_match_on_the_npz(tmp_path, capsys):
    data = _write_authors(tmp_path / "authors")
    store_root = tmp_path / "store"
    study_file = _study_file(tmp_path, data, store_root)
    study = load_study(study_file)
    assert study.layer_names == tuple(LAYERS) and study.architecture is None
    assert main(["plan", str(study_file)]) == 0
    assert "extract       0      3" in capsys.readouterr().out

    assert main(["run", str(study_file), "--quiet"]) == 0, capsys.readouterr().err
    assert "extract          3        0       0" in capsys.readouterr().out
    store = Store(f"file://{store_root}")
    probe = study.probe
    matches = load(store, "matches", study=study.name)
    repeats = {"features.1": 2, "features.4": 2, "classifier.1": 1}
    assert len(matches) == 3 * sum(repeats.values()) * 3  # pairs × (layer, repeat) × ε
    assert set(matches["status"]) == {"ok"}
    models = load(store, "models", study=study.name).sort_values("seed")
    assert models["seed"].tolist() == [0, 1, 2] and set(models["architecture"]) == {"imported:authors-npz"}
    seed_of = dict(zip(models["model_id"], models["seed"], strict=True))
    arrays = {seed: _authors_arrays(seed) for seed in range(3)}
    for row in matches.itertuples():
        A = _plain_matrix(arrays[seed_of[row.model_a]][row.layer], probe.rows, row.repeat)
        B = _plain_matrix(arrays[seed_of[row.model_b]][row.layer], probe.rows, row.repeat)
        want = raymatch.max_match(A, B, row.eps)
        assert list(row.neurons_a) == want.a.tolist() and list(row.neurons_b) == want.b.tolist()
        assert row.similarity == pytest.approx(want.similarity)
        stored = read_activations(store, ActivationKey(probe.id, row.model_a, row.layer, row.repeat))
        np.testing.assert_array_equal(stored, A.astype(np.float32))
    manifest = read_manifest(store, ActivationKey(probe.id, models["model_id"].iloc[0], "features.1", 1))
    assert manifest["row_policy"]["rows"] == 200 and manifest["layer_shape"] == [4, 4, 4]
    cka = load(store, "cka", study=study.name)
    assert len(cka) == 3 * sum(repeats.values()) and cka["cka"].between(0, 1).all()

    # a rerun computes nothing; `raymatch import` finds everything stored
    before = sorted(key for key in store.list("results") if not key.startswith("results/runs/"))
    assert main(["run", str(study_file), "--quiet"]) == 0
    assert "extract          0        3       0" in capsys.readouterr().out
    assert sorted(key for key in store.list("results") if not key.startswith("results/runs/")) == before
    assert main(["import", str(study_file)]) == 0
    assert "imported 0 model(s)" in capsys.readouterr().out
    assert main(["status", str(store_root)]) == 0
    assert f"study {study.name}: complete" in capsys.readouterr().out
    assert main(["report", str(store_root), "--study", study.name, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "summary.md").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_npy_layout_imports_under_content_ids_and_runs_against_a_reference(tmp_path, capsys):
    rng = np.random.default_rng(7)
    arrays = {model: {"block1": np.maximum(rng.standard_normal((40, 5, 3, 3)), 0).astype(np.float32),
                      "head": rng.standard_normal((40, 7))} for model in ("net_a", "net_b", "net_c")}
    for model, layers in arrays.items():
        (tmp_path / "acts" / model).mkdir(parents=True)
        for layer, array in layers.items():
            np.save(tmp_path / "acts" / model / f"{layer}.npy", array)
    study_file = tmp_path / "npy.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "npy-import", "store": {"uri": f"file://{tmp_path / 'store'}"},
        "population": {"activations": {"layout": "npy", "path": str(tmp_path / "acts" / "{model}" / "{layer}.npy"),
                                       "models": ["net_a", "net_b", "net_c"]}},
        "layers": ["block1", "head"], "eps": [0.25], "pairs": "reference", "reference": "net_b",
        "resources": {"gpus_per_actor": 0}}))
    assert main(["import", str(study_file)]) == 0, capsys.readouterr().err
    assert "imported 3 model(s) (6 model × layer matrices)" in capsys.readouterr().out
    study = load_study(study_file)
    assert study.probe == ProbeSpec(dataset="imported")
    store = Store(f"file://{tmp_path / 'store'}")
    for model, layers in arrays.items():
        digest = hashlib.sha256()
        for layer in ("block1", "head"):  # the model id: the digest of its arrays, in layer order
            array = np.load(tmp_path / "acts" / model / f"{layer}.npy")
            digest.update(f"{layer}\0{array.shape}\0{array.dtype.str}\0".encode() + array.tobytes())
        model_id = digest.hexdigest()[:16]
        conv = read_activations(store, ActivationKey(study.probe.id, model_id, "block1"))
        np.testing.assert_array_equal(conv, layers["block1"].transpose(0, 2, 3, 1).reshape(-1, 5))
        head = read_activations(store, ActivationKey(study.probe.id, model_id, "head"))
        np.testing.assert_array_equal(head, layers["head"].astype(np.float32))

    # the run finds every matrix imported, and compares each model with the reference
    assert main(["run", str(study_file), "--quiet"]) == 0, capsys.readouterr().err
    assert "extract          0        3       0" in capsys.readouterr().out
    models = load(store, "models", study="npy-import")
    name_of = dict(zip(models["model_id"], models["checkpoint"], strict=True))
    matches = load(store, "matches", study="npy-import")
    assert sorted((name_of[a], name_of[b]) for a, b in zip(matches["model_a"], matches["model_b"], strict=True)) \
        == [("net_b", "net_a")] * 2 + [("net_b", "net_c")] * 2
    for row in matches.itertuples():
        def plain(model, layer=row.layer):
            array = arrays[name_of[model]][layer].astype(np.float64)
            return array.transpose(0, 2, 3, 1).reshape(-1, 5) if array.ndim == 4 else array

        want = raymatch.max_match(plain(row.model_a), plain(row.model_b), row.eps)
        assert list(row.neurons_a) == want.a.tolist() and list(row.neurons_b) == want.b.tolist()
        assert row.similarity == pytest.approx(want.similarity)


def _nan(seed, arrays):
    if seed == 1:
        arrays["features.4"][3, 2, 1, 0] = np.nan


def _fewer_rows(seed, arrays):
    if seed == 2:
        arrays["classifier.1"] = arrays["classifier.1"][:-1]


def _missing_layer(seed, arrays):
    if seed == 1:
        del arrays["features.4"]


@pytest.mark.parametrize(("edit", "changes", "message"), [
    (_nan, {}, r"population\.activations: .*rnd_1/best_test_relu\.npz\[features\.4\] \(model seed1, layer "
               r"features\.4\) has 1 NaN or infinite value"),
    (_fewer_rows, {}, r"population\.activations: row counts differ: .*rnd_2.*classifier\.1.* has 59 examples, "
                      r"model seed0 has 60"),
    (_missing_layer, {}, r"population\.activations: models seed0 and seed1 have different layers \(seed1 lacks "
                         r"features\.4\)"),
    (None, {"layers": ["relu"]}, r"layers\[0\]: no imported layer 'relu'; the files hold features\.1, features\.4, "
                                 r"classifier\.1"),
    (None, {"architecture": {"name": "small_cnn"}}, r"architecture: not used with population\.activations"),
    (None, {"probe": {"dataset": "digits"}}, r"probe\.dataset: must be imported with population\.activations"),
    (None, {"null_baseline": True}, r"null_baseline: untrained needs an architecture"),
])
def test_bad_imports_exit_2_with_one_line_before_anything_is_written(tmp_path, capsys, edit, changes, message):
    data = _write_authors(tmp_path / "authors", edit=edit)
    store_root = tmp_path / "store"
    study_file = _study_file(tmp_path, data, store_root, **changes)
    for command in ("run", "import"):
        assert main([command, str(study_file)]) == 2
        err = capsys.readouterr().err.splitlines()
        problems = err[1:] if "problem(s)" in err[0] else [err[0].removeprefix("raymatch: error: ")]
        assert len(problems) == 1, err
        assert re.search(message, problems[0]), problems
        assert not store_root.exists()


def test_a_missing_seed_file_and_a_bad_template_are_named():
    missing = {"name": "x", "store": {"uri": "file:///tmp/x"}, "layers": ["a"], "eps": [0.2],
               "population": {"activations": {"layout": "authors-npz", "dir": "/nonexistent", "prefix": "x",
                                              "seeds": [5, 6]}}}
    with pytest.raises(StudyError, match=r"population\.activations\.seeds: no file .*rnd_5/x\.npz for seed 5"):
        raymatch.study.Study.from_dict(missing)
    with pytest.raises(StudyError, match=r"population\.activations\.path: must hold \{model\} and \{layer\}"):
        raymatch.study.Study.from_dict({"name": "x", "store": {"uri": "file:///tmp/x"}, "layers": ["a"],
                                        "eps": [0.2], "population": {"activations": {
                                            "layout": "npy", "path": "acts/{model}.npy", "models": ["a", "b"]}}})


def test_imported_layers_with_no_more_samples_than_neurons_are_refused(tmp_path, capsys):
    data = _write_authors(tmp_path / "authors")
    study_file = _study_file(tmp_path, data, tmp_path / "store",
                             probe={"dataset": "imported", "rows": {"rows": 4, "repeats": 1}})
    assert main(["plan", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert "layers: features.1 has 4 neurons but the probe gives it only 4 samples" in err
    assert "layers: features.4 has 6 neurons but the probe gives it only 4 samples" in err
    assert not (tmp_path / "store").exists()
