"""Extraction without Ray: what is stored equals the layer outputs, rows are shared across models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raymatch.extract import ExtractionJob, extract_model, run_job
from raymatch.models import CheckpointError, checkpoint_bytes
from raymatch.probes import load_probe, sample_rows
from raymatch.store import ActivationKey, read_activations, read_manifest

from .helpers import DIGITS, digits_model, probe, put_checkpoint, sampled_probe


def layer_outputs(model, images, names):
    """Reference: every chosen layer's full output, captured with cloning hooks in one pass."""
    outputs, modules = {}, dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o.detach().clone()))
               for n in names]
    with torch.no_grad():
        model.eval()(images)
    for handle in handles:
        handle.remove()
    return outputs


def as_rows(output):
    """(N, C, H, W) → (N·H·W, C) rows in (image, y, x) order; (N, F) unchanged."""
    if output.ndim == 2:
        return output.numpy()
    return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1]).numpy()


def test_stored_activations_equal_the_layer_outputs(store):
    key = put_checkpoint(store, 0)
    spec = probe()
    summary = run_job(store, ExtractionJob(key, "small_cnn", spec, ("relu", "conv1"), DIGITS, batch_size=40))
    model = digits_model(0)
    reference = layer_outputs(model, load_probe(spec), summary["layers"])
    assert summary["layers"][0] == "conv1" and len(summary["layers"]) >= 3
    for layer in summary["layers"]:
        stored = read_activations(store, ActivationKey(spec.id, summary["model_id"], layer))
        np.testing.assert_allclose(stored, as_rows(reference[layer]), rtol=1e-6, atol=1e-6)


def test_sampled_rows_are_the_probes_rows_for_every_model(local_store):
    spec = sampled_probe(rows=300, repeats=2)
    keys = [put_checkpoint(local_store, seed) for seed in (0, 1)]
    images = load_probe(spec)
    digests = []
    for seed, key in zip((0, 1), keys, strict=True):
        summary = run_job(local_store, ExtractionJob(key, "small_cnn", spec, ("conv1", "fc1"), DIGITS, 32))
        outputs = layer_outputs(digits_model(seed), images, ["conv1", "fc1"])
        conv = outputs["conv1"]
        n, _, h, w = conv.shape
        for repeat in range(2):
            stored = read_activations(local_store, ActivationKey(spec.id, summary["model_id"], "conv1", repeat))
            flat = sample_rows(spec, n, h, w, repeat)
            np.testing.assert_allclose(stored, as_rows(conv)[flat], rtol=1e-6, atol=1e-6)
            manifest = read_manifest(local_store, ActivationKey(spec.id, summary["model_id"], "conv1", repeat))
            digests.append((repeat, manifest["row_policy"]["rows_sha256"]))
        # a linear layer keeps all its rows (one per image) and has one repeat
        fc = read_activations(local_store, ActivationKey(spec.id, summary["model_id"], "fc1", 0))
        np.testing.assert_allclose(fc, outputs["fc1"].numpy(), rtol=1e-6, atol=1e-6)
    assert dict(digests[:2]) == dict(digests[2:])  # identical (image, position) rows for both models
    assert digests[0][1] != digests[1][1]  # and different rows across repeats


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu2(self.fc(self.relu(self.conv(x)).flatten(1)))


def test_in_place_relus_do_not_corrupt_what_is_captured(local_store):
    torch.manual_seed(0)
    model = InPlace()
    images = torch.randn(20, 1, 8, 8)
    spec = probe(n_examples=20)
    extract_model(local_store, model, "inplace0", images, spec, ["conv", "relu", "fc", "relu2"], batch_size=8)
    with torch.no_grad():
        conv = model.conv(images)
        fc = model.fc(torch.relu(conv).flatten(1))
    read = {n: read_activations(local_store, ActivationKey(spec.id, "inplace0", n)) for n in
            ["conv", "relu", "fc", "relu2"]}
    assert (read["conv"] < 0).any() and (read["fc"] < 0).any()  # pre-activation values survive
    np.testing.assert_allclose(read["conv"], as_rows(conv), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(read["relu"], as_rows(torch.relu(conv)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(read["fc"], fc.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(read["relu2"], torch.relu(fc).numpy(), rtol=1e-6, atol=1e-6)


def test_what_is_stored_is_skipped(local_store):
    key = put_checkpoint(local_store, 3)
    job = ExtractionJob(key, "small_cnn", probe(), ("relu",), DIGITS)
    first = run_job(local_store, job)
    before = local_store.list("activations")
    second = run_job(local_store, job)
    assert first["computed"] == first["layers"] and first["skipped"] == []
    assert second["computed"] == [] and second["skipped"] == first["layers"]
    assert local_store.list("activations") == before


def test_non_finite_activations_name_model_and_layer_and_write_nothing(local_store):
    model = digits_model(4)
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    key = "checkpoints/broken.safetensors"
    local_store.write_bytes(key, checkpoint_bytes(model))
    with pytest.raises(ValueError, match=r"activations of model [0-9a-f]{16}, layer relu2 have \d+ non-finite"):
        run_job(local_store, ExtractionJob(key, "small_cnn", probe(), ("relu",), DIGITS, batch_size=16))
    assert local_store.list("activations") == []


def test_bad_jobs_fail_with_one_clear_error_and_write_nothing(local_store):
    key = put_checkpoint(local_store, 5)
    with pytest.raises(ValueError, match=r"unknown layer 'features.99'"):
        run_job(local_store, ExtractionJob(key, "small_cnn", probe(), ("features.99",), DIGITS))
    with pytest.raises(CheckpointError, match="does not fit"):
        run_job(local_store, ExtractionJob(key, "small_cnn", probe(), ("relu",), {**DIGITS, "width": 1.0}))
    with pytest.raises(FileNotFoundError, match=r"checkpoints/nope\.safetensors"):
        run_job(local_store, ExtractionJob("checkpoints/nope.safetensors", "small_cnn", probe(), ("relu",), DIGITS))
    local_store.write_bytes("checkpoints/corrupt.safetensors", b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        run_job(local_store, ExtractionJob("checkpoints/corrupt.safetensors", "small_cnn", probe(), ("relu",), DIGITS))
    with pytest.raises(ValueError, match="probe asks for 5000 examples"):
        run_job(local_store, ExtractionJob(key, "small_cnn", probe(n_examples=5000), ("relu",), DIGITS))
    with pytest.raises(ValueError, match=r"probe asks for 10000000 rows but a layer of 96 images"):
        run_job(local_store, ExtractionJob(key, "small_cnn", sampled_probe(rows=10**7), ("conv1",), DIGITS))
    assert local_store.list("activations") == []
