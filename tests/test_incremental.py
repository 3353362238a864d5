"""Scheduled studies: a glob population that grows computes only what is new, and overlapping runs of one
study (a schedule and a manual run) leave no duplicate or torn rows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from raymatch.engine.planning import make_plan
from raymatch.engine.run import run_study
from raymatch.results import load, query
from raymatch.study import load_study

from .conftest import BUCKET, S3_KEY, S3_SECRET
from .extract.helpers import put_checkpoint
from .test_faults import _assert_whole_delta_tables

STUDY = """
name: nightly
store: {{uri: "{uri}"{endpoint}}}
population: {{glob: "checkpoints/seed*.safetensors"}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 100, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.25, 0.5]
pairs: all
cka: true
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""

IDENTITY = ["population", "layer", "repeat", "model_a", "model_b", "eps"]


def _assert_complete_without_duplicates(matches, n_models: int, n_layers: int = 2, n_eps: int = 2) -> None:
    pairs = n_models * (n_models - 1) // 2
    assert len(matches) == pairs * n_layers * n_eps
    assert not matches.duplicated(IDENTITY).any()
    assert set(matches["status"]) == {"ok"}


@pytest.mark.slow
def test_a_grown_population_computes_only_the_new_model_and_its_pairs(local_store, tmp_path, ray_cluster):
    for seed in range(3):
        put_checkpoint(local_store, seed)
    study_file = tmp_path / "nightly.yaml"
    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}", endpoint=""))
    study = load_study(study_file)

    first = run_study(study, progress=False)["stages"]
    assert first["extract"]["computed"] == 3 and first["match"]["computed"] == 3 * 2
    # pair_block 2: models 0 and 1 share two tasks a layer (factored once, before them); model 2 is in one task
    # a layer, which factors it itself as it reads its activations: that factor counts too (issue 26 point 9)
    assert first["factor"]["computed"] == 3 * 2
    before = load(local_store, "matches")

    put_checkpoint(local_store, 3)  # tonight's new checkpoint
    assert make_plan(study, local_store).counts()["extract"] == (3, 1)
    second = run_study(study, progress=False)["stages"]
    assert (second["extract"]["computed"], second["extract"]["skipped"]) == (1, 3)
    assert (second["factor"]["computed"], second["factor"]["skipped"]) == (2, 6)  # the new model's 2 layers
    assert (second["match"]["computed"], second["match"]["skipped"]) == (3 * 2, 3 * 2)  # its 3 pairs × 2 layers
    assert len(load(local_store, "cka")) == 6 * 2  # CKA comes with each pair's curve

    after = load(local_store, "matches")
    _assert_complete_without_duplicates(after, 4)
    new_model = (set(after["model_a"]) | set(after["model_b"])) - (set(before["model_a"]) | set(before["model_b"]))
    assert len(new_model) == 1
    recomputed = after.merge(before, on=IDENTITY, suffixes=("", "_before"))
    assert len(recomputed) == len(before)
    assert (recomputed["created_at"] == recomputed["created_at_before"]).all()  # old rows untouched
    fresh = after[~after.set_index(IDENTITY).index.isin(before.set_index(IDENTITY).index)]
    assert fresh.apply(lambda row: new_model & {row.model_a, row.model_b}, axis=1).astype(bool).all()

    runs = load(local_store, "runs")
    assert len(runs) == 2 and set(runs["status"]) == {"succeeded"}
    third = run_study(study, progress=False)["stages"]
    assert all(third[stage]["computed"] == 0 for stage in ("extract", "factor", "match", "simple"))
    # one driver at a time: each pair was computed and stored once, not only shown once
    assert len(query(local_store, "SELECT * FROM curves_raw")) == 6 * 2


