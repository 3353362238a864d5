"""Relative paths in a study file resolve against the file's folder, not the working directory (issue 26 point 10).

A study's own files — its architecture's ``code``, its probe files, imported activations, data folders — are named
relative to the study file. The study record keeps them absolute, so ``raymatch status``, ``gc`` and ``report`` plan
the study from any directory; and the config hash hashes the paths as written, so it is the same wherever the
study lies or runs (the examples keep their hashes).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.record import write_study_record
from raymatch.store import Store
from raymatch.study import Study, StudyError, load_study

from .lm_helpers import lm_study
from .test_imported_activations import _write_authors

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"

#: Each example's config hash as it was when paths resolved against the working directory (run from the
#: repository root): resolving against the study's folder must not change any of them.
PINNED = {"fashion-mnist.yaml": "84f4d4f9e13fd2a6", "imported-activations.yaml": "74b5f40a462f997b",
          "nightly.yaml": "c68181998efee4fd", "paper-cifar10-vgg16.yaml": "ad9563e8e4633ef0",
          "quickstart.yaml": "6ce477ac6404d03f", "tiny.yaml": "24e0fdf19e1f9e2b",
          "trajectory.yaml": "e2d94dbd08fd26f4", "custom-model/study.yaml": "96af1f925f1c191b",
          "lm-seeds.yaml": "3f795b0b9b2c0742"}  # (lm-seeds digests Debian's fortunes, as on main)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory that is neither the study's folder nor the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _copy_of_imported_example(folder: Path) -> Path:
    """The imported-activations example in ``folder``, with the authors' files it names (``./authors-activations``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_authors(folder / "authors-activations")
    return Path(shutil.copy(EXAMPLES / "imported-activations.yaml", folder))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_example_keeps_its_config_hash_from_any_directory(name, tmp_path, elsewhere):
    path = _copy_of_imported_example(tmp_path / "study") if name == "imported-activations.yaml" else EXAMPLES / name
    study = load_study(path)
    assert study.config_hash == PINNED[name]
    assert Study.from_dict(json.loads(json.dumps(study.anchored().to_dict()))).config_hash == PINNED[name]


def test_relative_paths_resolve_against_the_study_file_and_the_record_keeps_them_absolute(tmp_path, elsewhere):
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLES / "custom-model", folder)
    np.save(folder / "probe.npy", np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32))
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["store"]["uri"] = f"file://{tmp_path / 'store'}"
    data["probe"] = {"dataset": "array", "path": "probe.npy", "seed": 0, "rows": "all"}
    (folder / "study.yaml").write_text(yaml.safe_dump(data))

    study = load_study(folder / "study.yaml")  # `code: mynets`, `path: probe.npy`, from another directory
    assert study.architecture.code == f"{folder}/mynets" and study.probe.path == f"{folder}/probe.npy"
    assert study.base == str(folder)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)  # the same files in another folder: the same study
    assert load_study(moved / "study.yaml").config_hash == study.config_hash

    store = Store(str(tmp_path / "store"))
    write_study_record(study, store)
    record = store.read_json("studies/custom-model.json")["config"]
    assert record["architecture"]["code"] == f"{folder}/mynets" and record["probe"]["path"] == f"{folder}/probe.npy"
    assert Study.from_dict(record).config_hash == study.config_hash

    # a study given as text has no folder: its relative paths are the working directory's, and anchored there
    (elsewhere / "mynets").symlink_to(folder / "mynets")
    text = load_study(yaml.safe_dump({**data, "probe": {**data["probe"], "path": str(folder / "probe.npy")}}))
    assert text.base is None and text.architecture.code == "mynets"
    assert text.anchored().architecture.code == f"{elsewhere}/mynets"
    assert text.anchored().config_hash == text.config_hash == study.config_hash


def test_a_relative_path_in_the_wrong_place_names_the_study_folder(tmp_path, elsewhere):
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLES / "custom-model", folder)
    text = (folder / "study.yaml").read_text().replace("code: mynets", "code: jobs/examples/custom-model/mynets")
    (folder / "study.yaml").write_text(text)
    with pytest.raises(StudyError, match=f"architecture.code: {folder}/jobs/examples/custom-model/mynets is not a"):
        load_study(folder / "study.yaml")
    with pytest.raises(StudyError, match="base: must be an absolute folder"):
        Study.from_dict({**load_study(EXAMPLES / "tiny.yaml").to_dict(), "base": "relative/folder"})


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_paths_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_status_and_gc_plan_a_recorded_study_from_any_directory(tmp_path, elsewhere, capsys, monkeypatch):
    """Before: `cannot plan: StudyError: architecture.code: pkg/… is not a folder`, and gc deleted nothing."""
    folder = tmp_path / "project"
    shutil.copytree(EXAMPLES / "custom-model", folder)
    store_root = tmp_path / "store"
    _module(folder / "make_checkpoints.py").save_checkpoints(store_root / "checkpoints" / "custom-model",
                                                              seeds=(0, 1), steps=1)
    text = (folder / "study.yaml").read_text().replace("uri: file://./raymatch-store", f"uri: file://{store_root}")
    (folder / "study.yaml").write_text(text)
    write_study_record(load_study(folder / "study.yaml"), Store(str(store_root)))
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    assert main(["status", str(store_root)]) == 0
    out = capsys.readouterr().out
    assert "study custom-model: to do: extract 2" in out and "cannot plan" not in out
    assert main(["gc", str(store_root)]) == 0
    out = capsys.readouterr().out
    assert "cannot be planned" not in out and "nothing to delete" in out


def test_a_language_model_study_resolves_its_corpus_folder_and_text_against_the_study_file(tmp_path, elsewhere,
                                                                                           monkeypatch):
    """The same folder and the same rules for language models: a relative corpus, training folder and text probe."""
    folder = tmp_path / "lm-project"
    folder.mkdir()
    (folder / "corpus.txt").write_text("".join(f"text number {k} of the corpus\n" for k in range(40)))
    data = lm_study(f"file://{tmp_path / 'store'}", population={"training": {
        "seeds": [0, 1], "task": "causal-lm", "corpus": "corpus.txt", "steps": 5, "folder": "lms"}})
    data["probe"] = {"text": "corpus.txt", "n_examples": 4, "max_length": 16}
    (folder / "study.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    study = load_study(folder / "study.yaml")  # from `elsewhere`, which holds no corpus.txt
    spec = study.population.training.spec
    assert study.base == str(folder) and spec.corpus == f"{folder}/corpus.txt" and spec.folder == f"{folder}/lms"
    assert study.probe.to_dict()["text"] == "corpus.txt"  # read through resolve_path(study.base, …)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert load_study(moved / "study.yaml").config_hash == study.config_hash

    store = Store(str(tmp_path / "store"))
    write_study_record(study, store)
    record = store.read_json("studies/lm.json")["config"]
    assert record["base"] == str(folder) and record["population"]["training"]["corpus"] == f"{folder}/corpus.txt"
    assert Study.from_dict(record).config_hash == study.config_hash

    monkeypatch.chdir(folder)
    text = load_study(yaml.safe_dump(data))  # a text: the working directory's paths, recorded with it as base
    assert text.base is None and text.anchored().base == str(folder)
    assert text.anchored().config_hash == text.config_hash == study.config_hash
