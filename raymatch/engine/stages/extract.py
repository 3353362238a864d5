"""The extract stage: one job per model with a layer not stored, every checkpoint checked here, before Ray.

Extraction runs on GPU actors where the cluster has GPUs, on the warm CPU actors of a one-node cluster, or as Ray
tasks on several nodes (:mod:`raymatch.engine.executors`); a study importing its activations has them read and
written by the driver instead (:func:`~raymatch.engine.executors.import_population`). The model ids, and so every
stage after this one, are known once the checkpoints exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plan import StagePlan
from .stage import Stage

if TYPE_CHECKING:
    from ...extract import ExtractionJob
    from ...store import Store
    from ...study import Study
    from ..context import PlanContext
    from ..plan import Plan

__all__ = ["EXTRACT", "check_distinct", "extract_claim", "extract_task", "plan_extract", "plan_import"]


def extract_task(store: Store, job: ExtractionJob) -> dict:
    """Task body: one model's activations (:func:`raymatch.engine.workers.extract_job`, imported on the worker)."""
    from ..workers import extract_job

    return extract_job(store, job)


def plan_extract(context: PlanContext) -> StagePlan:
    """One job per model with a layer not stored; every checkpoint to extract is checked here, before Ray."""
    from ...extract import ExtractionJob
    from ...extract.extractor import read_checkpoint
    from ...models.checkpoint import check_checkpoint, model_id_of
    from ...store.layout import pooled_layer

    study, store, plan = context.study, context.store, context.plan
    if study.population.activations is not None:
        return plan_import(context)
    if study.is_lm:  # one token job per language model (raymatch.engine.lm)
        from ..lm import plan_token_extraction

        return plan_token_extraction(context)
    todo, seen = [], set()
    options = study.population.checkpoint_options  # a nested state dict, a prefix to strip
    pooled = pooled_layers(context)
    layers = [*plan.layers, *map(pooled_layer, pooled)]
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
    check_distinct({key: model for key, model in plan.model_ids.items() if key not in saved_epochs})
    jobs = [ExtractionJob(key, study.architecture.label, study.probe, tuple(study.layers), study.architecture.kwargs,
                          architecture=study.architecture.spec, checkpoint_options=options or None,
                          pooled=pooled, architecture_digest=study.architecture.digest)
            for key in todo]
    return StagePlan(jobs, len(plan.checkpoints) - len(jobs))


def pooled_layers(context: PlanContext) -> tuple[str, ...]:
    """The conv layers whose per-example means the stages after this one read (:attr:`Stage.pooled_layers`)."""
    return tuple(dict.fromkeys(layer for reads in context.pooled_readers for layer in reads(context)))


def plan_import(context: PlanContext) -> StagePlan:
    """Imported activations: one job per model with a layer not stored; every file read and checked here, before Ray.

    The model ids are the digests of the imported arrays (NaN/Inf refused while hashing them).
    """
    from ...extract.imported import ImportJob, imported_model_ids

    study, plan = context.study, context.plan
    plan.model_ids.update(imported_model_ids(study.population.activations))
    check_distinct(plan.model_ids)
    repeats = context.stored_repeats((model, layer) for model in plan.model_ids.values() for layer in plan.layers)
    jobs = []
    for name in plan.checkpoints:
        layers = [layer for layer in plan.layers if repeats[plan.model_ids[name], layer] is None]
        if layers:
            jobs.append(ImportJob(name, plan.model_ids[name], tuple(layers)))
    return StagePlan(jobs, len(plan.checkpoints) - len(jobs))


def check_distinct(model_ids: dict[str, str]) -> None:
    """Two keys with the same content would pair a model with itself: refuse, naming them."""
    seen: dict[str, str] = {}
    for key, model in model_ids.items():
        if model in seen:
            raise ValueError(f"checkpoints {seen[model]!r} and {key!r} are the same model (id {model}); "
                             "a population needs distinct models")
        seen[model] = key


def extract_claim(study: Study, plan: Plan, job) -> tuple[str, str]:
    """The lease of one extraction (import, token) job: its probe and model; one driver extracts a model at a time."""
    model = getattr(job, "model_id", None)  # an import knows it
    if model is None:
        key = getattr(job, "checkpoint", None)
        if key is None:  # a language model's token job: the checkpoint of its model in the plan
            key = next(key for group in plan.groups if group.models
                       for key, named in zip(group.checkpoints, group.models, strict=True) if named.model == job.model)
        model = plan.model_ids[key]
    return study.probe_id, model


EXTRACT = Stage("extract", "models", plan_extract, extract_task, "extraction", reads=("train",), stop_on_failure=True,
                claim=extract_claim)
