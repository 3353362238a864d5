"""Extraction on Ray: an actor pool, one GPU per actor where the cluster has GPUs, CPU otherwise."""

from __future__ import annotations

import os

import ray
import torch
from ray.util import ActorPool

from ..store import Store
from .extractor import ExtractionJob, run_job


@ray.remote(max_restarts=2, max_task_retries=2)
class ExtractionActor:
    """Loads each model once, runs the probe, writes the activations; probes are cached per actor."""

    def __init__(self, store: Store, threads: int):
        torch.set_num_threads(threads)  # a reused worker keeps its first setting otherwise
        self.store = store
        gpu_ids = ray.get_gpu_ids()
        self.gpu_ids = [str(i) for i in gpu_ids]
        self.device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
        self._probes: dict[str, torch.Tensor] = {}

    def describe(self) -> dict:
        return {"pid": os.getpid(), "gpu_ids": self.gpu_ids, "device": self.device,
                "threads": torch.get_num_threads()}

    def run_task(self, fn, *args):
        """Run a pair task (``fn(*args)``) in this warm process: (result, seconds); see ``run_bounded``."""
        from ..runner import timed

        return timed(fn, *args)

    def run_indexed(self, index: int, job: ExtractionJob) -> tuple[int, dict]:
        return index, self.run(job)

    def run(self, job: ExtractionJob) -> dict:
        from ..probes import load_probe

        if job.probe.id not in self._probes:
            self._probes = {job.probe.id: load_probe(job.probe)}  # keep one probe: they can be large
        summary = run_job(self.store, job, device=self.device, images=self._probes[job.probe.id])
        return {**summary, **self.describe()}


def actor_options(*, gpus_per_actor: float = 1.0, cpus_per_actor: int = 1) -> tuple[dict, int]:
    """Resources for each actor and how many actors the cluster holds at once."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if gpus_per_actor > 0 and gpus >= gpus_per_actor:
        return {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}, int(gpus // gpus_per_actor)
    return {"num_cpus": cpus_per_actor}, max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def start_actors(store: Store, n_actors: int, *, gpus_per_actor: float = 1.0, cpus_per_actor: int = 1) -> list:
    """Up to ``n_actors`` extraction actors (as many as the cluster holds at once); kill them when done."""
    options, capacity = actor_options(gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor)
    return [ExtractionActor.options(**options).remote(store, cpus_per_actor)
            for _ in range(max(1, min(n_actors, capacity)))]


def extract_population(store: Store, jobs: list[ExtractionJob], *, gpus_per_actor: float = 1.0,
                       cpus_per_actor: int = 1, max_actors: int | None = None,
                       progress: bool | None = None, actors: list | None = None) -> list[dict]:
    """Extract every job's activations on the connected Ray cluster; summaries in job order.

    ``progress`` shows done / total / ETA on the driver (a bar on a terminal, periodic lines otherwise).
    ``actors`` (from :func:`start_actors`) are used instead of a pool of new ones, and left running.
    """
    from ..runner import Progress

    if not jobs:
        return []
    own = actors is None
    if own:
        capacity = actor_options(gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor)[1]
        actors = start_actors(store, min(len(jobs), max_actors or capacity), gpus_per_actor=gpus_per_actor,
                              cpus_per_actor=cpus_per_actor)
    try:
        pool = ActorPool(actors)
        indexed = list(enumerate(jobs))
        reporter = Progress(len(jobs), "extract", progress)
        results = []
        for result in pool.map_unordered(lambda actor, item: actor.run_indexed.remote(*item), indexed):
            results.append(result)
            reporter.step()
        reporter.close()
        return [summary for _, summary in sorted(results, key=lambda pair: pair[0])]
    finally:
        if own:
            for actor in actors:
                ray.kill(actor)
