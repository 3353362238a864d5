"""The pair stages on GPU actors (``resources.match_gpus_per_actor``): placement on the test cluster's two fake GPUs,
the CPU fallback of a torch without CUDA, the CPU placement of a cluster without a GPU of the size asked, the rows
(the CPU's), and why the GPU actors peel in float64 (issue 23, point 2)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from raymatch.engine.executors import GpuActors, LocalActors, choose_executors
from raymatch.engine.planning import make_plan
from raymatch.engine.run import run_study
from raymatch.engine.stages import stage_named
from raymatch.engine.workers import gpu_actor_options
from raymatch.match import exact_tolerance, factor, match_curves
from raymatch.match.synthetic import relu_pair
from raymatch.results import load
from raymatch.study import Study
from tests.match.test_curve_degenerate import make_pair

MODELS = [f"net{i}" for i in range(5)]


def imported_study(root, name: str, **resources) -> Study:
    """Five imported models of one 24-neuron layer over 300 rows (pairs of planted shared parts and noise)."""
    acts = root / "acts"
    if not acts.exists():
        rng = np.random.default_rng(3)
        for i, model in enumerate(MODELS):
            layer = relu_pair(300, 24, 24, seed=40, shared_fraction=0.5)[i % 2]
            (acts / model).mkdir(parents=True)
            np.save(acts / model / "head.npy",
                    (layer + 0.05 * np.maximum(rng.standard_normal(layer.shape), 0)).astype(np.float32))
    return Study.from_dict({
        "name": name, "store": {"uri": f"file://{root / 'store'}"},
        "population": {"activations": {"layout": "npy", "path": str(acts / "{model}" / "{layer}.npy"),
                                       "models": MODELS}},
        "layers": ["head"], "eps": [0.25], "resources": {"gpus_per_actor": 0, "pair_block": 2, **resources}})


def test_gpu_actors_are_bounded_by_the_gpus_and_the_cpus(ray_cluster):  # 2 CPUs, 2 fake GPUs
    assert gpu_actor_options(gpus_per_actor=1) == ({"num_gpus": 1, "num_cpus": 1}, 2)
    assert gpu_actor_options(gpus_per_actor=0.25)[1] == 2  # 8 quarters of a GPU, but 2 CPUs
    assert gpu_actor_options(gpus_per_actor=0.5, cpus_per_actor=2)[1] == 1
    assert gpu_actor_options(gpus_per_actor=3) == ({}, 0)
    assert gpu_actor_options(gpus_per_actor=0) == ({}, 0)


@pytest.mark.slow
def test_match_tasks_land_on_gpu_actors(ray_cluster, tmp_path, caplog):
    study = imported_study(tmp_path, "on-gpu", match_gpus_per_actor=0.5)
    store = study.store.open()
    chosen = choose_executors(study, store, progress=False)
    try:
        curves = chosen.by_role["curves"]
        assert isinstance(curves, GpuActors) and curves.capacity == 2  # 4 halves of the 2 GPUs; 2 CPUs
        assert isinstance(chosen.by_role["pairs"], LocalActors)  # simple matches: CPU work, the warm CPU actors
        chosen.by_role["extraction"].run(stage_named("extract"), make_plan(study, store)["extract"].tasks)
        tasks = make_plan(study, store)["match"].tasks
        with caplog.at_level(logging.WARNING, logger="raymatch"):
            outcomes = chosen.run(stage_named("match"), tasks)
    finally:
        chosen.close()
    assert outcomes and all(outcome.ok for outcome in outcomes)
    assert all(outcome.result["gpu_ids"] and set(outcome.result["gpu_ids"]) <= {"0", "1"} for outcome in outcomes)
    assert len({outcome.result["pid"] for outcome in outcomes}) == 2  # both actors (Ray packs halves on one GPU)
    assert {outcome.result["device"] for outcome in outcomes} == {"cpu"}  # a CPU-only torch: computed on the CPU
    (warning,) = [r.getMessage() for r in caplog.records if "match_gpus_per_actor" in r.getMessage()]
    assert "sees no CUDA device" in warning and f"{torch.__version__} (no CUDA)" in warning


@pytest.mark.slow
def test_a_study_on_gpu_actors_gives_the_rows_of_cpu_placement(ray_cluster, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="raymatch"):
        on_cpu = run_study(imported_study(tmp_path, "on-cpu"), progress=False)
    assert not any("match_gpus_per_actor" in r.getMessage() for r in caplog.records)
    assert "devices" not in on_cpu["stages"]["match"]  # the warm CPU actors, as before
    on_gpu = run_study(imported_study(tmp_path, "on-gpu", match_gpus_per_actor=0.5), progress=False)
    n_pairs = len(MODELS) * (len(MODELS) - 1) // 2
    match = on_gpu["stages"]["match"]  # 5 models in blocks of 2: 5 tasks, each on a GPU actor (computing on its CPU)
    assert (match["computed"], match["tasks"], match["devices"]) == (n_pairs, 5, {"cpu": 5})
    store = imported_study(tmp_path, "on-cpu").store.open()
    rows = {study: load(store, "curves", study=study).sort_values(["model_a", "model_b"]) for study in
            ("on-cpu", "on-gpu")}
    assert len(rows["on-gpu"]) == n_pairs and (rows["on-gpu"]["status"] == "ok").all()
    for column in ("critical_a", "critical_b"):
        for mine, theirs in zip(rows["on-gpu"][column], rows["on-cpu"][column], strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rows["on-gpu"]["cka"], rows["on-cpu"]["cka"], rtol=0, atol=1e-12)


def test_no_gpu_of_the_size_asked_keeps_the_cpu_placement_with_one_warning(ray_cluster, tmp_path, caplog):
    study = imported_study(tmp_path, "too-big", match_gpus_per_actor=3)  # the cluster has 2 GPUs
    with caplog.at_level(logging.WARNING, logger="raymatch"):
        chosen = choose_executors(study, study.store.open(), progress=False)
    assert chosen.by_role["curves"] is chosen.by_role["pairs"] and isinstance(chosen.by_role["pairs"], LocalActors)
    assert [r.getMessage() for r in caplog.records] == [
        "the cluster has no GPU for resources.match_gpus_per_actor = 3: the factor, match and cross stages run on "
        "CPUs"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raymatch"):
        default = choose_executors(imported_study(tmp_path, "default"), study.store.open(), progress=False)
    assert default.by_role["curves"] is default.by_role["pairs"] and not caplog.records  # 0: today's placement
    chosen.close(), default.close()


def test_a_float32_peel_changes_a_set_so_gpu_actors_peel_in_float64():
    """Low-rank float32 layers: a float32 peel (float64 cross products and set-up) moves a critical ε by about 3e-5,
    so the maximum match at an ε between the two values differs from float64's. The GPU actors peel in float64,
    whose rows are the CPU's to rounding (``tests/match/test_batched_kernel.py::test_cuda_gives_the_cpu_curves``)."""
    layers = [layer for seed in range(3) for layer in make_pair("low rank float32", seed)]
    factors = [factor(layer) for layer in layers]
    pairs = [(factors[i], factors[j]) for i in range(len(factors)) for j in range(i + 1, len(factors))]
    tol = exact_tolerance(np.float32)
    double = match_curves(pairs, exact_tol=tol)
    single = match_curves(pairs, exact_tol=tol, dtype=torch.float32)
    moves = []
    for p, (s, d) in enumerate(zip(single, double, strict=True)):
        for side in ("a", "b"):
            mine, theirs = getattr(s, f"critical_{side}"), getattr(d, f"critical_{side}")
            for i in np.flatnonzero(np.isfinite(theirs)):
                moves.append((abs(mine[i] - theirs[i]), p, side, i, (mine[i] + theirs[i]) / 2))
    moved, p, side, i, eps = max(moves)
    assert moved > 1e-5 and eps > tol
    sets = [getattr(curve[p].at(eps), side).tolist() for curve in (single, double)]
    assert sets[0] != sets[1] and (i in sets[0]) != (i in sets[1])  # neuron i is in one maximum match only


def test_bad_resources_name_their_fields(tmp_path):
    from raymatch.study import StudyError

    with pytest.raises(StudyError) as raised:
        imported_study(tmp_path, "bad", match_gpus_per_actor=-1, match_kernel="fast")
    message = str(raised.value)
    assert "resources.match_gpus_per_actor: must be" in message and "got -1" in message
    assert "resources.match_kernel: must be one of batched, one_pair; got 'fast'" in message
