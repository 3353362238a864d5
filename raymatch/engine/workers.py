"""Warm worker actors: extraction on a GPU where the cluster has GPUs, and every stage's tasks on one CPU node.

A :class:`WorkerActor` is a long-lived Ray actor that runs task bodies (``fn(*args)``) in its own process, so
that libraries, the store client and the loaded probe stay warm from one task to the next. On a cluster with
GPUs, GPU actors run the extraction, and — with ``resources.match_gpus_per_actor`` — the factor, match and cross
stages (:func:`on_device`); on a one-node CPU cluster one pool of CPU actors runs every stage after training. On
several nodes the CPU stages run as Ray tasks instead (a lost node's actor would wait for a free CPU; see
:mod:`raymatch.engine.executors`).
"""

from __future__ import annotations

import os

import ray
import torch

from ..extract.extractor import ExtractionJob, run_job
from ..extract.tokens import TokenExtractionJob, run_token_job
from ..store import Store

#: The probe loaded last in this worker process (probes can be large: one is kept).
_PROBE: dict[str, torch.Tensor] = {}


@ray.remote(max_restarts=2, max_task_retries=2)
class WorkerActor:
    """A warm process that runs task bodies one after another; see :func:`~raymatch.engine.bounded.run_bounded`.

    Parameters
    ----------
    threads : int
        torch threads of this process (a reused worker keeps its first setting otherwise).
    """

    def __init__(self, threads: int):
        torch.set_num_threads(threads)

    def describe(self) -> dict:
        """The process id, GPU ids, device and torch threads of this actor."""
        return _where()

    def run_task(self, fn, *args):
        """``(fn(*args), seconds)`` run in this warm process."""
        from .bounded import timed

        return timed(fn, *args)


def worker_device() -> str:
    """``'cuda'`` in a worker that Ray gave a GPU (and torch can use it), else ``'cpu'``."""
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def extract_job(store: Store, job: ExtractionJob | TokenExtractionJob) -> dict:
    """Task body of the extraction stage: one model's activations, the probe kept loaded between calls.

    A language model's job (:class:`~raymatch.extract.tokens.TokenExtractionJob`) carries its tokenised probe and
    runs :func:`~raymatch.extract.tokens.run_token_job`.

    Returns
    -------
    dict
        :func:`~raymatch.extract.run_job`'s summary plus where it ran (pid, GPU ids, device, threads).
    """
    from ..probes import load_probe

    if isinstance(job, TokenExtractionJob):
        return {**run_token_job(store, job, device=worker_device()), **_where()}

    if job.probe.id not in _PROBE:
        _PROBE.clear()
        _PROBE[job.probe.id] = load_probe(job.probe)
    summary = run_job(store, job, device=worker_device(), images=_PROBE[job.probe.id])
    return {**summary, **_where()}


def torch_build() -> str:
    """The torch of this process and its CUDA: ``2.13.0+cpu (no CUDA)``, ``2.13.0+cu126 (CUDA 12.6)``."""
    return f"{torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'no CUDA'})"


