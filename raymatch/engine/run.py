"""Running a study: every declared stage in order, each computing only what the store lacks.

Stages (DESIGN.md §2, declared in :mod:`.stages`): training per seed (only for a ``population.training`` study,
and the null baseline's untrained models), extraction per model, factors per (model, layer, repeat), then one
task per (block of pairs, layer, repeat) computing the whole ε grid from one ``match_curve``; simple-match and
CKA tasks likewise. A stage reads only what the one before it stored, so a rerun — or a run on another
machine — computes exactly what is missing.

Each run records itself in the ``runs`` table (written when it starts and replaced when it ends) and the study's
configuration in ``studies/<name>.json``, from which ``raymatch status`` and ``raymatch report`` work without
the study file. Run and stage events go to the ``raymatch`` logger.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import logging
import secrets
import socket
import time

from .. import __version__
from ..results import TableWriter, append_rows, check_store_version, compact_table, data_files, read_columns
from ..store import Store, StoreError
from ..store.layout import study_record_key, study_records_prefix, training_record_key
from .cluster import alive_nodes, check_store_in_job, check_store_on_cluster
from .plan import Plan, make_plan
from .stages import STAGES, Stage

__all__ = ["RunRecord", "run_study", "store_status", "write_study_record"]

log = logging.getLogger("raymatch")

#: The ``runs`` table gets two small files a run (start, end): compacted when a run ends with more than this.
_RUNS_FILES_BEFORE_COMPACTION = 16


def write_study_record(study, store: Store) -> None:
    """``studies/<name>.json``: the study's configuration and its layers in network order (for status, report)."""
    store.write_json(study_record_key(study.name), {
        "name": study.name, "config_hash": study.config_hash, "code_version": __version__,
        "layers": list(study.layer_names), "eps": list(study.eps),
        "architecture": study.architecture.to_dict() if study.architecture is not None else None,
        "probe": study.probe.to_dict(), "config": study.to_dict(),
    })


class RunRecord:
    """One row of the ``runs`` table, written when the run starts and replaced when it ends."""

    def __init__(self, study, store: Store):
        self.store = store
        started = _dt.datetime.now(_dt.timezone.utc)
        self.row = {"run_id": f"{study.name}.{started:%Y%m%dT%H%M%S}.{secrets.token_hex(4)}", "study": study.name,
                    "config_hash": study.config_hash, "host": socket.gethostname(), "code_version": __version__,
                    "started_at": started, "ended_at": None, "status": "running", "computed": 0, "skipped": 0,
                    "failed": 0, "stages": "{}", "error": None}
        self._write()

    def _write(self) -> None:
        """Append the row as it is now: readers of ``runs`` see the latest row of each run."""
        append_rows(self.store, "runs", [{**self.row, "updated_at": _dt.datetime.now(_dt.timezone.utc)}])

    def finish(self, stages: dict, error: str | None = None) -> None:
        """Replace the row with the run's outcome: totals, per-stage counts, status and error."""
        totals = {name: sum(counts.get(name, 0) for counts in stages.values())
                  for name in ("computed", "skipped", "failed")}
        failed = error is not None or totals["failed"] > 0
        self.row.update(totals, ended_at=_dt.datetime.now(_dt.timezone.utc), error=error,
                        status="failed" if failed else "succeeded",
                        stages=json.dumps({name: {key: counts[key] for key in ("computed", "skipped", "failed",
                                                                                "seconds", "nodes")
                                                  if counts.get(key) not in (None, {})}  # nodes: where tasks ran
                                           for name, counts in stages.items()}, sort_keys=True))
        self._write()
        if len(data_files(self.store, "runs")) > _RUNS_FILES_BEFORE_COMPACTION:  # two appends a run add up
            compact_table(self.store, "runs")


