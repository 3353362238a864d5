"""The executor choice on a cluster of several nodes: Ray tasks, no warm actors (a lost node's tasks run again).

On the one-node test cluster the engine is told it sees two alive nodes; the real two-node cluster, with a node
killed in the middle of a run, is tests/test_two_nodes.py.
"""

from __future__ import annotations

import os

import pytest

from raymatch.engine import executors, workers
from raymatch.engine.bounded import run_bounded
from raymatch.engine.run import run_study
from raymatch.results import load
from raymatch.store import Store
from raymatch.study import Study

from .extract.helpers import put_checkpoint

pytestmark = pytest.mark.usefixtures("ray_cluster")


def study(root) -> Study:
    return Study.from_dict({
        "name": "several-nodes", "store": {"uri": f"file://{root}"},
        "population": {"glob": "checkpoints/*.safetensors"},
        "architecture": {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 60, "seed": 0, "rows": "all"},
        "layers": ["relu1", "relu3"], "eps": [0.25, 0.5], "cka": True,
        "resources": {"gpus_per_actor": 0, "pair_block": 1, "max_in_flight": 2}})


def curves(store: Store):
    table = load(store, "curves").drop(columns=["seconds", "created_at"])
    return table.sort_values(["population", "layer", "repeat", "model_a", "model_b"]).reset_index(drop=True)


@pytest.mark.slow
def test_on_several_nodes_every_stage_runs_as_ray_tasks_with_the_same_table(tmp_path, monkeypatch):
    stores = {name: Store(str(tmp_path / name)) for name in ("one", "several")}
    for store in stores.values():
        for seed in range(3):
            put_checkpoint(store, seed)
    one = run_study(study(stores["one"].root), progress=False)  # warm actors (one node)

    def no_actors(*args, **kwargs):
        raise AssertionError("warm actors started on a cluster of several nodes")

    monkeypatch.setattr(executors, "alive_nodes", lambda: ["node-a", "node-b"])
    monkeypatch.setattr(workers, "start_actors", no_actors)
    several = run_study(study(stores["several"].root), progress=False)
    for summary in (one, several):
        assert {name: (summary["stages"][name]["computed"], summary["stages"][name]["failed"])
                for name in ("extract", "factor", "match")} == {"extract": (3, 0), "factor": (6, 0), "match": (6, 0)}
    assert curves(stores["several"]).equals(curves(stores["one"]))
    assert (curves(stores["one"])["status"] == "ok").all()


def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


@pytest.mark.slow
def test_ray_tasks_take_more_options_of_their_own():
    outcomes = run_bounded(environment_variable, ["RAYMATCH_TASK_MARK"], progress=False,
                           task_options={"runtime_env": {"env_vars": {"RAYMATCH_TASK_MARK": "here"}},
                                         "scheduling_strategy": "SPREAD"})
    assert [outcome.result for outcome in outcomes] == ["here"]
