"""jobs/examples/custom-model end to end: a factory shipped as code, DDP-saved nested checkpoints, a reused ReLU.

Results are checked against ``max_match`` on the stored activations, and the stored activations of every call of
the reused ReLU against a manual forward pass of the block.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raymatch.cli import main
from raymatch.match import max_match
from raymatch.probes import load_probe, sample_rows
from raymatch.results import load
from raymatch.store import ActivationKey, read_activations
from raymatch.study import load_study

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "custom-model"


def _example_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_custom_model_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("custom-model")
    store = root / "store"
    _example_module("make_checkpoints").save_checkpoints(store / "checkpoints" / "custom-model", seeds=(0, 1, 2),
                                                         steps=5)
    text = (EXAMPLE / "study.yaml").read_text()
    text = text.replace("uri: file://./raymatch-store", f"uri: file://{store}")
    text = text.replace("code: mynets", f"code: {EXAMPLE / 'mynets'}")
    study_file = root / "study.yaml"
    study_file.write_text(text)
    assert "mynets" not in sys.modules or EXAMPLE.as_posix() in str(sys.modules["mynets"].__file__)
    assert main(["run", str(study_file), "--quiet"]) == 0
    return load_study(study_file), store


@pytest.mark.slow
def test_every_call_of_the_reused_relu_is_a_layer(custom_run):
    study, _ = custom_run
    assert study.layer_names == ("relu", "layer1.0.relu#0", "layer1.0.relu#1", "fc")


@pytest.mark.slow
def test_results_equal_max_match_on_stored_activations(custom_run):
    study, _ = custom_run
    store = study.store.open()
    matches = load(store, "matches")
    ok = matches[matches["status"] == "ok"]
    assert len(ok) == 3 * len(study.layer_names) * len(study.eps)  # 3 pairs
    models = load(store, "models")
    assert len(set(models["model_id"])) == 3
    for row in ok.itertuples():
        A = read_activations(store, ActivationKey(study.probe.id, row.model_a, row.layer, row.repeat))
        B = read_activations(store, ActivationKey(study.probe.id, row.model_b, row.layer, row.repeat))
        expected = max_match(A.astype(np.float64), B.astype(np.float64), row.eps)
        assert row.similarity == pytest.approx(expected.similarity, abs=1e-9), (row.layer, row.eps)


@pytest.mark.slow
def test_each_call_matches_a_manual_forward(custom_run):
    study, store = custom_run
    sys.path.insert(0, str(EXAMPLE))
    try:
        from mynets import make_net
    finally:
        sys.path.remove(str(EXAMPLE))
    checkpoint = torch.load(store / "checkpoints" / "custom-model" / "seed1.pt", weights_only=True)
    net = make_net(**study.architecture.call_kwargs)
    net.load_state_dict({key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()})
    net.eval()
    images = load_probe(study.probe)
    with torch.no_grad():  # the block by hand, without hooks
        stem = torch.relu(net.bn1(net.conv1(images)))
        block = net.layer1[0]
        first = torch.relu(block.bn1(block.conv1(stem)))
        second = torch.relu(block.bn2(block.conv2(first)) + stem)
    from raymatch.models.checkpoint import model_id_of

    model_id = model_id_of((store / "checkpoints" / "custom-model" / "seed1.pt").read_bytes(),
                           study.population.checkpoint_options, architecture=study.architecture.digest)
    for layer, output in (("relu", stem), ("layer1.0.relu#0", first), ("layer1.0.relu#1", second)):
        stored = read_activations(study.store.open(), ActivationKey(study.probe.id, model_id, layer, 0))
        rows = sample_rows(study.probe, images.shape[0], output.shape[2], output.shape[3], 0)
        expected = output.permute(0, 2, 3, 1).reshape(-1, output.shape[1]).numpy()[rows]
        np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
