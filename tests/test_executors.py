"""The executors of a run, picked once from the cluster: warm actors on one CPU node, Ray tasks on several nodes
or beside GPU extraction actors, this process for imported activations; and the engine's import arrows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from raymatch.engine import executors
from raymatch.engine.executors import (
    DriverImport,
    GpuExtraction,
    LocalActors,
    RayTasks,
    Training,
    choose_executors,
)
from raymatch.engine.stages import EXECUTORS, STAGES
from raymatch.store import Store
from raymatch.study import Study


def study(root, gpus: float) -> Study:
    return Study.from_dict({
        "name": "executors", "store": {"uri": f"file://{root}"},
        "population": {"glob": "checkpoints/*.safetensors"},
        "architecture": {"name": "small_cnn", "in_channels": 1, "num_classes": 10, "width": 0.5, "input_size": 8},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 60, "seed": 0, "rows": "all"},
        "layers": ["relu1"], "eps": [0.5], "resources": {"gpus_per_actor": gpus, "max_in_flight": 3}})


@pytest.mark.usefixtures("ray_cluster")  # one node, 2 CPUs and 2 (fake) GPUs
@pytest.mark.parametrize(("gpus", "nodes", "extraction", "pairs", "spread"), [
    (0, 1, LocalActors, LocalActors, False),
    (1, 1, GpuExtraction, RayTasks, False),
    (0, 2, RayTasks, RayTasks, True),
    (1, 2, GpuExtraction, RayTasks, True),
])
def test_the_cluster_picks_the_executors_once(tmp_path, monkeypatch, gpus, nodes, extraction, pairs, spread):
    monkeypatch.setattr(executors, "alive_nodes", lambda: [f"node-{i}" for i in range(nodes)])
    chosen = choose_executors(study(tmp_path, gpus), Store(str(tmp_path)), progress=False)
    roles = chosen.by_role
    assert set(roles) == set(EXECUTORS)
    assert (type(roles["extraction"]), type(roles["pairs"]), type(roles["training"])) == (extraction, pairs, Training)
    if pairs is LocalActors:  # one pool of warm actors for extraction and the pair stages, started when first used
        assert roles["extraction"].pool is roles["pairs"].pool and roles["pairs"].pool.actors is None
        assert (roles["extraction"].max_in_flight, roles["pairs"].max_in_flight) == (2, 3)
    else:
        assert roles["pairs"].spread is spread and roles["pairs"].code is False
        assert roles["pairs"].task_options() == ({"scheduling_strategy": "SPREAD"} if spread else {})
    if extraction is RayTasks:  # CPU extraction on several nodes: spread, with the model's code
        assert roles["extraction"].spread and roles["extraction"].code and roles["extraction"].max_in_flight == 2
    assert roles["training"].gpus_per_task() == gpus
    chosen.close()  # nothing was started: nothing to stop


@pytest.mark.usefixtures("ray_cluster")
def test_imported_activations_are_extracted_by_the_driver(tmp_path):
    for model in ("net_a", "net_b"):
        (tmp_path / "acts" / model).mkdir(parents=True)
        np.save(tmp_path / "acts" / model / "head.npy", np.ones((20, 3), dtype=np.float32))
    imported = Study.from_dict({
        "name": "imported", "store": {"uri": f"file://{tmp_path / 'store'}"},
        "population": {"activations": {"layout": "npy", "path": str(tmp_path / "acts" / "{model}" / "{layer}.npy"),
                                       "models": ["net_a", "net_b"]}},
        "layers": ["head"], "eps": [0.25], "resources": {"gpus_per_actor": 0}})
    chosen = choose_executors(imported, Store(str(tmp_path / "store")), progress=False)
    assert isinstance(chosen.by_role["extraction"], DriverImport)
    assert isinstance(chosen.by_role["pairs"], LocalActors)


def test_every_stage_reads_only_stages_before_it_and_names_a_known_executor():
    names = [stage.name for stage in STAGES]
    assert names == ["train", "extract", "factor", "match", "simple", "cross"]
    for index, stage in enumerate(STAGES):
        assert stage.executor in EXECUTORS
        assert set(stage.reads) <= set(names[:index]), stage.name
        assert (stage.task is None) == (stage.executor == "training"), stage.name


def _imported_after(statement: str) -> set[str]:
    code = (f"import sys; {statement}; "
            "print(' '.join(sorted({name.split('.')[0] for name in sys.modules} | "
            "{name for name in sys.modules if name.startswith('raymatch.')})))")
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def test_the_stage_modules_and_the_planner_import_no_torch_and_no_ray():
    """A cold Ray worker imports a stage's module for its task body (the cross stage's, say): no torch there."""
    loaded = _imported_after("import raymatch.engine.stages.cross, raymatch.engine.planning")
    assert not loaded & {"torch", "ray"}


def test_training_imports_neither_ray_nor_the_engine():
    loaded = _imported_after("import raymatch.train, raymatch.train.population")
    assert "ray" not in loaded and not {name for name in loaded if name.startswith("raymatch.engine")}
