"""A transformer-style user model through ``raymatch run``: (N, T, D) outputs with ``neurons: last``, a tuple output
(``nn.MultiheadAttention``) with ``output: 0``, from a factory whose package only the ``code`` folder provides.

Results are checked against ``max_match`` on the stored activations (float64), and the stored activations against
a manual forward pass.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml

from raymatch.cli import main
from raymatch.match import max_match
from raymatch.models import save_checkpoint
from raymatch.probes import load_probe, sample_rows
from raymatch.results import load
from raymatch.store import ActivationKey, read_activations
from raymatch.study import load_study

from .user_nets import write_package

PACKAGE = "rm_tx_nets"  # a name nothing else provides: the workers can import it only from `code`


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("transformer")
    code = write_package(root / "code", PACKAGE)
    store = root / "store"
    (store / "checkpoints").mkdir(parents=True)
    sys.path.insert(0, str(root / "code"))
    try:
        from rm_tx_nets import make_seq
    finally:
        sys.path.remove(str(root / "code"))
    models = {}
    for seed in range(3):
        torch.manual_seed(seed)
        models[seed] = make_seq(dim=12)
        save_checkpoint(models[seed], store / "checkpoints" / f"seed{seed}.safetensors")
    study = {
        "name": "transformer",
        "store": {"uri": f"file://{store}"},
        "population": {"glob": "checkpoints/*.safetensors"},
        "architecture": {"factory": f"{PACKAGE}:make_seq", "kwargs": {"dim": 12}, "code": str(code)},
        "probe": {"dataset": "digits", "split": "test", "n_examples": 60, "seed": 0,
                  "rows": {"rows": 200, "repeats": 1, "seed": 1}},
        "layers": [{"select": "embed", "neurons": "last"}, {"select": "attn", "output": 0, "neurons": "last"},
                   {"select": "encoder.layers.?", "neurons": "last"}, "fc"],
        "eps": [0.2, 0.5],
        "cka": False,
        "resources": {"gpus_per_actor": 0, "max_in_flight": 2},
    }
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump(study, sort_keys=False))
    assert main(["run", str(study_file), "--quiet"]) == 0
    return load_study(study_file), models


@pytest.mark.slow
def test_layers_and_their_shapes(transformer_run):
    study, _ = transformer_run
    assert study.layer_names == ("embed", "attn", "encoder.layers.0", "fc")
    store = study.store.open()
    model = load(store, "models")["model_id"].iloc[0]
    for layer, rows in (("embed", 200), ("attn", 200), ("encoder.layers.0", 200), ("fc", 60)):
        assert read_activations(store, ActivationKey(study.probe.id, model, layer, 0)).shape == (rows, 12 if
                                                                                                 layer != "fc" else 10)


@pytest.mark.slow
def test_results_equal_max_match_on_stored_activations(transformer_run):
    study, _ = transformer_run
    store = study.store.open()
    ok = load(store, "matches").query("status == 'ok'")
    assert len(ok) == 3 * 4 * 2
    for row in ok.itertuples():
        A = read_activations(store, ActivationKey(study.probe.id, row.model_a, row.layer, row.repeat))
        B = read_activations(store, ActivationKey(study.probe.id, row.model_b, row.layer, row.repeat))
        assert row.similarity == pytest.approx(max_match(A.astype(np.float64), B.astype(np.float64),
                                                         row.eps).similarity, abs=1e-9), (row.layer, row.eps)


@pytest.mark.slow
def test_stored_tokens_are_the_forward_pass_rows(transformer_run):
    study, models = transformer_run
    store = study.store.open()
    from raymatch.models import checkpoint_bytes
    from raymatch.models.checkpoint import model_id_of

    model = models[2].eval()
    images = load_probe(study.probe)
    with torch.no_grad():
        tokens = model.embed(images.reshape(images.shape[0], 8, 8))  # (N, T, D)
        mixed = model.attn(tokens, tokens, tokens)[0]
    model_id = model_id_of(checkpoint_bytes(model), architecture=study.architecture.digest)
    for layer, output in (("embed", tokens), ("attn", mixed)):
        rows = sample_rows(study.probe, images.shape[0], output.shape[1], 1, 0)  # rows (example, token)
        expected = output.reshape(-1, output.shape[2]).numpy()[rows]
        stored = read_activations(store, ActivationKey(study.probe.id, model_id, layer, 0))
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
