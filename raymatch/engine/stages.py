"""The stages of a study, declared once, in run order.

Each :class:`Stage` says how it plans from the store (what is stored, what is left), what one task runs, and
which executor runs its tasks. :func:`~raymatch.engine.plan.make_plan`, the run loop, :meth:`Plan.counts
<raymatch.engine.plan.Plan.counts>`, the ``runs`` record and ``raymatch status``/``plan`` all loop over
:data:`STAGES`; a new stage is one more entry here (and its task body in :mod:`.tasks`).
"""

from __future__ import annotations

import collections
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
    # each checkpoint once (the permuted null reuses the trained ones); a trajectory's epochs are no models here
    models = {key for group in context.plan.groups if group.origins is None for key in group.checkpoints}
    return StagePlan(tasks, len(models) - len(tasks))


def _plan_extract(context: PlanContext) -> StagePlan:
    """One job per model with a layer not stored; every checkpoint to extract is checked here, before Ray."""
    from ..extract import ExtractionJob
    from ..extract.extractor import read_checkpoint
    from ..models.checkpoint import check_checkpoint, model_id_of
    from ..store.layout import pooled_layer

    study, store, plan = context.study, context.store, context.plan
    if study.population.activations is not None:
        return _plan_import(context)
    if plan["train"].tasks:  # model ids (and everything after) are known once the checkpoints exist
        return NOT_KNOWN_YET
    todo, seen = [], set()
    options = study.population.checkpoint_options  # a nested state dict, a prefix to strip
    layers = [*plan.layers, *map(pooled_layer, context.pooled_layers)]
    context.stored_repeats((context.known_ids[key], layer)  # the models known already: their manifests in one batch
                           for key in plan.checkpoints if key in context.known_ids for layer in layers)
    for key in plan.checkpoints:
        model, data = context.known_ids.get(key), None  # known from an earlier plan of this run: not read again
        if model is None:
            data = read_checkpoint(store, key)
            model = model_id_of(data, options, name=key, architecture=study.architecture.digest)
        plan.model_ids[key] = model
        if model in seen:  # the same weights under two keys (a trajectory's selected epoch): extracted once
            continue
        seen.add(model)
        repeats = context.stored_repeats((model, layer) for layer in layers)
        if any(repeats[model, layer] is None for layer in layers):
            data = read_checkpoint(store, key) if data is None else data
            todo.append(key)  # refused here, before Ray, if corrupt, of another shape, or NaN
            check_checkpoint(study.architecture.module_tree(), data, arch=study.architecture.label, name=key,
                             options=options)
    # a trajectory's saved epoch may be its seed's selected (final) weights: the same model, compared with no one
    saved_epochs = {key for group in plan.groups if group.name == "trajectory" for key in group.checkpoints}
    saved_epochs -= {key for group in plan.groups if group.name != "trajectory" for key in group.checkpoints}
    _check_distinct({key: model for key, model in plan.model_ids.items() if key not in saved_epochs})
    jobs = [ExtractionJob(key, study.architecture.label, study.probe, tuple(study.layers), study.architecture.kwargs,
                          architecture=study.architecture.spec, checkpoint_options=options or None,
                          pooled=context.pooled_layers, architecture_digest=study.architecture.digest)
            for key in todo]
    return StagePlan(jobs, len(plan.checkpoints) - len(jobs))


def _plan_import(context: PlanContext) -> StagePlan:
    """Imported activations: one job per model with a layer not stored; every file read and checked here, before Ray.

    The model ids are the digests of the imported arrays (NaN/Inf refused while hashing them).
    """
    from ..extract.imported import ImportJob, imported_model_ids

    study, plan = context.study, context.plan
    plan.model_ids.update(imported_model_ids(study.population.activations))
    _check_distinct(plan.model_ids)
    repeats = context.stored_repeats((model, layer) for model in plan.model_ids.values() for layer in plan.layers)
    jobs = []
    for name in plan.checkpoints:
        layers = [layer for layer in plan.layers if repeats[plan.model_ids[name], layer] is None]
        if layers:
            jobs.append(ImportJob(name, plan.model_ids[name], tuple(layers)))
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
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    return StagePlan(*_match_tasks(context))


