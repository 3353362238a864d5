"""Where a stage's tasks run: executors picked once per run from the cluster, each owning its workers.

Every stage names the role of its executor (:attr:`Stage.executor <raymatch.engine.stages.Stage.executor>`:
``training``, ``extraction``, ``pairs`` or ``curves``); :func:`choose_executors` looks at the cluster once, when
the run starts (GPUs? several alive nodes?), and picks one executor per role (``curves``, the factor, match and
cross stages, gets the ``pairs`` executor unless GPU actors are asked for and the cluster has them):

- :class:`LocalActors` — on one CPU node, one pool of warm CPU actors (:class:`WarmActors`) runs extraction and
  every pair stage: the pair stages then start in warm processes (no worker start-up, torch and the store
  already loaded) instead of cold tasks.
- :class:`RayTasks` — plain Ray tasks: the pair stages on a cluster with GPUs (without
  ``resources.match_gpus_per_actor`` pair work is CPU work and holds no GPU), and every stage after training on
  several nodes, spread over them (``SPREAD``). A node lost in the
  middle of a run then costs only its tasks in flight, which Ray runs again on the nodes left (``max_retries``); an
  actor of the lost node would instead wait for a CPU that the other actors hold, and its calls with it, for ever
  (docs/reliability.md).
- :class:`GpuExtraction` — extraction on GPU actors of its own, killed when extraction ends.
- :class:`GpuActors` — the curves (factor, match and cross stages) on GPU actors of their own
  (``resources.match_gpus_per_actor``), the batched kernel on the actor's GPU in float64; killed when the run ends.
  Without a GPU of that size on the cluster these stages keep the pair work's executor (one warning line).
- :class:`Training` — one Ray task per seed (:func:`~raymatch.engine.training.train_population`), one GPU each
  where the cluster has them.
- :class:`DriverImport` — a study importing its activations: the files are read and written by this process.

A new kind is one :class:`Executor` subclass and one line in :func:`choose_executors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..store import StoreError
from .bounded import Outcome, run_bounded
from .cluster import alive_nodes
from .stages import EXECUTORS, Stage

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Resources, Study

__all__ = ["ClusterShape", "DriverImport", "Executor", "Executors", "GpuActors", "GpuExtraction", "LocalActors",
           "RayTasks", "Training", "WarmActors", "choose_executors", "import_population"]

log = logging.getLogger("raymatch")

OnOutcome = Callable[[Outcome], None]


@dataclass(frozen=True)
class ClusterShape:
    """What the connected Ray cluster offers a run, seen once when the run starts.

    Attributes
    ----------
    gpus : bool
        The cluster has GPUs for actors of ``resources.gpus_per_actor`` (> 0).
    capacity : int
        Actors of the run's size (its GPUs, else ``resources.cpus_per_task`` CPUs) the cluster holds at once.
    several_nodes : bool
        More than one node is alive.
    match_capacity : int
        GPU actors of ``resources.match_gpus_per_actor`` (and ``cpus_per_task``) the cluster runs at once; 0 when
        it has no GPU of that size, or none is asked for.
    """

    gpus: bool
    capacity: int
    several_nodes: bool
    match_capacity: int = 0

    @classmethod
    def of(cls, resources: Resources) -> ClusterShape:
        """The shape of the connected cluster for actors of ``resources``."""
        from .workers import actor_options, gpu_actor_options

        options, capacity = actor_options(gpus_per_actor=resources.gpus_per_actor,
                                          cpus_per_actor=resources.cpus_per_task)
        _, match_capacity = gpu_actor_options(gpus_per_actor=resources.match_gpus_per_actor,
                                              cpus_per_actor=resources.cpus_per_task)
        return cls("num_gpus" in options, capacity, len(alive_nodes()) > 1, match_capacity)


class Executor:
    """Runs the tasks of a stage and returns one :class:`~raymatch.engine.bounded.Outcome` per task.

    Parameters
    ----------
    study : Study
    store : Store
        Every task body gets it as its first argument.
    progress : bool, optional
        Progress bars (see :func:`~raymatch.engine.bounded.run_bounded`).
    """

    def __init__(self, study: Study, store: Store, progress: bool | None):
        self.study, self.store, self.progress = study, store, progress

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Run ``tasks`` of ``stage``; ``on_outcome`` is called on the driver with each outcome as it arrives."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers this executor started (none by default)."""

    def _bounded(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None, **options) -> list[Outcome]:
        """``stage.task`` over ``tasks`` with bounded work in flight, biggest first; a store failure stops it."""
        # biggest blocks first: no CPU is left alone with a long task at the end
        return run_bounded(stage.task, sorted(tasks, key=stage.size, reverse=True), args=(self.store,),
                           label=stage.name, progress=self.progress, fatal=(StoreError,),  # the store is down or full
                           on_outcome=on_outcome, stop_on_failure=stage.stop_on_failure, size=stage.size,
                           unit=stage.unit, **options)


