"""The standard measures on every path of the pair tasks: the batched kernel, the one-pair kernel, measures-only
tasks of either kernel, and a study whose match stage runs on GPU actors (the test cluster's fake GPUs)."""

from __future__ import annotations

import numpy as np
import pytest

from raymatch.engine.run import run_study
from raymatch.engine.tasks import block_tasks, match_task
from raymatch.results import load
from raymatch.study import Study

from .test_gpu_pairs import imported_study
from .test_pairs import all_pairs, stored_population

TABLE_MEASURES = ("cca", "svcca", "pwcca", "procrustes", "neuron_corr")


def _values(rows: dict) -> dict:
    return {(r["model_a"], r["model_b"], r["measure"]): r["value"] for r in rows["measures"]}


@pytest.mark.parametrize("curve", [True, False])
def test_the_one_pair_kernel_gives_the_batched_kernels_measures(local_store, curve):
    models = stored_population(local_store, 4, dead=True)
    rows = {}
    for kernel in ("batched", "one_pair"):
        (task,) = block_tasks("s", "h", "probe0", "relu1", 0, all_pairs(models), block=8, kernel=kernel,
                              measures=TABLE_MEASURES, curve=curve)
        rows[kernel] = match_task(local_store, task)["rows"]
    assert len(rows["batched"]["measures"]) == 6 * len(TABLE_MEASURES)
    assert all(r["status"] == "ok" for r in rows["one_pair"]["measures"])
    assert _values(rows["one_pair"]) == pytest.approx(_values(rows["batched"]), abs=1e-10)
    for mine, theirs in zip(rows["one_pair"]["neurons"], rows["batched"]["neurons"], strict=True):
        np.testing.assert_allclose(mine["correlation_a"], theirs["correlation_a"], atol=1e-10)
        assert list(mine["partner_b"]) == list(theirs["partner_b"])


@pytest.mark.slow
def test_a_study_on_gpu_actors_gives_the_measures_of_cpu_placement(ray_cluster, tmp_path):
    measures = {"measures": ["max_match", "cka", *TABLE_MEASURES]}
    on_cpu = Study.from_dict({**imported_study(tmp_path, "m-cpu").to_dict(), **measures})
    on_gpu = Study.from_dict({**imported_study(tmp_path, "m-gpu", match_gpus_per_actor=0.5).to_dict(), **measures})
    run_study(on_cpu, progress=False)
    summary = run_study(on_gpu, progress=False)
    assert summary["stages"]["match"]["devices"] == {"cpu": 5}  # on the GPU actors (computing on their CPUs)
    store = on_cpu.store.open()
    rows = {name: load(store, "measures", study=name).query("measure != 'cka'").sort_values(
        ["model_a", "model_b", "measure"]) for name in ("m-cpu", "m-gpu")}
    assert len(rows["m-gpu"]) == 10 * len(TABLE_MEASURES) and (rows["m-gpu"]["status"] == "ok").all()
    np.testing.assert_allclose(rows["m-gpu"]["value"], rows["m-cpu"]["value"], rtol=0, atol=1e-12)
    neurons = {name: load(store, "neurons", study=name) for name in ("m-cpu", "m-gpu")}
    assert len(neurons["m-gpu"]) == len(neurons["m-cpu"]) == 10 * 2 * 24