def run_study(study, *, progress: bool | None = None, only: str | None = None, connect=None) -> dict:
    """Run every stage of ``study`` on the connected Ray cluster; returns the run's summary.

    Parameters
    ----------
    study : raymatch.study.Study
    progress : bool, optional
        Progress bars (default: when stderr is a terminal; periodic lines otherwise).
    only : str, optional
        The name of a stage to stop after (``'train'`` for ``raymatch train``).
    connect : callable, optional
        Called without arguments once the population is planned and the store is known writable, before
        anything is written: connect to Ray there, so that bad inputs fail without starting it. A local store
        is then refused on a cluster of several alive nodes unless it is declared ``shared``, and before all
        this, a relative local store inside a submitted Ray job (:mod:`raymatch.engine.cluster`).

    Returns
    -------
    dict
        ``study``, ``config_hash``, ``run_id``, ``seconds`` and ``stages``: per stage run, its ``computed``,
        ``skipped``, ``failed`` counts, ``seconds`` and the first ``errors``.
    """
    started = time.perf_counter()
    check_store_in_job(study.store)  # a relative local store inside `ray job submit`: its results would vanish
    store = study.store.open()
    if not store.is_local:  # an unreachable endpoint, a missing bucket, refused credentials: one clear line
        store.check(write=False)
    plan = make_plan(study, store)  # bad populations and checkpoints fail here, before anything is written
    store.check()
    check_store_version(store)  # a store of raymatch 0.1.0: refused before Ray starts or anything is written
    if connect is not None:
        connect()
    check_store_on_cluster(study.store)  # a local store on several nodes must be declared shared
    write_study_record(study, store)
    record = RunRecord(study, store)
    summary: dict = {"study": study.name, "config_hash": study.config_hash, "run_id": record.row["run_id"],
                     "stages": {}}
    log.info("run %s of study %s (config %s) started", record.row["run_id"], study.name, study.config_hash)
    try:
        _run_stages(study, store, plan, summary, progress, only)
    except BaseException as error:
        log.info("run %s ended with %s: %s", record.row["run_id"], type(error).__name__, error)
        try:
            record.finish(summary["stages"], error=f"{type(error).__name__}: {error}")
        except StoreError:  # the store is what failed (unreachable, full): report the run's own error
            pass
        raise
    record.finish(summary["stages"])
    summary["seconds"] = time.perf_counter() - started
    log.info("run %s finished in %.1f s", record.row["run_id"], summary["seconds"])
    return summary


