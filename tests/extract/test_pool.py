"""Extraction on a real local Ray cluster with two fake GPUs; Ray tasks and the moto bucket."""

from __future__ import annotations

import numpy as np
import pytest

from raymatch.engine.workers import actor_options, extract_population
from raymatch.extract import ExtractionJob
from raymatch.store import ActivationKey, read_activations

from .helpers import DIGITS, probe, put_checkpoint

# Ray actors and tasks on the session's local Ray: not in the fast tier (`pytest -m "not slow"`).
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def jobs_for(store, seeds, spec):
    return [ExtractionJob(put_checkpoint(store, seed), "small_cnn", spec, ("relu",), DIGITS, 32) for seed in seeds]


def test_one_model_per_fake_gpu_actor_falling_back_to_cpu_tensors(s3_store):
    options, capacity = actor_options(gpus_per_actor=1)
    assert options["num_gpus"] == 1 and capacity == 2
    spec = probe()
    summaries = extract_population(s3_store, jobs_for(s3_store, [0, 1], spec), gpus_per_actor=1)
    assert [s["checkpoint"] for s in summaries] == ["checkpoints/seed0.safetensors", "checkpoints/seed1.safetensors"]
    assert sorted(s["gpu_ids"][0] for s in summaries) == ["0", "1"]  # one model per "GPU"
    assert {s["device"] for s in summaries} == {"cpu"}  # no CUDA here: CPU tensors
    assert all(s["threads"] == 1 for s in summaries)
    for summary in summaries:
        for layer in summary["layers"]:
            matrix = read_activations(s3_store, ActivationKey(spec.id, summary["model_id"], layer))
            assert matrix.shape[0] >= spec.n_examples and np.isfinite(matrix).all()


def test_cpu_actors_and_a_rerun_that_skips_everything(local_store):
    spec = probe(n_examples=64)
    jobs = jobs_for(local_store, [2, 3, 4], spec)
    first = extract_population(local_store, jobs, gpus_per_actor=0)
    assert all(s["gpu_ids"] == [] and s["computed"] for s in first)
    again = extract_population(local_store, jobs, gpus_per_actor=0)
    assert all(s["computed"] == [] and s["skipped"] == s["layers"] for s in again)


def test_a_ray_task_writes_to_the_moto_bucket_with_a_pickled_store(s3_store, ray_cluster):
    @ray_cluster.remote
    def write(store, key, payload):
        store.write_bytes(key, payload)
        return store.list("from-ray")

    listed = ray_cluster.get(write.remote(s3_store, "from-ray/x.bin", b"hello"))
    assert listed == ["from-ray/x.bin"]
    assert s3_store.read_bytes("from-ray/x.bin") == b"hello"
