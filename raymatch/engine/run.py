"""Running a study: every declared stage in order, each computing only what the store lacks.

Stages (DESIGN.md §2, one module each under :mod:`.stages`): training per seed (only for a ``population.training``
study, and the null baseline's untrained models), extraction per model, factors per (model, layer, repeat), then
one task per (block of pairs, layer, repeat) computing the whole ε grid from one ``match_curve``; simple-match and
cross-layer tasks likewise. A stage reads only what the one before it stored, so a rerun — or a run on another
machine — computes exactly what is missing. The loop here knows no stage by name: what a stage needs before its
tasks, where they run and how a failure stops the run, the stage declares (:class:`~.stages.Stage`).

The run records itself (:mod:`.record`: the ``runs`` row, its heartbeat, the study record); SIGINT/SIGTERM to the
driver cancel it (:mod:`.cancel`): no more submissions, Ray work in flight cancelled, the rows computed so far
committed, the run recorded as ``cancelled``. Run and stage events go to the ``raymatch`` logger.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..results import TableWriter, check_store_version
from ..store import Store, StoreError
from ..store.layout import lease_key
from .bounded import Outcome
from .cancel import RunCancelled, as_cancelled, cancel_on_signals
from .cluster import check_store_in_job, check_store_on_cluster
from .executors import choose_executors
from .leases import Leases, claimed_runs
from .plan import Plan
from .planning import make_plan
from .record import RunRecord, heartbeat_seconds, write_study_record
from .stages import STAGES, Stage

if TYPE_CHECKING:
    from ..study import Study

__all__ = ["run_stages", "run_study", "stage_counts", "stage_recorder"]

log = logging.getLogger("raymatch")


def run_study(study: Study, *, progress: bool | None = None, only: str | None = None,
              connect: Callable[[], object] | None = None, retry_failed: bool = False) -> dict:
    """Run every stage of ``study`` on the connected Ray cluster; returns the run's summary.

    Parameters
    ----------
    study : Study
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
    with cancel_on_signals() as signals:  # after connecting: replaces the SIGTERM handler ray.init installs
        write_study_record(study, store)
        record = RunRecord(study, store, heartbeat=heartbeat)
        summary: dict = {"study": study.name, "config_hash": study.config_hash, "run_id": record.row["run_id"],
                         "stages": {}}
        log.info("run %s of study %s (config %s) started", record.row["run_id"], study.name, study.config_hash)
        try:
            run_stages(study, store, plan, summary, progress=progress, only=only, retry_failed=retry_failed)
        except BaseException as raised:
            error = as_cancelled(raised, signals)  # Ray re-raises the signal's exception as a KeyboardInterrupt
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


def run_stages(study: Study, store: Store, plan: Plan, summary: dict, *, progress: bool | None = None,
               only: str | None = None, retry_failed: bool = False) -> None:
    """Run every stage of :data:`~.stages.STAGES` in order (up to ``only``), filling ``summary['stages']``.

    Executors are picked once, from the cluster (:func:`~.executors.choose_executors`); a stage whose work was
    not known when ``plan`` was made is planned again once the stages before it have run. The rows of every task
    are committed by one :class:`~raymatch.results.TableWriter`, also when the run stops.
    """
    executors = choose_executors(study, store, progress)
    writer = TableWriter(store)  # rows of every task, committed by the driver in batches
    leases = Leases(store, summary.get("run_id", "?"), heartbeat_seconds())  # claims on tasks (extraction)
    finished = False
    try:
        for stage in STAGES:
            stage_start = time.perf_counter()
            if not plan[stage.name].known:  # the stage before it has just stored what it needs
                plan = make_plan(study, store, retry_failed=retry_failed, known_ids=plan.model_ids)
            if stage.prepare is not None:  # e.g. the models rows its table refers to
                stage.prepare(study, store, plan)
            planned = plan[stage.name]
            log.info("stage %s: %d task(s) to do, %d %s stored", stage.name, len(planned.tasks), planned.done,
                     stage.unit)
            recorder = stage_recorder(study, stage, writer) if stage.table else None
            outcomes, found = _run_tasks(study, store, plan, stage, planned.tasks, _Runner(executors, stage, recorder),
                                         leases, retry_failed)
            counts = summary["stages"][stage.name] = stage_counts(stage, outcomes, planned.done + found, stage_start)
            log.info("stage %s: %d computed, %d skipped, %d failed in %.1f s", stage.name, counts["computed"],
                     counts["skipped"], counts["failed"], counts["seconds"])
            if stage.stop_on_failure and counts["failed"]:
                first = next(outcome for outcome in outcomes if not outcome.ok)
                if stage.failure is not None:
                    raise RuntimeError(f"{stage.failure}: {first.error}")
                first.reraise()
            if stage.name == only:
                break
        _recount(study, store, plan, summary["stages"])
        finished = True
    finally:
        leases.close()
        executors.close()
        _close_writer(writer, finished)