class _Executors:
    """The executors of one run: training tasks, extraction actors, and the pair workers (started when needed).

    Where extraction runs on CPUs, one pool of actors does every stage after training: the pair stages then start
    in warm processes (no worker start-up, torch and the store already loaded) instead of cold tasks. GPU actors
    are kept for extraction only: pair work is CPU work and must not hold a GPU, so it runs as Ray tasks there.

    On a cluster of more than one alive node (when the run starts) there are no shared actors: CPU extraction and
    the pair stages run as plain Ray tasks. A node lost in the middle of a run then costs only its tasks in
    flight, which Ray runs again on the nodes left (``max_retries``); an actor of the lost node would instead wait
    for a CPU that the other actors hold, and its calls with it, for ever (docs/reliability.md).
    """

    def __init__(self, study, store: Store, progress: bool | None):
        from .workers import actor_options

        self.study, self.store, self.progress = study, store, progress
        resources = study.resources
        options, self.capacity = actor_options(gpus_per_actor=resources.gpus_per_actor,
                                               cpus_per_actor=resources.cpus_per_task)
        self.gpu_extraction = "num_gpus" in options
        self.shared: list | None = None  # CPU actors for extraction and the pair stages
        self.several_nodes = len(alive_nodes()) > 1  # Ray tasks only: a lost node's tasks run again elsewhere

    def _shared_actors(self) -> list:
        from .workers import start_actors

        if self.shared is None:
            architecture = self.study.architecture  # None for imported activations
            self.shared = start_actors(self.capacity, gpus_per_actor=0,
                                       cpus_per_actor=self.study.resources.cpus_per_task,
                                       runtime_env=architecture.runtime_env if architecture else None)  # code
        return self.shared

    def run(self, stage: Stage, plan: Plan, tasks: list, on_outcome=None) -> list:
        """Run ``tasks`` of ``stage`` on its executor; one :class:`~raymatch.engine.runner.Outcome` per task."""
        from .runner import run_bounded

        resources = self.study.resources
        if stage.executor == "training":
            return self._train(plan, tasks)
        if stage.executor == "extraction" and self.study.population.activations is not None:
            return import_population(self.study, self.store, tasks)  # imported: files read by the driver
        if stage.executor == "extraction":
            from .workers import extract_job, extract_population

            if self.gpu_extraction:  # GPU actors of their own, killed when extraction ends
                return _outcomes_of(extract_population, self.store, tasks, resources, self.progress,
                                    self.study.architecture.runtime_env)
            if self.several_nodes:
                return run_bounded(extract_job, tasks, args=(self.store,), max_in_flight=self.capacity,
                                   num_cpus=resources.cpus_per_task, label=stage.name, progress=self.progress,
                                   fatal=(StoreError,), on_outcome=on_outcome, stop_on_failure=stage.stop_on_failure,
                                   task_options=self._task_options(code=True))
            return run_bounded(extract_job, tasks, args=(self.store,), max_in_flight=self.capacity,
                               label=stage.name, progress=self.progress, actors=self._shared_actors(),
                               fatal=(StoreError,), on_outcome=on_outcome, stop_on_failure=stage.stop_on_failure)
        # biggest blocks first: no CPU is left alone with a long task at the end
        tasks = sorted(tasks, key=stage.size, reverse=True)
        actors = None if self.gpu_extraction or self.several_nodes else self._shared_actors()
        return run_bounded(stage.task, tasks, args=(self.store,), max_in_flight=resources.max_in_flight,
                           num_cpus=resources.cpus_per_task, label=stage.name, progress=self.progress, actors=actors,
                           fatal=(StoreError,), on_outcome=on_outcome,  # the store is down or full: stop
                           task_options=self._task_options(code=False))

    def _task_options(self, *, code: bool) -> dict:
        """More Ray options of the stages' Ray tasks on several nodes: spread over the nodes, the model's code.

        ``SPREAD`` puts the tasks on every node (Ray's default packs short tasks onto the driver's node);
        extraction tasks (``code``) get the architecture's ``py_modules``, uploaded, as its actors would.
        """
        if not self.several_nodes:
            return {}
        from .workers import uploaded

        options: dict = {"scheduling_strategy": "SPREAD"}
        architecture = self.study.architecture
        if code and architecture is not None and architecture.runtime_env:
            options["runtime_env"] = uploaded(architecture.runtime_env)
        return options

    def _train(self, plan: Plan, tasks: list) -> list:
        from ..train import recipe, train_population

        study, resources = self.study, self.study.resources
        training = study.population.training
        outcomes = []
        for group in plan.groups:
            seeds = [seed for name, seed in tasks if name == group.name]
            if not seeds:
                continue
            untrained = group.name == "untrained"
            spec = training.spec if training is not None else recipe("quick", dataset=study.probe.dataset)
            outcomes += train_population(self.store, study.architecture.name, study.architecture.kwargs, spec,
                                         seeds, prefix=group.prefix, untrained=untrained,
                                         cpus_per_task=resources.cpus_per_task, gpus_per_task=self.training_gpus(),
                                         max_in_flight=resources.max_in_flight, progress=self.progress,
                                         save_every=None if untrained else study.save_every)
        return outcomes

    def training_gpus(self) -> float:
        """GPUs per training task: ``resources.gpus_per_actor`` where the cluster has them, else 0 (CPU).

        A task asking for a GPU on a cluster without one would wait for ever: training falls back to the CPU, as
        extraction does, and says so once.
        """
        wanted = self.study.resources.gpus_per_actor
        if wanted > 0 and not self.gpu_extraction:
            log.warning("the cluster has no GPU for resources.gpus_per_actor = %g: training on CPUs", wanted)
            return 0.0
        return wanted

    def close(self) -> None:
        """Stop the actors this run started."""
        import ray

        for actor in self.shared or ():
            ray.kill(actor)


def import_population(study, store: Store, jobs: list) -> list:
    """The extract stage of a study importing its activations: each job's arrays written by this process.

    Returns
    -------
    list of Outcome
        One per job, in order; the first failure stops the rest (its error kept as the cause).
    """
    from ..extract.imported import import_model
    from .runner import Outcome

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