def _match_tasks(context: PlanContext) -> tuple[list, int]:
    """The match tasks still to do and the pairs stored (shared by the factor and match planners)."""
    study = context.study
    tasks, done = [], 0
    for group, layer, repeat, pairs, positions in context.pair_units:
        missing = context.missing_pairs("curves", group, layer, repeat, pairs)
        done += len(pairs) - len(missing)
        tasks += block_tasks(study.name, study.config_hash, study.probe.id, layer, repeat, missing,
                             block=study.resources.pair_block, center=study.center, population=group.name,
                             positions=positions, cka=study.cka, permute_b_seed=group.permute_b_seed)
    return tasks, done


def _plan_cross(context: PlanContext) -> StagePlan:
    """One task per (group, layer of a, layer of b, repeat) of ``cross_layers`` with pairs ``cross_curves`` lacks."""
    if context.study.cross_layers is None:
        return StagePlan()
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    return StagePlan(*_cross_tasks(context))


def _cross_tasks(context: PlanContext) -> tuple[list, int]:
    """The cross-layer tasks still to do and the pairs stored (shared by the factor and cross planners)."""
    from .cross import CrossTask

    study = context.study
    if study.cross_layers is None:
        return [], 0
    tasks, done = [], 0
    for group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs in context.cross_units:
        missing = context.missing_cross(group, layer_a, layer_b, repeat, pairs)
        done += len(pairs) - len(missing)
        block = study.resources.pair_block ** 2  # as many pairs as a block of match tasks
        tasks += [CrossTask(study.name, study.config_hash, study.probe.id, group.name, layer_a, layer_b, matrix_a,
                            matrix_b, study.cross_layers.pool, repeat, tuple(missing[start:start + block]),
                            study.center, study.cka)
                  for start in range(0, len(missing), block)]
    return tasks, done


def _plan_simple(context: PlanContext) -> StagePlan:
    """One task per (pair, layer, repeat, ε) of the simple-match layers without a stored result."""
    if not _activations_stored(context):
        return NOT_KNOWN_YET
    return StagePlan(*context.simple_tasks)


def _plan_factor(context: PlanContext) -> StagePlan:
    """One task per (model, layer, repeat) that two or more pair tasks still to do need and the store lacks.

    A factor that only one pair task needs is computed in that task (:func:`~raymatch.store.factors.cached_factor`),
    which reads the activations anyway: a separate factor task would read them a second time (on S3, the larger
    part of the cost). A factor that several tasks share is computed once, here, before them. A matrix that cannot
    be factored (its pairs recorded as failed rows) is not asked for again.
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

    done = sum(stored(context.plan.model_ids[key], layer, repeat)  # the permuted null's models: counted once
               for group, layer, repeat, _, _ in context.pair_units if group.permute_b_seed is None
               for key in group.checkpoints)
    readers: collections.Counter = collections.Counter()  # (layer, repeat, model) → pair tasks that need it
    for task in _match_tasks(context)[0]:
        readers.update((task.layer, task.repeat, model) for model in task.models)
    for task in context.simple_tasks[0]:
        readers.update((task.layer, task.repeat, model) for model in set(task.pair))
    for task in _cross_tasks(context)[0]:
        readers.update({(task.matrix_a, task.repeat, a) for a, _ in task.pairs}
                       | {(task.matrix_b, task.repeat, b) for _, b in task.pairs})
    tasks = [FactorTask(ActivationKey(probe_id, model, layer, repeat), center)
             for (layer, repeat, model), count in sorted(readers.items())
             if count > 1 and not stored(model, layer, repeat)]
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