class _Runner:
    """``runner(tasks)``: a stage's tasks run by its executor, outcomes to its recorder."""

    def __init__(self, executors, stage: Stage, recorder: Callable[[Outcome], None] | None):
        self.executors, self.stage, self.recorder = executors, stage, recorder

    def __call__(self, tasks: list) -> list[Outcome]:
        return self.executors.run(self.stage, tasks, self.recorder)


def _run_tasks(study: Study, store: Store, plan: Plan, stage: Stage, tasks: list, run: _Runner, leases: Leases,
               retry_failed: bool) -> tuple[list[Outcome], int]:
    """The outcomes of a stage's tasks, and the units another driver did meanwhile (a stage that claims its tasks).

    A stage with :attr:`Stage.claim <raymatch.engine.stages.Stage.claim>` runs only the tasks it could claim, waits
    for those another driver holds and plans again (:func:`~.leases.claimed_runs`).
    """
    if not tasks:
        return [], 0
    if stage.claim is None:
        return run(tasks), 0

    def key_of(task) -> str:
        return lease_key(stage.name, *stage.claim(study, plan, task))

    def replan() -> list:
        return make_plan(study, store, retry_failed=retry_failed, known_ids=plan.model_ids)[stage.name].tasks

    outcomes, found = claimed_runs(tasks, key_of, leases, run, replan, stage.name,
                                   stop_on_failure=stage.stop_on_failure)
    return outcomes, sum(map(stage.size, found))


def _recount(study: Study, store: Store, plan: Plan, stages: dict) -> None:
    """Count what later stages' tasks did for a stage (:attr:`Stage.recount <raymatch.engine.stages.Stage.recount>`)."""
    from .context import PlanContext

    for stage in STAGES:
        counts = stages.get(stage.name)
        if stage.recount is None or counts is None:
            continue
        try:
            stored = stage.recount(PlanContext(study, store, plan))
        except StoreError as error:  # only a count: the run itself went well
            log.warning("could not count what stage %s stored: %s", stage.name, error)
            continue
        counts["computed"] = max(counts["computed"], stored - counts["skipped"])


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


def stage_recorder(study: Study, stage: Stage, writer: TableWriter) -> Callable[[Outcome], None]:
    """The driver's handler of a stage's outcomes: their rows (and completion markers) go to the writer."""

    def record(outcome: Outcome) -> None:
        if not outcome.ok:
            return
        by_table = stage.rows_by_table(outcome.result["rows"])  # a list of its table's rows, or table → rows
        for table, rows in by_table.items():
            writer.add(table, rows)
        if stage.marks_done:
            writer.add("tasks", [{"study": study.name, "config_hash": study.config_hash, "stage": stage.name,
                                  "task_id": outcome.item.task_id, "rows": len(by_table.get(stage.table, []))}])
        # the rows are the writer's now: the outcome the stage keeps holds its counts and times only, so that the
        # driver's memory does not grow with the rows of a stage of a million pairs
        outcome.result = {key: value for key, value in outcome.result.items() if key != "rows"}

    return record


def stage_counts(stage: Stage, outcomes: list[Outcome], skipped: int, stage_start: float) -> dict:
    """A stage's summary, in its units (pairs for the blocks of match); failed rows and in-task times by part."""
    counts = {"computed": sum(stage.size(o.item) for o in outcomes if o.ok), "skipped": skipped,
              "tasks": len(outcomes), "failed": sum(stage.size(o.item) for o in outcomes if not o.ok),
              "in_task_seconds": sum(o.seconds for o in outcomes),
              "task_seconds": sorted((o.seconds for o in outcomes), reverse=True),
              "seconds": time.perf_counter() - stage_start,
              "errors": [o.error for o in outcomes if not o.ok][:10],
              "nodes": dict(collections.Counter(o.node for o in outcomes if o.node is not None))}
    results = [o.result for o in outcomes if o.ok and isinstance(o.result, dict)]
    devices = collections.Counter(result["device"] for result in results if "device" in result)
    if devices:  # tasks of actors that say where they computed (GPU actors): {"cuda": 12} or {"cpu": 12}
        counts["devices"] = dict(devices)
    for key in ("failed", "failed_measures", "match_seconds", "cka_seconds", "measure_seconds"):
        if any(key in result for result in results):
            counts["failed_rows" if key == "failed" else key] = sum(result.get(key, 0) for result in results)
    return counts