def _outcomes_of(extract_population, store: Store, jobs: list, resources, progress, runtime_env=None) -> list:
    """Extraction on GPU actors of its own, as outcomes (the first failure's error is kept as the cause)."""
    from .runner import Outcome

    try:
        summaries = extract_population(store, jobs, gpus_per_actor=resources.gpus_per_actor,
                                       cpus_per_actor=resources.cpus_per_task, progress=progress,
                                       runtime_env=runtime_env)
    except Exception as error:
        return [Outcome(jobs[0], None, f"{type(error).__name__}: {error}", cause=error)]
    return [Outcome(job, summary) for job, summary in zip(jobs, summaries, strict=True)]


def _run_stages(study, store: Store, plan: Plan, summary: dict, progress: bool | None, only: str | None) -> None:
    executors = _Executors(study, store, progress)
    writer = TableWriter(store)  # rows of every task, committed by the driver in batches
    finished = False
    try:
        for stage in STAGES:
            stage_start = time.perf_counter()
            if not plan[stage.name].known:  # the stage before it has just stored what it needs
                plan = make_plan(study, store)
            if stage.table is not None:
                _record_models(study, store, plan)
            planned = plan[stage.name]
            log.info("stage %s: %d task(s) to do, %d %s stored", stage.name, len(planned.tasks), planned.done,
                     stage.unit)
            recorder = _recorder(study, stage, writer) if stage.table else None
            outcomes = executors.run(stage, plan, planned.tasks, recorder) if planned.tasks else []
            counts = summary["stages"][stage.name] = _counts(stage, outcomes, planned.done, stage_start)
            log.info("stage %s: %d computed, %d skipped, %d failed in %.1f s", stage.name, counts["computed"],
                     counts["skipped"], counts["failed"], counts["seconds"])
            if stage.stop_on_failure and counts["failed"]:
                first = next(outcome for outcome in outcomes if not outcome.ok)
                if stage.name == "train":
                    raise RuntimeError(f"training failed: {first.error}")
                first.reraise()
            if stage.name == only:
                break
        finished = True
    finally:
        executors.close()
        _close_writer(writer, finished)


def _close_writer(writer: TableWriter, finished: bool) -> None:
    """Commit what was computed, even when the run stops; a stopped run's own error is the one that is raised.

    When the run stops because the store failed, committing the buffered rows fails too: that second failure is
    logged, not raised over the first (the workers' error names the store and the cause).
    """
    if finished:
        writer.close(compact=True)
        return
    try:
        writer.close(compact=False)
    except Exception as error:
        log.warning("could not commit the rows computed before the run stopped (a rerun computes them): %s", error)


def _recorder(study, stage: Stage, writer: TableWriter):
    """The driver's handler of a stage's outcomes: their rows (and completion markers) go to the writer."""

    def record(outcome) -> None:
        if not outcome.ok:
            return
        rows = outcome.result["rows"]
        writer.add(stage.table, rows)
        if stage.marks_done:
            writer.add("tasks", [{"study": study.name, "config_hash": study.config_hash, "stage": stage.name,
                                  "task_id": outcome.item.task_id, "rows": len(rows)}])

    return record


def _record_models(study, store: Store, plan: Plan) -> None:
    """Rows of the ``models`` table for the study's models not recorded yet: id, seed, checkpoint, accuracy."""
    if not plan.model_ids:
        return
    recorded = read_columns(store, "models", ["population", "model_id"],
                            filters={"study": study.name, "config_hash": study.config_hash})
    known = set(zip(*(recorded.column(name).to_pylist() for name in ("population", "model_id")), strict=True))
    training, imported = study.population.training, study.population.activations
    architecture = study.architecture.label if study.architecture is not None else f"imported:{imported.layout}"
    rows = []
    for group in plan.groups:
        if group.permute_b_seed is not None:  # the permuted null: the trained models, recorded as such
            continue
        if group.origins is not None:  # a trajectory: its saved epochs (the final weights are rows already)
            rows += _trajectory_model_rows(study, store, plan, group, known, rows)
            continue
        seeds = (training.seeds if training is not None else range(len(group.checkpoints))) if group.prefix else None
        for index, key in enumerate(group.checkpoints):
            model = plan.model_ids[key]
            if (group.name, model) in known:
                continue
            seed = seeds[index] if seeds is not None else None
            record = store.read_json(training_record_key(group.prefix, seed)) if seed is not None else {}
            if imported is not None and imported.layout == "authors-npz":  # the authors' rnd_<seed>
                seed = imported.seeds[index]
            rows.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                         "model_id": model, "seed": seed, "checkpoint": key, "architecture": architecture,
                         "holdout_accuracy": record.get("holdout_accuracy"),
                         "test_accuracy": record.get("test_accuracy"),
                         "epochs": record.get("epochs"), "selected_epoch": record.get("selected_epoch"),
                         "epoch": record.get("selected_epoch")})
    if rows:
        append_rows(store, "models", rows)