@pytest.mark.slow
def test_two_overlapping_runs_on_s3_leave_no_duplicate_or_torn_rows(s3_store, moto_endpoint, tmp_path):
    """Two drivers (each with its own local Ray, as a cron run and a manual run would be) start together."""
    for seed in range(4):
        put_checkpoint(s3_store, seed)
    study_file = tmp_path / "nightly.yaml"
    study_file.write_text(STUDY.format(uri=f"s3://{BUCKET}/study", endpoint=f", endpoint_url: \"{moto_endpoint}\""))
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "RAY_TMPDIR": "/tmp"})
    barrier = threading.Barrier(2)
    results: list[subprocess.CompletedProcess] = []

    def one_run() -> None:
        barrier.wait()
        results.append(subprocess.run(
            [sys.executable, "-m", "raymatch", "run", str(study_file), "--num-cpus", "1", "--quiet"], env=env,
            capture_output=True, text=True, timeout=300, cwd=tmp_path))

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]

    matches = load(s3_store, "matches")
    _assert_complete_without_duplicates(matches, 4)
    cka = load(s3_store, "cka")
    assert len(cka) == 6 * 2 and not cka.duplicated(["population", "layer", "repeat", "model_a", "model_b"]).any()
    runs = load(s3_store, "runs")
    assert len(runs) == 2 and set(runs["status"]) == {"succeeded"}

    # Both drivers planned before either stored a pair, so each may have computed and committed every pair: the
    # stored rows hold each pair once or twice, with the same numbers, and the views above show it once.
    raw = query(s3_store, "SELECT * FROM curves_raw")
    pair = ["population", "layer", "repeat", "model_a", "model_b"]
    assert len(raw) >= 6 * 2 and raw.groupby(pair).size().max() <= 2
    print(f"\n{len(raw)} curve rows stored for 12 (pair, layer)s by 2 overlapping drivers")
    for _, copies in raw.groupby(pair):
        assert all(list(c) == list(copies["critical_a"].iloc[0]) for c in copies["critical_a"])
        assert all(list(c) == list(copies["critical_b"].iloc[0]) for c in copies["critical_b"])
        assert copies["cka"].nunique() == 1
    # every stored object is whole: each commit is newline-delimited JSON whose added files exist and read as
    # Parquet, and no compaction claim is left behind
    _assert_whole_delta_tables(s3_store)
    assert not [key for key in s3_store.list("results") if key.endswith("_raymatch_compaction.lock")]

    # a third run finds everything stored: it computes nothing and adds no row
    rerun = subprocess.run([sys.executable, "-m", "raymatch", "run", str(study_file), "--num-cpus", "1", "--quiet"],
                           env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert [line.split()[:2] for line in rerun.stdout.splitlines() if line.startswith("match ")] == [["match", "0"]]
    assert len(query(s3_store, "SELECT * FROM curves_raw")) == len(raw)


def test_planning_after_extraction_reads_manifests_in_batches_and_no_checkpoint(s3_store, moto_endpoint, tmp_path,
                                                                                 monkeypatch):
    """A later plan of a run (``known_ids``) asks the store a few batched questions, not 2 per stored matrix."""
    import numpy as np

    from raymatch.store import ActivationKey, Store
    from raymatch.store.activations import write_activations

    n_models = 5
    for seed in range(n_models):
        put_checkpoint(s3_store, seed)
    path = tmp_path / "nightly.yaml"
    path.write_text(STUDY.format(uri=s3_store.uri, endpoint=f', endpoint_url: "{moto_endpoint}"'))
    study = load_study(path)
    first = make_plan(study, s3_store)
    assert first.counts()["extract"] == (0, n_models) and not first["match"].known
    rng = np.random.default_rng(0)
    for model in first.model_ids.values():  # what extraction stores
        for layer in study.layer_names:
            write_activations(s3_store, ActivationKey(study.probe.id, model, layer),
                              rng.random((100, 6), dtype=np.float32))

    calls = {"read_bytes": [], "exists": 0, "read_many": 0}
    read_bytes, exists, read_many = Store.read_bytes, Store.exists, Store.read_many

    def counting_read_bytes(self, key):
        calls["read_bytes"].append(key)
        return read_bytes(self, key)

    def counting_exists(self, key):
        calls["exists"] += 1
        return exists(self, key)

    def counting_read_many(self, keys):
        calls["read_many"] += 1
        return read_many(self, keys)

    monkeypatch.setattr(Store, "read_bytes", counting_read_bytes)
    monkeypatch.setattr(Store, "exists", counting_exists)
    monkeypatch.setattr(Store, "read_many", counting_read_many)
    again = make_plan(study, s3_store, known_ids=first.model_ids)
    pairs = n_models * (n_models - 1) // 2
    assert again.counts()["extract"] == (n_models, 0)
    assert again.counts()["match"] == (0, pairs * len(study.layer_names))
    assert not [key for key in calls["read_bytes"] if key.startswith("checkpoints/")]  # ids known: none read
    matrices = n_models * len(study.layer_names)
    assert calls["read_many"] <= 2 and calls["exists"] + len(calls["read_bytes"]) < matrices, calls