class WarmActors:
    """The warm CPU actors of one node, started when a stage first needs them and shared by the stages after it.

    Parameters
    ----------
    study : Study
        Its ``resources.cpus_per_task`` (each actor's CPUs) and its architecture's code (``runtime_env``).
    capacity : int
        How many actors to start.
    """

    def __init__(self, study: Study, capacity: int):
        self.study, self.capacity = study, capacity
        self.actors: list | None = None

    def get(self) -> list:
        """The actors, started on the first call."""
        from .workers import start_actors

        if self.actors is None:
            architecture = self.study.architecture  # None for imported activations
            self.actors = start_actors(self.capacity, gpus_per_actor=0,
                                       cpus_per_actor=self.study.resources.cpus_per_task,
                                       runtime_env=architecture.runtime_env if architecture else None)  # its code
        return self.actors

    def close(self) -> None:
        """Kill the actors (if they were started)."""
        import ray

        for actor in self.actors or ():
            ray.kill(actor)
        self.actors = None


class LocalActors(Executor):
    """A stage's tasks as calls on the warm actors of one CPU node (``max_in_flight`` calls submitted at once)."""

    def __init__(self, study: Study, store: Store, progress: bool | None, *, pool: WarmActors, max_in_flight: int):
        super().__init__(study, store, progress)
        self.pool, self.max_in_flight = pool, max_in_flight

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Each task a call on the least busy actor."""
        return self._bounded(stage, tasks, on_outcome, max_in_flight=self.max_in_flight, actors=self.pool.get())

    def close(self) -> None:
        """Kill the pool's actors."""
        self.pool.close()