def _where() -> dict:
    """Where this worker runs: process id, GPU ids, device and torch threads."""
    return {"pid": os.getpid(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "device": worker_device(),
            "threads": torch.get_num_threads()}


def actor_options(*, gpus_per_actor: float = 1.0, cpus_per_actor: int = 1) -> tuple[dict, int]:
    """Resources for each actor and how many actors the cluster holds at once.

    Returns
    -------
    options : dict
        Ray actor options: ``num_gpus`` only when the cluster has GPUs and ``gpus_per_actor > 0``.
    capacity : int
        Actors of that size the cluster holds at once (at least 1).
    """
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0)
    if gpus_per_actor > 0 and gpus >= gpus_per_actor:
        return {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}, int(gpus // gpus_per_actor)
    return {"num_cpus": cpus_per_actor}, max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def gpu_actor_options(*, gpus_per_actor: float, cpus_per_actor: int = 1) -> tuple[dict, int]:
    """Resources of each GPU actor of the pair work, and how many the cluster runs at once (0: it has no GPU).

    Unlike :func:`actor_options` the count is bounded by the CPUs too: ``match_gpus_per_actor: 0.25`` on a node of
    one GPU and 2 CPUs runs 2 actors, not 4 of which 2 would never start.
    """
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if gpus_per_actor <= 0 or gpus < gpus_per_actor:
        return {}, 0
    capacity = min(int(gpus // gpus_per_actor + 1e-9), int(cpus // cpus_per_actor))
    return {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}, capacity


def on_device(fn, store: Store, item):
    """A pair task's body on a GPU actor: ``fn(store, item)`` computing on this actor's device, and where it ran.

    An item with a ``device`` field (match and cross tasks) gets ``'cuda'`` when torch sees the GPU Ray gave this
    actor; otherwise (a CPU-only torch build, a fake GPU) it computes on the CPU, and the run said so once when the
    actors started (:class:`~raymatch.engine.executors.GpuActors`). Other items (factors) run as they are: the
    factor a store keeps is the same whichever worker computed it.

    Returns
    -------
    dict
        ``fn``'s result with ``pid``, ``gpu_ids``, ``device`` and ``threads`` of this actor.
    """
    import dataclasses

    where = _where()
    if where["device"] != "cpu" and "device" in {field.name for field in dataclasses.fields(item)}:
        item = dataclasses.replace(item, device=where["device"])
    return {**fn(store, item), **where}


def uploaded(runtime_env: dict) -> dict:
    """``runtime_env`` with its local ``py_modules`` folders uploaded to the cluster, as ``gcs://`` URIs.

    Ray uploads local folders only for a job's runtime_env (``ray.init``, ``ray job submit``); an actor's own
    runtime_env must name packages already on the cluster. The upload is content-addressed: a folder whose files
    did not change is not sent again.

    Parameters
    ----------
    runtime_env : dict

    Returns
    -------
    dict
    """
    if not runtime_env.get("py_modules"):
        return runtime_env
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed  # what ray.init does for a job

    return upload_py_modules_if_needed(dict(runtime_env), include_gitignore=True)


def start_actors(n_actors: int, *, gpus_per_actor: float = 1.0, cpus_per_actor: int = 1,
                 runtime_env: dict | None = None) -> list:
    """Up to ``n_actors`` worker actors (as many as the cluster holds at once); kill them when done.

    A ``runtime_env`` (the architecture's ``py_modules``, :attr:`Architecture.runtime_env
    <raymatch.study.Architecture.runtime_env>`) is each actor's own, on top of the job's.
    """
    options, capacity = actor_options(gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor)
    if runtime_env:
        options = {**options, "runtime_env": uploaded(runtime_env)}
    return [WorkerActor.options(**options).remote(cpus_per_actor) for _ in range(max(1, min(n_actors, capacity)))]


def extract_population(store: Store, jobs: list[ExtractionJob], *, gpus_per_actor: float = 1.0,
                       cpus_per_actor: int = 1, max_actors: int | None = None, progress: bool | None = None,
                       actors: list | None = None, runtime_env: dict | None = None) -> list:
    """Extract every job's activations on the connected Ray cluster.

    Parameters
    ----------
    store : Store
    jobs : list of ExtractionJob
    gpus_per_actor, cpus_per_actor : float, int
        Resources of each actor started here (GPU actors only where the cluster has GPUs).
    max_actors : int, optional
        At most this many actors (default: as many as the cluster holds).
    progress : bool, optional
        done / total / ETA on the driver (a bar on a terminal, periodic lines otherwise).
    actors : list, optional
        Running actors (from :func:`start_actors`) to use instead of new ones; left running.
    runtime_env : dict, optional
        Of the actors started here (see :func:`start_actors`).

    Returns
    -------
    list of dict
        One summary of :func:`extract_job` per job, in job order.

    Raises
    ------
    Exception
        The error of the first job that failed (after every job ran).
    """
    from .bounded import run_bounded

    if not jobs:
        return []
    own = actors is None
    if own:
        capacity = actor_options(gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor)[1]
        actors = start_actors(min(len(jobs), max_actors or capacity), gpus_per_actor=gpus_per_actor,
                              cpus_per_actor=cpus_per_actor, runtime_env=runtime_env)
    try:
        outcomes = run_bounded(extract_job, jobs, args=(store,), max_in_flight=len(actors), label="extract",
                               unit="models", progress=progress, actors=actors, stop_on_failure=True)
    finally:
        if own:
            for actor in actors:
                ray.kill(actor)
    for outcome in outcomes:
        outcome.reraise()
    return [outcome.result for outcome in outcomes]
