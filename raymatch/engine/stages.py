"""The stages of a study, declared once, in run order.

Each :class:`Stage` says how it plans from the store (what is stored, what is left), what one task runs, and
which executor runs its tasks. :func:`~raymatch.engine.plan.make_plan`, the run loop, :meth:`Plan.counts
<raymatch.engine.plan.Plan.counts>`, the ``runs`` record and ``raymatch status``/``plan`` all loop over
:data:`STAGES`; a new stage is one more entry here (and its task body in :mod:`.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cross import cross_task
from .plan import NOT_KNOWN_YET, PlanContext, StagePlan
from .tasks import block_tasks, factor_and_store, match_task, simple_task

__all__ = ["EXECUTORS", "STAGES", "Stage", "stage_named"]

#: How a stage's tasks run: Ray tasks that train (one GPU each where asked), the extraction actors (GPU where
#: the cluster has GPUs), or the pair workers (the warm CPU actors on CPU clusters, Ray tasks otherwise).
EXECUTORS = ("training", "extraction", "workers")


def _one(_task: Any) -> int:
    return 1


def _pairs_in(task: Any) -> int:
    return len(task.pairs)


@dataclass(frozen=True)
class Stage:
    """One stage of a study.

    Attributes
    ----------
    name : str
        The stage's name in plans, summaries, the ``runs`` table and ``raymatch status``.
    unit : str
        What its counts count.
    plan : callable
        ``plan(context) -> StagePlan``: what is stored and what is left, from the store (see
        :class:`~raymatch.engine.plan.PlanContext`); :data:`~raymatch.engine.plan.NOT_KNOWN_YET` while a stage
        before it has work left that this one needs.
    task : callable or None
        The task body ``task(store, item) -> dict`` (None for training, whose executor runs its own tasks).
        Tasks never write results tables: a stage with a ``table`` returns its rows (``result['rows']``) and
        the driver commits them in batches.
    executor : str
        One of :data:`EXECUTORS`.
    size : callable
        Units of work in one task (pairs for the blocks of match and CKA, 1 otherwise).
    stop_on_failure : bool
        A failed task stops the run after the stage (the stages after it would lack their inputs); otherwise
        failures are recorded (failed rows) and the run goes on.
    table : str, optional
        The results table the rows of its tasks go to.
    marks_done : bool
        Record each finished task in the ``tasks`` table (a task may find no rows, and must not run again).
    """

    name: str
    unit: str
    plan: Callable[[PlanContext], StagePlan]
    task: Callable[..., dict] | None
    executor: str
    size: Callable[[Any], int] = _one
    stop_on_failure: bool = False
    table: str | None = None
    marks_done: bool = False


def _plan_train(context: PlanContext) -> StagePlan:
    """One task per (group, seed) whose checkpoint record is not stored."""
    tasks = [(group.name, seed) for group in context.plan.groups for seed in group.train_todo]
    models = sum(len(group.checkpoints) for group in context.plan.groups if group.origins is None)  # no trajectory
    return StagePlan(tasks, models - len(tasks))


def _plan_extract(context: PlanContext) -> StagePlan:
    """One job per model with a layer not stored; every checkpoint to extract is checked here, before Ray."""
    from ..extract import ExtractionJob
    from ..extract.extractor import read_checkpoint, stored_repeats
    from ..models import checkpoint_id
    from ..models.checkpoint import check_checkpoint
    from ..store.layout import pooled_layer

    study, store, plan = context.study, context.store, context.plan
    if plan["train"].tasks:  # model ids (and everything after) are known once the checkpoints exist
        return NOT_KNOWN_YET
    todo, seen = [], set()
    for key in plan.checkpoints:
        data = read_checkpoint(store, key)
        model = plan.model_ids[key] = checkpoint_id(data)
        if model in seen:  # the same weights under two keys (a trajectory's selected epoch): extracted once
            continue
        seen.add(model)
        if any(stored_repeats(store, study.probe.id, model, layer) is None
               for layer in [*plan.layers, *map(pooled_layer, context.pooled_layers)]):
            todo.append(key)  # refused here, before Ray, if corrupt, of another shape, or NaN
            check_checkpoint(study.architecture.module_tree(), data, arch=study.architecture.name, name=key)
    # a trajectory's saved epoch may be its seed's selected (final) weights: the same model, compared with no one
    saved_epochs = {key for group in plan.groups if group.name == "trajectory" for key in group.checkpoints}
    saved_epochs -= {key for group in plan.groups if group.name != "trajectory" for key in group.checkpoints}
    _check_distinct({key: model for key, model in plan.model_ids.items() if key not in saved_epochs})
    jobs = [ExtractionJob(key, study.architecture.name, study.probe, tuple(study.layers), study.architecture.kwargs,
                          pooled=context.pooled_layers) for key in todo]
    return StagePlan(jobs, len(plan.checkpoints) - len(jobs))


def _check_distinct(model_ids: dict[str, str]) -> None:
    """Two keys with the same content would pair a model with itself: refuse, naming them."""
    seen: dict[str, str] = {}
    for key, model in model_ids.items():
        if model in seen:
            raise ValueError(f"checkpoints {seen[model]!r} and {key!r} are the same model (id {model}); "
                             "a population needs distinct models")
        seen[model] = key


def _activations_stored(context: PlanContext) -> bool:
    extract = context.plan["extract"]
    return extract.known and not extract.tasks  # repeats (and so the pair tasks) are known once they are stored


def _plan_match(context: PlanContext) -> StagePlan:
    """The pairs ``curves`` lacks, grouped into tasks by blocks of models (each pair's whole ε-curve and CKA)."""
    study = context.study
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    tasks, done = [], 0
    for group, layer, repeat, pairs, positions in context.pair_units:
        missing = context.missing_pairs("curves", group, layer, repeat, pairs)
        done += len(pairs) - len(missing)
        tasks += block_tasks(study.name, study.config_hash, study.probe.id, layer, repeat, missing,
                             block=study.resources.pair_block, center=study.center, population=group.name,
                             positions=positions, cka=study.cka)
    return StagePlan(tasks, done)


def _plan_cross(context: PlanContext) -> StagePlan:
    """One task per (group, layer of a, layer of b, repeat) of ``cross_layers`` with pairs ``cross_curves`` lacks."""
    from .cross import CrossTask

    study = context.study
    if study.cross_layers is None:
        return StagePlan()
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    tasks, done = [], 0
    for group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs in context.cross_units:
        missing = context.missing_cross(group, layer_a, layer_b, repeat, pairs)
        done += len(pairs) - len(missing)
        block = study.resources.pair_block ** 2  # as many pairs as a block of match tasks
        tasks += [CrossTask(study.name, study.config_hash, study.probe.id, group.name, layer_a, layer_b, matrix_a,
                            matrix_b, study.cross_layers.pool, repeat, tuple(missing[start:start + block]),
                            study.center, study.cka)
                  for start in range(0, len(missing), block)]
    return StagePlan(tasks, done)


def _plan_simple(context: PlanContext) -> StagePlan:
    """One task per (pair, layer, repeat, ε) of the simple-match layers without a stored result."""
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    return StagePlan(*context.simple_tasks)


def _plan_factor(context: PlanContext) -> StagePlan:
    """One task per (model, layer, repeat) that a match or simple task still to do needs and the store lacks.

    A matrix that cannot be factored (its pairs recorded as failed rows) is not asked for again.
    """
    from ..store import ActivationKey
    from ..store.layout import factor_prefix, manifest_key
    from .tasks import FactorTask

    study = context.study
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    center, probe_id = study.center, study.probe.id

    def stored(model: str, layer: str, repeat: int) -> bool:
        return manifest_key(factor_prefix(probe_id, model, layer, repeat, center)) in context.stored_factors

    done, needed = 0, set()
    for group, layer, repeat, pairs, _ in context.pair_units:
        done += sum(stored(context.plan.model_ids[key], layer, repeat) for key in group.checkpoints)
        for pair in context.missing_pairs("curves", group, layer, repeat, pairs):
            needed |= {(layer, repeat, model) for model in pair}
    needed |= {(task.layer, task.repeat, model) for task in context.simple_tasks[0] for model in task.pair}
    for group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs in context.cross_units:
        for a, b in context.missing_cross(group, layer_a, layer_b, repeat, pairs):
            needed |= {(matrix_a, repeat, a), (matrix_b, repeat, b)}
    tasks = [FactorTask(ActivationKey(probe_id, model, layer, repeat), center)
             for layer, repeat, model in sorted(needed) if not stored(model, layer, repeat)]
    return StagePlan(tasks, done)


#: Every stage, in run order.
STAGES: tuple[Stage, ...] = (
    Stage("train", "models", _plan_train, None, "training", stop_on_failure=True),
    Stage("extract", "models", _plan_extract, None, "extraction", stop_on_failure=True),
    Stage("factor", "models × layers × repeats", _plan_factor, factor_and_store, "workers"),
    Stage("match", "pairs × layers × repeats", _plan_match, match_task, "workers", _pairs_in, table="curves"),
    Stage("simple", "pairs × layers × repeats × ε", _plan_simple, simple_task, "workers", table="simple_matches",
          marks_done=True),
    Stage("cross", "pairs × layer pairs × repeats", _plan_cross, cross_task, "workers", _pairs_in,
          table="cross_curves"),
)


def stage_named(name: str) -> Stage:
    """The declared stage called ``name``."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r} (stages: {', '.join(stage.name for stage in STAGES)})")