class RayTasks(Executor):
    """A stage's tasks as Ray tasks, ``resources.cpus_per_task`` CPUs each.

    Parameters
    ----------
    max_in_flight : int
        Tasks submitted at once.
    spread : bool
        Spread the tasks over the nodes (``SPREAD``: Ray's default packs short tasks onto the driver's node).
    code : bool, default False
        With ``spread``, each task gets the architecture's ``py_modules`` (uploaded), as its actors would.
    """

    def __init__(self, study: Study, store: Store, progress: bool | None, *, max_in_flight: int, spread: bool,
                 code: bool = False):
        super().__init__(study, store, progress)
        self.max_in_flight, self.spread, self.code = max_in_flight, spread, code

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Each task a Ray task (retried by Ray after a system failure, as a lost node's are)."""
        return self._bounded(stage, tasks, on_outcome, max_in_flight=self.max_in_flight,
                             num_cpus=self.study.resources.cpus_per_task, task_options=self.task_options())

    def task_options(self) -> dict:
        """More Ray options of each task: spread over the nodes, the model's code."""
        if not self.spread:
            return {}
        options: dict = {"scheduling_strategy": "SPREAD"}
        architecture = self.study.architecture
        if self.code and architecture is not None and architecture.runtime_env:
            from .workers import uploaded

            options["runtime_env"] = uploaded(architecture.runtime_env)
        return options


class GpuExtraction(Executor):
    """Extraction on GPU actors of its own (:func:`~raymatch.engine.workers.extract_population`), killed after it.

    The first failed job stops the rest; its error comes back as the one failed outcome (with its cause).
    """

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """One outcome per extraction job, or the first failure's alone."""
        from .workers import extract_population

        resources = self.study.resources
        try:
            summaries = extract_population(self.store, tasks, gpus_per_actor=resources.gpus_per_actor,
                                           cpus_per_actor=resources.cpus_per_task, progress=self.progress,
                                           runtime_env=self.study.architecture.runtime_env)
        except Exception as error:
            return [Outcome(tasks[0], None, f"{type(error).__name__}: {error}", cause=error)]
        return [Outcome(job, summary) for job, summary in zip(tasks, summaries, strict=True)]


class GpuActors(Executor):
    """A stage's tasks on GPU actors of their own, ``resources.match_gpus_per_actor`` GPUs each.

    Started when a stage first needs them, shared by the stages after it and killed when the run ends. Each task
    runs through :func:`~raymatch.engine.workers.on_device`: a match or cross task computes its block on the actor's
    GPU (cross products and peels in float64, so that its rows are the CPU's to float64 rounding: a float32 peel
    moves critical ε by up to 3e-5 on near-degenerate layers, which changes the maximum match at ε that close to
    them — ``tests/test_gpu_pairs.py``), a factor task as on any worker. When the actors' torch sees no CUDA device
    (a CPU-only build, or the test cluster's fake GPUs) the tasks compute on the actors' CPUs, and one warning line
    names the cause.

    Parameters
    ----------
    capacity : int
        Actors to start (:attr:`ClusterShape.match_capacity`).
    """

    def __init__(self, study: Study, store: Store, progress: bool | None, *, capacity: int):
        super().__init__(study, store, progress)
        self.capacity = capacity
        self.actors: list | None = None

    def get(self) -> list:
        """The actors, started (and their device checked) on the first call."""
        import ray

        from .workers import start_actors, torch_build

        if self.actors is None:
            resources = self.study.resources
            self.actors = start_actors(self.capacity, gpus_per_actor=resources.match_gpus_per_actor,
                                       cpus_per_actor=resources.cpus_per_task)
            where = ray.get(self.actors[0].describe.remote())
            if where["device"] == "cpu":
                build = ray.get(self.actors[0].run_task.remote(torch_build))[0]
                log.warning("resources.match_gpus_per_actor = %g: Ray gave the match actors GPU %s, but their torch "
                            "%s sees no CUDA device: the factor, match and cross stages compute on their CPUs",
                            resources.match_gpus_per_actor, ",".join(where["gpu_ids"]) or "-", build)
        return self.actors

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Each task a call on the least busy GPU actor, biggest first."""
        from .workers import on_device

        actors = self.get()
        return run_bounded(on_device, sorted(tasks, key=stage.size, reverse=True), args=(stage.task, self.store),
                           max_in_flight=max(len(actors), self.study.resources.max_in_flight), label=stage.name,
                           progress=self.progress, actors=actors, fatal=(StoreError,), on_outcome=on_outcome,
                           stop_on_failure=stage.stop_on_failure)

    def close(self) -> None:
        """Kill the actors (if they were started)."""
        import ray

        for actor in self.actors or ():
            ray.kill(actor)
        self.actors = None


class Training(Executor):
    """Training tasks: per model group, one Ray task per seed, one GPU each where asked and the cluster has them.

    Parameters
    ----------
    gpus : bool
        The cluster has GPUs for ``resources.gpus_per_actor`` (:attr:`ClusterShape.gpus`).
    """

    def __init__(self, study: Study, store: Store, progress: bool | None, *, gpus: bool):
        super().__init__(study, store, progress)
        self.gpus = gpus

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Train the seeds of ``tasks`` (:class:`~raymatch.engine.stages.train.TrainTask`), group after group."""
        from ..train import recipe
        from .training import train_lm_population, train_population

        study, resources = self.study, self.study.resources
        if study.is_lm:  # language models: the tokenizer once, then the seeds and the untrained null (CPU tasks)
            return train_lm_population(study, tasks, cpus_per_task=resources.cpus_per_task,
                                       max_in_flight=resources.max_in_flight, progress=self.progress)
        training = study.population.training
        spec = training.spec if training is not None else recipe("quick", dataset=study.probe.dataset)
        groups: dict[tuple[str, bool], list[int]] = {}
        for task in tasks:
            groups.setdefault((task.prefix, task.untrained), []).append(task.seed)
        outcomes = []
        for (prefix, untrained), seeds in groups.items():
            outcomes += train_population(self.store, study.architecture.name, study.architecture.kwargs, spec,
                                         seeds, prefix=prefix, untrained=untrained,
                                         cpus_per_task=resources.cpus_per_task, gpus_per_task=self.gpus_per_task(),
                                         max_in_flight=resources.max_in_flight, progress=self.progress,
                                         save_every=None if untrained else study.save_every)
        return outcomes

    def gpus_per_task(self) -> float:
        """GPUs per training task: ``resources.gpus_per_actor`` where the cluster has them, else 0 (CPU).

        A task asking for a GPU on a cluster without one would wait for ever: training falls back to the CPU, as
        extraction does, and says so.
        """
        wanted = self.study.resources.gpus_per_actor
        if wanted > 0 and not self.gpus:
            log.warning("the cluster has no GPU for resources.gpus_per_actor = %g: training on CPUs", wanted)
            return 0.0
        return wanted


class DriverImport(Executor):
    """The extract stage of a study importing its activations: each job's arrays written by this process."""

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """:func:`import_population` of the jobs."""
        return import_population(self.study, self.store, tasks)


def import_population(study: Study, store: Store, jobs: list) -> list[Outcome]:
    """Each import job's arrays read and written by this process, in order.

    Returns
    -------
    list of Outcome
        One per job, in order; the first failure stops the rest (its error kept as the cause).
    """
    from ..extract.imported import import_model

    outcomes = []
    for job in jobs:
        started = time.perf_counter()
        try:
            result = import_model(store, study.population.activations, study.probe, job)
        except Exception as error:
            outcomes.append(Outcome(job, None, f"{type(error).__name__}: {error}", time.perf_counter() - started,
                                    cause=error))
            break
        outcomes.append(Outcome(job, result, seconds=time.perf_counter() - started))
    return outcomes


class Executors:
    """The executor of each role of :data:`~raymatch.engine.stages.EXECUTORS` for one run."""

    def __init__(self, by_role: dict[str, Executor]):
        missing = [role for role in EXECUTORS if role not in by_role]
        if missing:
            raise ValueError(f"no executor for {', '.join(missing)}")
        self.by_role = by_role

    def run(self, stage: Stage, tasks: list, on_outcome: OnOutcome | None = None) -> list[Outcome]:
        """Run ``tasks`` of ``stage`` on the executor of its role; one outcome per task."""
        return self.by_role[stage.executor].run(stage, tasks, on_outcome)

    def close(self) -> None:
        """Stop every executor's workers."""
        for executor in dict.fromkeys(self.by_role.values()):
            executor.close()


def choose_executors(study: Study, store: Store, progress: bool | None = None) -> Executors:
    """The executors of one run, picked from the connected cluster (see the module's description).

    Parameters
    ----------
    study : Study
    store : Store
    progress : bool, optional

    Returns
    -------
    Executors
    """
    resources = study.resources
    cluster = ClusterShape.of(resources)
    common = (study, store, progress)
    pool = WarmActors(study, cluster.capacity) if not cluster.gpus and not cluster.several_nodes else None
    pairs = (LocalActors(*common, pool=pool, max_in_flight=resources.max_in_flight) if pool is not None
             else RayTasks(*common, max_in_flight=resources.max_in_flight, spread=cluster.several_nodes))
    extraction = (DriverImport(*common) if study.population.activations is not None
                  else GpuExtraction(*common) if cluster.gpus
                  else LocalActors(*common, pool=pool, max_in_flight=cluster.capacity) if pool is not None
                  else RayTasks(*common, max_in_flight=cluster.capacity, spread=True, code=True))
    curves = GpuActors(*common, capacity=cluster.match_capacity) if cluster.match_capacity else pairs
    if resources.match_gpus_per_actor > 0 and not cluster.match_capacity:
        log.warning("the cluster has no GPU for resources.match_gpus_per_actor = %g: the factor, match and cross "
                    "stages run on CPUs", resources.match_gpus_per_actor)
    return Executors({"training": Training(*common, gpus=cluster.gpus), "extraction": extraction, "pairs": pairs,
                      "curves": curves})