def _trajectory_model_rows(study, store: Store, plan: Plan, group, known: set, rows: list[dict]) -> list[dict]:
    """``models`` rows of a trajectory's saved epochs not recorded yet (population ``trajectory``, ``epoch`` e).

    A saved epoch with the same weights as a model recorded already (its seed's selected epoch) is not recorded
    again: the ``models`` table has one row per model id.
    """
    from ..store.layout import trajectory_record_key

    taken = {model for _, model in known} | {row["model_id"] for row in rows}
    added = []
    for key, (seed, epoch) in zip(group.checkpoints, group.origins, strict=True):
        model = plan.model_ids[key]
        if epoch is None or model in taken:
            continue
        taken.add(model)
        record = store.read_json(trajectory_record_key(group.prefix, seed, epoch))
        added.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                      "model_id": model, "seed": seed, "checkpoint": key, "architecture": study.architecture.name,
                      "holdout_accuracy": record.get("holdout_accuracy"), "test_accuracy": None,
                      "epochs": study.population.training.spec.epochs, "selected_epoch": None, "epoch": epoch})
    return added


def _counts(stage: Stage, outcomes: list, skipped: int, stage_start: float) -> dict:
    """A stage's summary, in its units (pairs for the blocks of match); failed rows and in-task times by part."""
    counts = {"computed": sum(stage.size(o.item) for o in outcomes if o.ok), "skipped": skipped,
              "tasks": len(outcomes), "failed": sum(stage.size(o.item) for o in outcomes if not o.ok),
              "in_task_seconds": sum(o.seconds for o in outcomes),
              "task_seconds": sorted((o.seconds for o in outcomes), reverse=True),
              "seconds": time.perf_counter() - stage_start,
              "errors": [o.error for o in outcomes if not o.ok][:10],
              "nodes": dict(collections.Counter(o.node for o in outcomes if o.node is not None))}
    results = [o.result for o in outcomes if o.ok and isinstance(o.result, dict)]
    for key in ("failed", "match_seconds", "cka_seconds"):
        if any(key in result for result in results):
            counts["failed_rows" if key == "failed" else key] = sum(result.get(key, 0) for result in results)
    return counts


def store_status(store: Store, *, runs: int = 10) -> dict:
    """The latest runs recorded in ``store`` and, per study recorded there, what is still to do.

    Parameters
    ----------
    store : Store
    runs : int, default 10
        How many of the latest runs to return.

    Returns
    -------
    dict
        ``runs``: a DataFrame of the latest runs (newest first); ``pending``: per study name, its plan's
        ``{stage: (done, to do)}`` or the error that stopped the planning; ``failed``: the failed ``curves``
        rows of each study's current configuration (study, population, layer, repeat, model_a, model_b, error).
    """
    from ..results import load, query
    from ..study import Study

    history = load(store, "runs").sort_values("started_at", ascending=False).head(runs).reset_index(drop=True)
    pending: dict[str, dict | str] = {}
    for key in store.list(study_records_prefix()):
        if not key.endswith(".json"):
            continue
        record = store.read_json(key)
        try:
            pending[record["name"]] = make_plan(Study.from_dict(record["config"]), store).counts()
        except Exception as error:  # a study whose checkpoints went missing still lists the others
            pending[record["name"]] = f"{type(error).__name__}: {error}"
    failed = query(store, "SELECT study, population, layer, repeat, model_a, model_b, error FROM curves "
                          "WHERE status = 'failed' ORDER BY ALL")
    return {"runs": history, "pending": pending, "failed": failed}
