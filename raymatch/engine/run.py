"""Running a study: every declared stage in order, each computing only what the store lacks.

Stages (DESIGN.md §2, declared in :mod:`.stages`): training per seed (only for a ``population.training`` study,
and the null baseline's untrained models), extraction per model, factors per (model, layer, repeat), then one
task per (block of pairs, layer, repeat) computing the whole ε grid from one ``match_curve``; simple-match and
CKA tasks likewise. A stage reads only what the one before it stored, so a rerun — or a run on another
machine — computes exactly what is missing.

Each run records itself in the ``runs`` table (written when it starts and replaced when it ends; in between a
heartbeat overwrites ``heartbeats/<run id>.json`` every :func:`heartbeat_seconds`) and the study's configuration in
``studies/<name>.json``, from which ``raymatch status`` and ``raymatch report`` work without the study file. A
``running`` row whose heartbeat is older than three intervals is shown as ``abandoned`` (its driver died).
SIGINT/SIGTERM to the driver cancel the run (:class:`RunCancelled`): no more submissions, Ray work in flight
cancelled, the rows computed so far committed, the run recorded as ``cancelled``. Run and stage events go to
the ``raymatch`` logger.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time

from .. import __version__
from ..results import TableWriter, append_rows, check_store_version, compact_table, data_files, read_columns
from ..store import Store, StoreError
from ..store.layout import heartbeat_key, study_record_key, study_records_prefix, training_record_key
from .cluster import alive_nodes, check_store_in_job, check_store_on_cluster
from .plan import Plan, make_plan
from .stages import STAGES, Stage

__all__ = ["HEARTBEAT_SECONDS", "RunCancelled", "RunRecord", "heartbeat_seconds", "last_heard", "run_state",
           "run_study", "store_status", "write_study_record"]

log = logging.getLogger("raymatch")

#: The ``runs`` table gets a small file per append (a run's start and end): compacted when a run ends with more.
_RUNS_FILES_BEFORE_COMPACTION = 16
#: Seconds between two heartbeats of a running driver (each overwrites one small object, never a table); the
#: environment variable ``RAYMATCH_HEARTBEAT_S`` overrides it.
HEARTBEAT_SECONDS = 30.0
#: A ``running`` run whose latest heartbeat is older than this many intervals is shown as ``abandoned``.
ABANDONED_AFTER_HEARTBEATS = 3


def heartbeat_seconds() -> float:
    """The heartbeat interval: ``RAYMATCH_HEARTBEAT_S`` if set (a positive number), else :data:`HEARTBEAT_SECONDS`."""
    value = os.environ.get("RAYMATCH_HEARTBEAT_S")
    if value is None or not value.strip():
        return HEARTBEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"RAYMATCH_HEARTBEAT_S must be a positive number of seconds; got {value!r}")
    return seconds


def run_state(status: str, updated_at, *, now=None, heartbeat: float | None = None) -> str:
    """The state of a run as ``raymatch status`` shows it: its status, or ``abandoned`` for a silent driver.

    Parameters
    ----------
    status : str
        The ``status`` of the run's latest ``runs`` row.
    updated_at : datetime
        When the run was last heard of (UTC): :func:`last_heard`.
    now : datetime, optional
        The current UTC time (default: now).
    heartbeat : float, optional
        The heartbeat interval in seconds (default: :func:`heartbeat_seconds`).

    Returns
    -------
    str
        ``status``, except ``"abandoned"`` for a ``running`` run not heard of for more than
        :data:`ABANDONED_AFTER_HEARTBEATS` intervals.
    """
    if status != "running" or updated_at is None:
        return status
    now = now if now is not None else _dt.datetime.now(_dt.timezone.utc)
    interval = heartbeat if heartbeat is not None else heartbeat_seconds()
    age = (now - updated_at).total_seconds()
    return "abandoned" if age > ABANDONED_AFTER_HEARTBEATS * interval else status


def last_heard(store: Store, runs) -> list:
    """When each run was last heard of: the later of its latest ``runs`` row and its heartbeat object.

    Parameters
    ----------
    store : Store
    runs : pandas.DataFrame
        ``runs`` rows with ``run_id``, ``status`` and ``updated_at``.

    Returns
    -------
    list of datetime
        One per row; the heartbeats of the ``running`` rows are read in one batch (:meth:`Store.read_many`).
    """
    running = [run_id for run_id, status in zip(runs["run_id"], runs["status"], strict=True) if status == "running"]
    beats = {}
    for run_id, data in zip(running, store.read_many([heartbeat_key(run_id) for run_id in running]), strict=True):
        if data is not None:
            beats[run_id] = _dt.datetime.fromisoformat(json.loads(data)["updated_at"])
    return [max(updated, beats[run_id]) if run_id in beats and updated is not None else beats.get(run_id, updated)
            for run_id, updated in zip(runs["run_id"], runs["updated_at"], strict=True)]


class RunCancelled(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM: Ctrl-C, ``kill``, ``ray job stop``)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"cancelled by {signal.Signals(signum).name}")


@contextlib.contextmanager
def _cancel_on_signals():
    """SIGINT and SIGTERM raise :class:`RunCancelled` in the driver's main thread (once; later ones are noted).

    Ray's blocking calls check for signals, so the exception reaches the loop that submits work, which cancels
    what is in flight (Ray turns it into a plain ``KeyboardInterrupt`` on the way: the list yielded holds the
    signal received). Outside the main thread (no signal handlers there) this does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, _frame):
        if received:  # already stopping: let the rows computed so far be committed
            log.warning("%s received again: still stopping", signal.Signals(signum).name)
            return
        received.append(signum)
        raise RunCancelled(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def write_study_record(study, store: Store) -> None:
    """``studies/<name>.json``: the study's configuration and its layers in network order (for status, report)."""
    store.write_json(study_record_key(study.name), {
        "name": study.name, "config_hash": study.config_hash, "code_version": __version__,
        "layers": list(study.layer_names), "eps": list(study.eps),
        "architecture": study.architecture.to_dict() if study.architecture is not None else None,
        "probe": study.probe.to_dict(), "config": study.to_dict(),
    })


class RunRecord:
    """One row of the ``runs`` table, written when the run starts and replaced when it ends, and its heartbeat.

    The heartbeat overwrites one object, ``heartbeats/<run id>.json`` (``{"run_id", "updated_at"}``), from a daemon
    thread every interval until :meth:`finish`, which deletes it: a long run adds no file to ``runs`` per beat.
    :func:`last_heard` reads both.

    Parameters
    ----------
    study : raymatch.study.Study
        Its ``name`` and ``config_hash`` are recorded.
    store : Store
    heartbeat : float, optional
        Seconds between two heartbeats (default: :func:`heartbeat_seconds`).
    """

    def __init__(self, study, store: Store, *, heartbeat: float | None = None):
        self.store = store
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        started = _dt.datetime.now(_dt.timezone.utc)
        self.row = {"run_id": f"{study.name}.{started:%Y%m%dT%H%M%S}.{secrets.token_hex(4)}", "study": study.name,
                    "config_hash": study.config_hash, "host": socket.gethostname(), "code_version": __version__,
                    "started_at": started, "ended_at": None, "status": "running", "computed": 0, "skipped": 0,
                    "failed": 0, "stages": "{}", "error": None}
        self._write()
        self._thread = threading.Thread(target=self._beat, name="raymatch-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        """Append the row as it is now: readers of ``runs`` see the latest row of each run."""
        with self._lock:
            append_rows(self.store, "runs", [{**self.row, "updated_at": _dt.datetime.now(_dt.timezone.utc)}])

    def _beat(self) -> None:
        """The heartbeat: the heartbeat object, with a fresh ``updated_at``, every interval until the run ends."""
        key = heartbeat_key(self.row["run_id"])
        while not self._stop.wait(self.heartbeat):
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.store.write_json(key, {"run_id": self.row["run_id"],
                                                "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            except Exception as error:  # a store down for a while: the run itself reports it; try again later
                log.warning("heartbeat of run %s not recorded: %s", self.row["run_id"], error)

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat (waits for a beat being written)."""
        self._stop.set()
        with self._lock:
            pass

    def finish(self, stages: dict, error: str | None = None, *, cancelled: bool = False) -> None:
        """Replace the row with the run's outcome: totals, per-stage counts, status and error."""
        self.stop_heartbeat()
        totals = {name: sum(counts.get(name, 0) for counts in stages.values())
                  for name in ("computed", "skipped", "failed")}
        failed = error is not None or totals["failed"] > 0
        status = "cancelled" if cancelled else "failed" if failed else "succeeded"
        self.row.update(totals, ended_at=_dt.datetime.now(_dt.timezone.utc), error=error, status=status,
                        stages=json.dumps({name: {key: counts[key] for key in ("computed", "skipped", "failed",
                                                                                "seconds", "nodes")
                                                  if counts.get(key) not in (None, {})}  # nodes: where tasks ran
                                           for name, counts in stages.items()}, sort_keys=True))
        self._write()
        try:
            self.store.delete(heartbeat_key(self.row["run_id"]))  # the row says it ended
        except StoreError as error:
            log.warning("could not delete the heartbeat of run %s: %s", self.row["run_id"], error)
        try:
            if len(data_files(self.store, "runs")) > _RUNS_FILES_BEFORE_COMPACTION:  # two files per run add up
                compact_table(self.store, "runs")
        except StoreError as error:  # the run is recorded: a compaction that fails is only a cost for readers
            log.warning("could not compact the runs table: %s", error)


def run_study(study, *, progress: bool | None = None, only: str | None = None, connect=None,
              retry_failed: bool = False) -> dict:
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
    retry_failed : bool, default False
        Compute again the pairs whose only ``curves`` rows of this configuration are failed ones (a new ``"ok"``
        row supersedes a failed one in the views); by default a failed row counts as done.

    Returns
    -------
    dict
        ``study``, ``config_hash``, ``run_id``, ``seconds`` and ``stages``: per stage run, its ``computed``,
        ``skipped``, ``failed`` counts, ``seconds`` and the first ``errors``.

    Raises
    ------
    RunCancelled
        SIGINT or SIGTERM reached the driver (in its main thread) while the run was going on: submission
        stopped, Ray work in flight cancelled, the rows computed so far committed, the run recorded as
        ``cancelled``.
    """
    started = time.perf_counter()
    check_store_in_job(study.store)  # a relative local store inside `ray job submit`: its results would vanish
    heartbeat = heartbeat_seconds()  # a bad RAYMATCH_HEARTBEAT_S: refused before anything runs
    store = study.store.open()
    if not store.is_local:  # an unreachable endpoint, a missing bucket, refused credentials: one clear line
        store.check(write=False)
    plan = make_plan(study, store, retry_failed=retry_failed)  # bad populations and checkpoints fail here
    store.check()
    check_store_version(store)  # a store of raymatch 0.1.0: refused before Ray starts or anything is written
    if connect is not None:
        connect()
    check_store_on_cluster(study.store)  # a local store on several nodes must be declared shared
    with _cancel_on_signals() as signals:  # after connecting: replaces the SIGTERM handler ray.init installs
        write_study_record(study, store)
        record = RunRecord(study, store, heartbeat=heartbeat)
        summary: dict = {"study": study.name, "config_hash": study.config_hash, "run_id": record.row["run_id"],
                         "stages": {}}
        log.info("run %s of study %s (config %s) started", record.row["run_id"], study.name, study.config_hash)
        try:
            _run_stages(study, store, plan, summary, progress, only, retry_failed)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt) and signals and not isinstance(error, RunCancelled):
                error = RunCancelled(signals[0])  # Ray re-raised the signal's exception as a KeyboardInterrupt
            log.info("run %s ended with %s: %s", record.row["run_id"], type(error).__name__, error)
            try:
                record.finish(summary["stages"], error=f"{type(error).__name__}: {error}",
                              cancelled=isinstance(error, KeyboardInterrupt))
            except StoreError:  # the store is what failed (unreachable, full): report the run's own error
                pass
            if isinstance(error, RunCancelled):
                raise error from None
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
        """Run ``tasks`` of ``stage`` on its executor; one :class:`~raymatch.engine.bounded.Outcome` per task."""
        from .bounded import run_bounded

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
    from .bounded import Outcome

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
    from .bounded import Outcome

    try:
        summaries = extract_population(store, jobs, gpus_per_actor=resources.gpus_per_actor,
                                       cpus_per_actor=resources.cpus_per_task, progress=progress,
                                       runtime_env=runtime_env)
    except Exception as error:
        return [Outcome(jobs[0], None, f"{type(error).__name__}: {error}", cause=error)]
    return [Outcome(job, summary) for job, summary in zip(jobs, summaries, strict=True)]


def _run_stages(study, store: Store, plan: Plan, summary: dict, progress: bool | None, only: str | None,
                retry_failed: bool = False) -> None:
    executors = _Executors(study, store, progress)
    writer = TableWriter(store)  # rows of every task, committed by the driver in batches
    finished = False
    try:
        for stage in STAGES:
            stage_start = time.perf_counter()
            if not plan[stage.name].known:  # the stage before it has just stored what it needs
                plan = make_plan(study, store, retry_failed=retry_failed, known_ids=plan.model_ids)
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
        ``runs``: a DataFrame of the latest runs (newest first; a ``running`` run whose heartbeat is older than
        three intervals has the status ``abandoned``, see :func:`run_state`); ``pending``: per study name, its plan's
        ``{stage: (done, to do)}`` or the error that stopped the planning; ``failed``: the failed ``curves``
        rows of each study's current configuration (study, population, layer, repeat, model_a, model_b, error).
    """
    from ..results import load, query
    from ..study import Study

    history = load(store, "runs").sort_values("started_at", ascending=False).head(runs).reset_index(drop=True)
    history["updated_at"] = last_heard(store, history)  # a running run's heartbeat, not its first row
    now, heartbeat = _dt.datetime.now(_dt.timezone.utc), heartbeat_seconds()
    history["status"] = [run_state(status, updated, now=now, heartbeat=heartbeat)
                         for status, updated in zip(history["status"], history["updated_at"], strict=True)]
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
