"""End to end on a real local Ray cluster: a tiny study runs, is queryable, and a rerun is free."""

from __future__ import annotations

import json

import numpy as np
import pytest

import raymatch
from raymatch.cli import main
from raymatch.results import load
from raymatch.store import ActivationKey, read_activations

from .extract.helpers import put_checkpoint

STUDY = """
name: tiny-e2e
store: {{uri: "{uri}"}}
population:
  checkpoints: [checkpoints/seed0.safetensors, checkpoints/seed1.safetensors, checkpoints/seed2.safetensors]
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 120, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.15, 0.25, 0.5]
pairs: all
simple_matches: {{enabled: true, eps: [0.5], layers: [relu3], max_neurons: 64}}
cka: true
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_study_runs_is_queryable_and_a_rerun_computes_nothing(local_store, tmp_path, capsys):
    for seed in range(3):
        put_checkpoint(local_store, seed)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}"))

    assert main(["plan", str(study_file)]) == 0
    assert "extract       0      3" in capsys.readouterr().out

    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "extract          3        0       0" in out

    table = load(local_store, "matches")
    assert len(table) == 3 * 2 * 3  # pairs × layers × ε
    assert set(table["status"]) == {"ok"}
    # the table's numbers are max_match on the stored activations
    for row in table.itertuples():
        A = read_activations(local_store, ActivationKey(_probe_id(table, local_store), row.model_a, row.layer))
        B = read_activations(local_store, ActivationKey(_probe_id(table, local_store), row.model_b, row.layer))
        want = raymatch.max_match(A, B, row.eps)
        assert list(row.neurons_a) == want.a.tolist() and list(row.neurons_b) == want.b.tolist()
        assert row.similarity == pytest.approx(want.similarity)

    # simple matches: each is a match inside the maximum match of its pair, and they cover it
    simple = load(local_store, "simple_matches")
    assert set(simple["layer"]) == {"relu3"} and set(simple["eps"]) == {0.5}
    for (a, b), group in simple.groupby(["model_a", "model_b"]):
        whole = table[(table.model_a == a) & (table.model_b == b) & (table.layer == "relu3") & (table.eps == 0.5)]
        (whole_a,), (whole_b,) = whole["neurons_a"].tolist(), whole["neurons_b"].tolist()
        union_a = sorted({int(n) for ns in group["neurons_a"] for n in ns})
        union_b = sorted({int(n) for ns in group["neurons_b"] for n in ns})
        assert union_a == sorted(whole_a) and union_b == sorted(whole_b)
    cka = load(local_store, "cka")
    assert len(cka) == 3 * 2 and cka["cka"].between(0, 1).all()

    assert main(["query", local_store.root, "SELECT layer, eps, count(*) AS pairs FROM matches "
                 "GROUP BY layer, eps ORDER BY layer, eps", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all(r["pairs"] == 3 for r in rows)

    def computed_results():
        return sorted(key for key in local_store.list("results") if not key.startswith("results/runs/"))

    before = computed_results()
    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "extract          0        3       0" in out and "match            0        6" in out
    assert "factor           0        6       0" in out  # 3 models × 2 layers, factored once in the first run
    assert "simple           0 " in out  # CKA comes with the match: no stage of its own
    assert computed_results() == before

    # every run is recorded: the first computed, the second only skipped
    runs = load(local_store, "runs").sort_values("started_at")
    assert runs["status"].tolist() == ["succeeded", "succeeded"] and runs["ended_at"].notna().all()
    assert runs["computed"].tolist()[1] == 0 and runs["computed"].tolist()[0] > 0
    assert json.loads(runs["stages"].iloc[1])["match"] == {"computed": 0, "skipped": 6, "failed": 0,
                                                          "seconds": pytest.approx(0, abs=5)}
    assert main(["status", local_store.root]) == 0
    status_out = capsys.readouterr().out
    assert "study tiny-e2e: complete" in status_out and status_out.count("succeeded") == 2

    assert main(["plan", str(study_file)]) == 0
    plan_out = capsys.readouterr().out
    assert "extract       3      0" in plan_out and "match" in plan_out


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_any_eps_is_a_query_and_a_new_grid_recomputes_nothing(local_store, tmp_path, capsys):
    """``matches_at(ε)`` at ε off the grid equals ``max_match`` on the stored activations, computed here with
    plain code; editing the study's ε grid recomputes nothing and ``matches`` follows the new grid."""
    for seed in range(3):
        put_checkpoint(local_store, seed)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}"))
    assert main(["run", str(study_file), "--quiet"]) == 0
    capsys.readouterr()
    probe = _probe_id(None, local_store)
    activations = {}
    for eps in (0.0, 0.07, 0.22, 0.3333, 0.61, 1.0):
        rows = load(local_store, "matches", eps=eps)
        assert len(rows) == 3 * 2 and set(rows["eps"]) == {eps}
        for row in rows.itertuples():
            pair = [activations.setdefault((model, row.layer), read_activations(
                local_store, ActivationKey(probe, model, row.layer))) for model in (row.model_a, row.model_b)]
            want = raymatch.max_match(*pair, eps)
            assert list(row.neurons_a) == want.a.tolist() and list(row.neurons_b) == want.b.tolist(), (eps, row)
            assert row.similarity == pytest.approx(want.similarity)

    study_file.write_text(STUDY.format(uri=f"file://{local_store.root}").replace(
        "eps: [0.15, 0.25, 0.5]", "eps: [0.1, 0.22, 0.25, 0.4]"))
    assert main(["run", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "match            0        6" in out  # 3 pairs × 2 layers: all stored, none computed
    assert "ε=0.22" in out and "ε=0.15" not in out  # the printed table is the new grid
    assert sorted(set(load(local_store, "matches")["eps"])) == [0.1, 0.22, 0.25, 0.4]


def _probe_id(table, store):
    (probe,) = {key.split("/")[1] for key in store.list("activations")}
    return probe


def test_a_bad_study_file_lists_every_problem_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\neps: [2]\nfrobnicate: 1\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "problem(s)" in err and "eps[0]" in err and "frobnicate" in err and "Traceback" not in err
    assert np.all([line.startswith(("raymatch: error", "  ")) for line in err.strip().splitlines()])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_pipeline_benchmark_smoke():
    from raymatch.bench import bench_pipeline

    (row,) = bench_pipeline((3,), 100)
    assert row["models"] == 3 and row["pairs"] == 3 and row["tasks"] >= 1
    assert row["wall"] > 0 and row["in_task"] > 0


def test_ideal_wall_is_a_lower_bound_of_two_cpu_schedules():
    from raymatch.bench import ideal_wall

    assert ideal_wall([1.0, 1.0, 1.0]) == 2.0  # three equal tasks on two CPUs: two share one
    assert ideal_wall([4.0, 1.0, 1.0]) == 4.0  # the longest task
    assert ideal_wall([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == 3.0  # spread evenly
    assert ideal_wall([0.5]) == 0.5
